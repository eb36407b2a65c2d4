"""The playground in a real browser: Debian's Chromium, driven by selenium, against every server started on free ports.

Set PLAYGROUND_SCREENSHOT=docs/playground.png to also write the README's screenshot (a palette PNG) from the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.local_stack import local_stack

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run installs them)",
    ),
]
WAIT_SECONDS = 60  # a prediction is milliseconds; TorchServe's first call on a busy 2-core machine is not
STOPPED = "Not reachable: the server is stopped, still starting or shutting down."


@pytest.fixture(scope="module")
def stack(tf_trained, torch_trained, tmp_path_factory):
    """Every server, ready on free ports, serving the models the two pipelines just trained."""
    with local_stack(tf_trained, torch_trained, tmp_path_factory.mktemp("playground_stack")) as running:
        yield running.stack


@pytest.fixture(scope="module")
def playground_url(stack):
    """The playground backend on a free port, asking the stack's endpoints."""
    from serving.playground import create_app, endpoints
    from serving.playground.main import bind

    connected = endpoints.connect(endpoints.addresses_from_run_dir(stack.run_dir))
    server = bind(create_app(connected), [0], any_port=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.shutdown()
        server.server_close()
        for endpoint in connected:
            endpoint.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Debian's chromedriver (selenium then downloads nothing)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium's sandbox refuses to start as root, which CI containers are.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


# ---- reading the page -----------------------------------------------------------------------------------------

READ_CARDS = """
return [...document.querySelectorAll('.card')].map((card) => ({
  key: card.dataset.endpoint,
  state: card.dataset.state,
  predicted: card.querySelector('.predicted-class').textContent,
  probabilities: [...card.querySelectorAll('.bars li')].map((item) =>
      item.dataset.probability === undefined ? null : Number(item.dataset.probability)),
  latency: card.querySelector('.latency').textContent,
  version: card.querySelector('.version').textContent,
  error: card.querySelector('.error').hidden ? null : card.querySelector('.error').textContent,
}));
"""


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")  # a new hash on the same page would not load it again
    driver.get(url)
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.execute_script("return document.body.dataset.ready"))


def predictions_made(driver) -> int:
    return int(driver.execute_script("return document.body.dataset.predictions || '0'"))


def wait_for_prediction(driver, after: int) -> list[dict]:
    """Wait until the page has finished prediction number after + 1; the cards as the page shows them."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: predictions_made(d) > after)
    return driver.execute_script(READ_CARDS)


def assert_answered(card: dict) -> None:
    """A card that shows a class, ten probabilities summing to 1, a latency and the model version."""
    assert card["state"] == "answered" and card["error"] is None, card
    assert re.fullmatch(r"[0-9]", card["predicted"]), card
    probabilities = np.asarray(card["probabilities"], dtype=np.float64)
    assert probabilities.shape == (10,) and (probabilities >= 0).all(), card
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4), card
    assert int(card["predicted"]) == int(probabilities.argmax()), card
    latency = re.fullmatch(r"(\d+\.\d\d) ms", card["latency"])
    assert latency and float(latency[1]) > 0, card
    assert card["version"].startswith("1 ("), card  # the fixtures export version 1 of each model


def draw_a_seven(driver) -> None:
    """A top bar, a diagonal and a bar across, as a mouse would draw them, on the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "canvas")
    width = canvas.size["width"]
    scale = width / 256  # the canvas is 256 pixels wide inside, drawn at its CSS size
    # 20 ms per move instead of 250: the page sees the same pointer events, the test waits seconds less.
    actions = ActionChains(driver, duration=20)
    actions.move_to_element_with_offset(canvas, int(-60 * scale), int(-85 * scale))
    actions.click_and_hold()
    for _ in range(12):  # → the right end of the bar
        actions.move_by_offset(int(10 * scale), 0)
    for _ in range(17):  # ↙ down to the foot
        actions.move_by_offset(int(-4 * scale), int(10 * scale))
    actions.release()
    actions.move_to_element_with_offset(canvas, int(-25 * scale), 0).click_and_hold()
    for _ in range(7):  # the bar across, as the dataset's writers drew it
        actions.move_by_offset(int(10 * scale), 0)
    actions.release().perform()


def save_for_readme(screenshot: Path) -> None:
    """Copy the screenshot to $PLAYGROUND_SCREENSHOT as a small palette PNG (for the README), when it is set."""
    target = os.environ.get("PLAYGROUND_SCREENSHOT")
    if not target:
        return
    from PIL import Image, ImageChops

    with Image.open(screenshot) as opened:
        image = opened.convert("RGB")
    # Crop the empty page below (and beside) the content, keeping a margin of the page's colour.
    background = Image.new("RGB", image.size, image.getpixel((0, 0)))
    left, top, right, bottom = ImageChops.difference(image, background).getbbox()
    margin = 24
    box = (
        max(0, left - margin),
        max(0, top - margin),
        min(image.width, right + margin),
        min(image.height, bottom + margin),
    )
    image.crop(box).quantize(colors=64).save(target, optimize=True)


# ---- the tests (in this order: the last one stops a server) --------------------------------------------------


def test_a_drawn_digit_gets_an_answer_from_every_endpoint(browser, playground_url, tmp_path):
    open_page(browser, playground_url)
    cards = browser.execute_script(READ_CARDS)
    assert [card["key"] for card in cards] == ["tf-grpc", "tf-rest", "flask-rest", "torchserve-rest", "torchserve-grpc"]
    draw_a_seven(browser)
    before = predictions_made(browser)
    browser.find_element("id", "predict").click()
    cards = wait_for_prediction(browser, before)
    for card in cards:
        assert_answered(card)
    # The 8×8 input the backend made from the stroke is shown beside the canvas.
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#preview span')].map((cell) => Number(cell.dataset.value))"
    )
    assert len(cells) == 64 and 0 < max(cells) <= 16 and min(cells) >= 0
    screenshot = tmp_path / "playground.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_for_readme(screenshot)


def test_a_test_image_of_a_known_class_is_predicted_by_every_server(browser, playground_url, stack, digits):
    index, label = confidently_classified_test_image(stack.models_dir, digits)
    open_page(browser, f"{playground_url}#test-image={index}")  # the link the page gives a test image
    cards = wait_for_prediction(browser, 0)
    assert browser.find_element("id", "source").text == f"Test image {index} of {len(digits.test)}, labelled {label}"
    for card in cards:
        assert_answered(card)
        assert int(card["predicted"]) == label, card

    before = predictions_made(browser)
    browser.find_element("id", "random").click()
    cards = wait_for_prediction(browser, before)
    caption = re.fullmatch(r"Test image (\d+) of (\d+), labelled (\d)", browser.find_element("id", "source").text)
    assert caption, browser.find_element("id", "source").text
    assert int(caption[3]) == int(digits.test.labels[int(caption[1])])
    for card in cards:
        assert_answered(card)


def test_the_page_fits_a_phone_sized_window(browser, playground_url, tmp_path):
    browser.set_window_size(390, 844)
    try:
        open_page(browser, f"{playground_url}#test-image=0")
        wait_for_prediction(browser, 0)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone's window"
        for element_id in ("canvas", "predict", "random", "cards"):
            right = browser.execute_script(
                f"return document.getElementById('{element_id}').getBoundingClientRect().right"
            )
            assert right <= 390, element_id
        assert browser.save_screenshot(str(tmp_path / "playground-phone.png"))
    finally:
        browser.set_window_size(1280, 1000)


def test_a_stopped_server_shows_its_error_while_the_others_answer(browser, playground_url, stack, tmp_path):
    from serving.runtime import Stack

    keys = json.loads(stack.torchserve_key_file.read_text())  # TorchServe removes the file when it stops
    open_page(browser, f"{playground_url}#test-image=1")
    wait_for_prediction(browser, 0)
    # Stop TorchServe alone: a stack limited to it, over the same run folder, finds only its pid file.
    stopped = Stack(ports=stack.ports, run_dir=stack.run_dir, models_dir=stack.models_dir, only=["torchserve"])
    assert stopped.stop(report=lambda line: None) == ["torchserve"]

    before = predictions_made(browser)
    browser.find_element("id", "predict").click()
    cards = {card["key"]: card for card in wait_for_prediction(browser, before)}
    for key in ("torchserve-rest", "torchserve-grpc"):
        assert cards[key]["state"] == "failed" and cards[key]["error"] == STOPPED
        assert cards[key]["predicted"] == "–"
    for key in ("tf-grpc", "tf-rest", "flask-rest"):
        assert_answered(cards[key])
    assert browser.find_element("id", "status").text == "3 of 5 servers answered."
    assert browser.save_screenshot(str(tmp_path / "playground-one-down.png"))

    # Nothing about where the servers are, or TorchServe's keys, reached the browser.
    page = browser.page_source
    assert not [name for name, document in keys.items() if document["key"] in page]
    assert not [port for port in stack.ports.as_dict().values() if f":{port}" in page]


def confidently_classified_test_image(models_dir: Path, digits) -> tuple[int, int]:
    """The first test image both exported models, called in-process, give its label with probability above 0.9."""
    import tensorflow as tf

    from tests import torch_exports

    images = digits.test.images
    tf_signature = tf.saved_model.load(str(models_dir / "tf" / "digits" / "1")).signatures["serving_default"]
    tf_probabilities = tf_signature(images=tf.constant(images))["probabilities"].numpy()
    torch_probabilities = torch_exports.onnx_outputs(models_dir / "torch" / "digits" / "1", images)[0]
    rows = np.arange(len(images))
    labels = digits.test.labels
    confident = (tf_probabilities[rows, labels] > 0.9) & (torch_probabilities[rows, labels] > 0.9)
    index = int(np.flatnonzero(confident)[0])
    return index, int(digits.test.labels[index])
