"""The playground without a browser: canvas → 8×8 preprocessing, the backend's API over fake endpoints, its errors."""

from __future__ import annotations

import base64
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from serving.playground import create_app, preprocess
from serving.playground import main as playground_main
from serving.playground.endpoints import Answer, Endpoint, EndpointError

SIDE = 256  # the page's canvas


def stroke(rows: slice, columns: slice, side: int = SIDE) -> np.ndarray:
    """A canvas (side, side) of uint8 ink with one filled rectangle."""
    ink = np.zeros((side, side), dtype=np.uint8)
    ink[rows, columns] = 255
    return ink


def ring(side: int, top: int, left: int, size: int, thickness: int) -> np.ndarray:
    """A square ring (a crude 0) of the given size at (top, left) on a side × side canvas."""
    ink = np.zeros((side, side), dtype=np.uint8)
    ink[top : top + size, left : left + size] = 255
    ink[top + thickness : top + size - thickness, left + thickness : left + size - thickness] = 0
    return ink


# ---- preprocessing --------------------------------------------------------------------------------------------


def test_area_weights_average_the_covered_source_pixels():
    weights = preprocess.area_weights(source=10, target=4)  # each output pixel covers 2.5 source pixels
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(weights[0], [0.4, 0.4, 0.2, 0, 0, 0, 0, 0, 0, 0])
    # Every source pixel contributes the same total: no pixel counts twice, none is dropped.
    np.testing.assert_allclose(weights.sum(axis=0), 0.4)


@pytest.mark.parametrize("shape, target", [((100, 60), (32, 19)), ((7, 13), (32, 32)), ((256, 256), (32, 32))])
def test_area_resize_preserves_the_total_mass(shape, target):
    image = np.random.default_rng(0).random(shape)
    resized = preprocess.area_resize(image, *target)
    assert resized.shape == target
    area_ratio = (shape[0] * shape[1]) / (target[0] * target[1])
    assert resized.sum() * area_ratio == pytest.approx(image.sum(), rel=1e-9)


def test_a_centred_vertical_stroke_fills_the_two_middle_columns():
    image = preprocess.drawing_to_input(stroke(slice(40, 220), slice(118, 138)))
    assert image.dtype == np.float32 and image.shape == (8, 8)
    # 180 × 20 pixels → 32 × 4 in the frame, centred: 2 pixels in each of columns 3 and 4, on every row.
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[:, 3:5] = 8.0
    np.testing.assert_allclose(image, expected)


def test_a_drawing_in_a_corner_is_centred_by_mass():
    centred = preprocess.drawing_to_input(ring(SIDE, top=60, left=60, size=136, thickness=20))
    in_a_corner = preprocess.drawing_to_input(ring(SIDE, top=0, left=0, size=136, thickness=20))
    np.testing.assert_allclose(in_a_corner, centred)
    rows, columns = np.indices(centred.shape) + 0.5
    mass = centred.sum()
    assert (centred * rows).sum() / mass == pytest.approx(4.0, abs=0.25)
    assert (centred * columns).sum() / mass == pytest.approx(4.0, abs=0.25)


def test_a_small_drawing_and_a_large_one_give_nearly_the_same_input():
    small = preprocess.drawing_to_input(ring(SIDE, top=90, left=90, size=64, thickness=10))
    large = preprocess.drawing_to_input(ring(SIDE, top=28, left=28, size=200, thickness=31))
    assert np.abs(small - large).max() < 1.0


def test_values_stay_within_0_and_16_and_the_mass_is_kept():
    noise = np.random.default_rng(1).integers(0, 256, size=(SIDE, SIDE), dtype=np.uint8)
    noise[0, 0] = noise[-1, -1] = 255  # the bounding box is the whole (square) canvas
    image = preprocess.drawing_to_input(noise)
    assert image.min() >= 0 and image.max() <= 16
    # A square canvas scaled onto the 32 × 32 frame: every pixel's coverage counts (32 / 256)² times.
    assert image.sum() == pytest.approx(noise.sum() / 255 * (32 / SIDE) ** 2, rel=1e-5)
    full = preprocess.drawing_to_input(np.full((SIDE, SIDE), 255, dtype=np.uint8))
    np.testing.assert_allclose(full, 16.0)


def test_dataset_digits_drawn_large_come_back_close_to_themselves(digits):
    """Each test image blown up to the canvas (32 pixels a cell) and prepared again resembles the original."""
    correlations = []
    for image in digits.test.images:
        canvas = np.kron(image / 16 * 255, np.ones((32, 32))).astype(np.uint8)
        prepared = preprocess.drawing_to_input(canvas)
        correlations.append(np.corrcoef(prepared.ravel(), image.ravel())[0, 1])
    # Centring moves an off-centre original by a cell or so, so not every image comes back unchanged.
    assert np.median(correlations) > 0.95


# Digits as polylines on the page's 256-pixel canvas, written the way the dataset's writers wrote them.
STROKES = {
    0: [[(128, 40), (80, 70), (70, 128), (80, 190), (128, 220), (176, 190), (186, 128), (176, 70), (128, 40)]],
    1: [[(110, 70), (135, 40), (135, 220)]],
    2: [[(80, 80), (110, 45), (160, 45), (180, 90), (160, 140), (80, 215), (185, 215)]],
    3: [[(80, 55), (170, 55), (120, 120), (175, 160), (160, 210), (85, 215)]],
    4: [[(150, 220), (150, 40), (70, 160), (190, 160)]],
    5: [[(180, 45), (90, 45), (85, 120), (160, 115), (180, 170), (150, 215), (80, 210)]],
    6: [[(170, 45), (100, 90), (80, 170), (120, 215), (170, 185), (160, 135), (90, 140)]],
    7: [[(70, 45), (190, 45), (110, 220)], [(95, 130), (175, 130)]],
    8: [[(128, 128), (80, 90), (128, 40), (176, 90), (128, 128), (75, 175), (128, 220), (181, 175), (128, 128)]],
    9: [[(180, 90), (128, 45), (80, 90), (128, 130), (180, 90), (175, 220)]],
}


def pen_width() -> int:
    """The page's line width, read from its script so that this test follows it."""
    script = (Path(preprocess.__file__).parent / "static" / "playground.js").read_text()
    return int(re.search(r"const LINE_WIDTH = (\d+);", script)[1])


@pytest.mark.slow
def test_digits_drawn_with_the_pages_pen_are_recognised_most_of_the_time(torch_trained):
    """Each digit written 20 times, smaller or larger, shifted and shaky, then prepared: the model reads ≥ 85 %."""
    from PIL import Image, ImageDraw

    from tests import torch_exports

    width = pen_width()
    random = np.random.default_rng(0)
    inputs, labels = [], []
    for label, strokes in STROKES.items():
        for _ in range(20):
            scale = random.uniform(0.55, 1.0)
            shift = random.uniform(-80, 80, size=2) * (1 - scale)
            canvas = Image.new("L", (SIDE, SIDE), 0)
            draw = ImageDraw.Draw(canvas)
            for stroke_points in strokes:
                points = [
                    tuple((np.asarray(point) - 128) * scale + 128 + shift + random.normal(0, 6, size=2))
                    for point in stroke_points
                ]
                draw.line(points, fill=255, width=width, joint="curve")
                for x, y in points:  # round caps and joins, as the canvas draws them
                    draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
            inputs.append(preprocess.drawing_to_input(np.asarray(canvas)))
            labels.append(label)
    predicted = torch_exports.onnx_outputs(torch_trained.export_path, np.stack(inputs))[1]
    accuracy = float((predicted == np.asarray(labels)).mean())
    assert accuracy >= 0.85, f"{accuracy:.0%} of drawn digits recognised"


def test_an_empty_drawing_is_refused_in_one_sentence():
    faint = np.full((SIDE, SIDE), 5, dtype=np.uint8)  # only anti-aliasing dust
    for ink in (np.zeros((SIDE, SIDE), dtype=np.uint8), faint):
        with pytest.raises(preprocess.DrawingError, match=r"^The drawing is empty; draw a digit .*\.$"):
            preprocess.drawing_to_input(ink)


# ---- the backend over fake endpoints -------------------------------------------------------------------------


def answering(klass: int, version: str = "3") -> Endpoint:
    """An endpoint that answers class klass with probability 0.91 and records what it was sent."""
    sent = []

    def predict(images: np.ndarray) -> Answer:
        sent.append(images)
        probabilities = np.full((len(images), 10), 0.01, dtype=np.float32)
        probabilities[:, klass] = 0.91
        return Answer(probabilities, np.full(len(images), klass), 1.25, version, "in the response", "onnx")

    endpoint = Endpoint(f"answers-{klass}", f"Answers {klass}", predict, lambda: None)
    object.__setattr__(endpoint, "sent", sent)  # for the test to read
    return endpoint


def failing(error: Exception) -> Endpoint:
    def predict(images: np.ndarray) -> Answer:
        raise error

    return Endpoint(f"fails-{type(error).__name__}", "Fails", predict, lambda: None)


@pytest.fixture
def client():
    app = create_app(
        [
            answering(7),
            failing(EndpointError("Not reachable: the server is stopped.")),
            failing(RuntimeError("a bug")),
            answering(1),
        ],
        {"TEST_IMAGE_SEED": 0},
    )
    return app.test_client()


def drawing_body(ink: np.ndarray) -> dict:
    height, width = ink.shape
    return {"drawing": {"width": width, "height": height, "pixels": base64.b64encode(ink.tobytes()).decode()}}


def test_the_page_and_its_files_are_served_from_the_package_and_name_nothing_outside(client):
    page = client.get("/")
    assert page.status_code == 200 and b'<canvas id="canvas"' in page.data
    for path in ("/static/playground.js", "/static/playground.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        # Works offline: no CDN, no font or script from anywhere else.
        assert b"http://" not in response.data and b"https://" not in response.data, path
    assert b"http://" not in page.data and b"https://" not in page.data


def test_endpoints_are_listed_in_order_with_key_and_label_only(client):
    listing = client.get("/api/endpoints").get_json()
    assert [item["key"] for item in listing["endpoints"]] == [
        "answers-7",
        "fails-EndpointError",
        "fails-RuntimeError",
        "answers-1",
    ]
    assert all(set(item) == {"key", "label"} for item in listing["endpoints"])
    assert listing["model"] == "digits"  # the page names the model it talks to


def test_a_drawing_goes_to_every_endpoint_and_a_failing_one_does_not_stop_the_others(client):
    response = client.post("/api/predict", json=drawing_body(stroke(slice(40, 220), slice(118, 138))))
    assert response.status_code == 200
    document = response.get_json()
    assert np.asarray(document["input"]).shape == (8, 8) and np.asarray(document["input"])[:, 3:5].min() == 8
    answered, stopped, broken, answered_too = document["results"]
    assert answered["class"] == 7 and len(answered["probabilities"]) == 10
    assert answered["latency_ms"] == 1.25 and answered["version"] == "3"
    assert answered["version_source"] == "in the response" and answered["format"] == "onnx"
    assert stopped["error"] == "Not reachable: the server is stopped." and "class" not in stopped
    assert broken["error"] == "Failed unexpectedly (RuntimeError); see the playground's log."
    assert answered_too["class"] == 1


def test_an_image_is_sent_as_it_is():
    endpoint = answering(5)
    image = np.arange(64, dtype=np.float32).reshape(8, 8) / 4
    response = create_app([endpoint]).test_client().post("/api/predict", json={"image": image.tolist()})
    assert response.status_code == 200
    (sent,) = endpoint.sent
    assert sent.dtype == np.float32 and sent.shape == (1, 8, 8)
    np.testing.assert_array_equal(sent[0], image)


def test_test_images_come_from_the_test_split_with_their_labels(client, digits):
    picked = client.get("/api/test-image?index=5").get_json()
    assert picked["label"] == int(digits.test.labels[5]) and picked["count"] == len(digits.test)
    np.testing.assert_array_equal(picked["image"], digits.test.images[5])
    indices = {client.get("/api/test-image").get_json()["index"] for _ in range(8)}
    assert len(indices) > 1  # random


PIXELS_64 = base64.b64encode(bytes(64)).decode()


@pytest.mark.parametrize(
    "body, message",
    [
        ("not json", 'The body must be a JSON object with exactly one of "drawing" or "image".'),
        ({"image": [[0] * 8] * 8, "drawing": {}}, 'The body must be a JSON object with exactly one of "drawing"'),
        ({"image": [[0] * 8] * 7}, '"image" must be 8 rows of 8 numbers.'),
        ({"image": [[0] * 8] * 7 + [[0] * 7 + ["x"]]}, '"image" must hold only numbers from 0 to 16.'),
        ({"image": [[0] * 8] * 7 + [[0] * 7 + [True]]}, '"image" must hold only numbers from 0 to 16.'),
        ({"image": [[0] * 8] * 7 + [[0] * 7 + [17]]}, '"image" values must lie between 0 and 16.'),
        ({"drawing": [1, 2]}, '"drawing" must be an object with "width", "height" and "pixels".'),
        ({"drawing": {"width": 4, "height": 8, "pixels": PIXELS_64}}, '"drawing" width must be a whole number from 8'),
        ({"drawing": {"width": 8, "height": 8.0, "pixels": PIXELS_64}}, '"drawing" height must be a whole number'),
        ({"drawing": {"width": 8, "height": 8, "pixels": [0] * 64}}, '"drawing" pixels must be a base64 string'),
        ({"drawing": {"width": 8, "height": 8, "pixels": "%%%"}}, '"drawing" pixels are not valid base64.'),
        ({"drawing": {"width": 9, "height": 8, "pixels": PIXELS_64}}, '"drawing" pixels hold 64 bytes; 9 × 8 needs'),
        ({"drawing": {"width": 8, "height": 8, "pixels": PIXELS_64}}, "The drawing is empty; draw a digit"),
    ],
)
def test_malformed_requests_are_a_400_with_one_sentence(client, body, message):
    if isinstance(body, str):
        response = client.post("/api/predict", data=body, content_type="application/json")
    else:
        response = client.post("/api/predict", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error.startswith(message) and error.endswith(".") and "\n" not in error


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("get", "/api/test-image?index=seven", 400, "index must be a whole number, got 'seven'."),
        ("get", "/api/test-image?index=360", 400, "index must be between 0 and 359, got 360."),
        ("get", "/api/nothing", 404, "No such page: /api/nothing."),
        ("get", "/api/predict", 405, "GET is not allowed on /api/predict."),
    ],
)
def test_other_mistakes_are_one_sentence_too(client, method, path, status, message):
    response = getattr(client, method)(path)
    assert response.status_code == status and response.get_json() == {"error": message}


def test_a_body_over_the_limit_is_a_413():
    client = create_app([answering(1)], {"MAX_CONTENT_LENGTH": 1000}).test_client()
    response = client.post("/api/predict", json=drawing_body(np.zeros((64, 64), dtype=np.uint8)))
    assert response.status_code == 413
    assert response.get_json() == {"error": "The request body is larger than 1000 bytes."}


# ---- the real clients against servers that are not there -----------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_every_real_endpoint_reports_a_stopped_server_in_one_sentence_without_its_address(tmp_path):
    from serving.playground import endpoints

    port = closed_port()
    addresses = endpoints.StackAddresses(
        model_name="digits",
        tf_grpc=f"127.0.0.1:{port}",
        tf_rest=f"http://127.0.0.1:{port}",
        flask=f"http://127.0.0.1:{port}",
        torchserve=f"http://127.0.0.1:{port}",
        torchserve_management=f"http://127.0.0.1:{port}",
        torchserve_key_file=tmp_path / "key_file.json",
        torchserve_grpc=f"127.0.0.1:{port}",
    )
    connected = endpoints.connect(addresses)
    try:
        assert [endpoint.key for endpoint in connected] == [
            "tf-grpc",
            "tf-rest",
            "flask-rest",
            "torchserve-rest",
            "torchserve-grpc",
        ]
        for endpoint in connected:
            with pytest.raises(EndpointError) as raised:
                endpoint.predict(np.zeros((1, 8, 8), dtype=np.float32))
            assert str(raised.value) == "Not reachable: the server is stopped, still starting or shutting down."
    finally:
        for endpoint in connected:
            endpoint.close()


def test_server_sentences_lose_their_addresses():
    from serving.clients import ServingError
    from serving.playground.endpoints import _sentence

    description = "the REST server at http://127.0.0.1:8501"
    error = ServingError(f"{description} answered HTTP 404: Model 'x' is not served by 10.0.0.2:8501.", 404)
    assert _sentence(error, description) == "The server answered HTTP 404: Model 'x' is not served by the server."


# ---- the command line ----------------------------------------------------------------------------------------


def test_a_taken_port_moves_to_the_next_one_and_an_explicit_one_is_refused():
    app = create_app([answering(1)])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        server = playground_main.bind(app, [busy], any_port=True)
        try:
            assert server.port not in (busy, 0)
            assert server.socket.getsockname()[1] == server.port
        finally:
            server.server_close()
        with pytest.raises(playground_main.UsageError, match=rf"^Port {busy} is already in use; choose another"):
            playground_main.bind(app, [busy], any_port=False)


def test_a_port_out_of_range_is_one_sentence_and_exit_2(capsys):
    assert playground_main.main(["--port", "70000"]) == 2
    error = capsys.readouterr().err
    assert error == "python -m serving.playground: error: --port must be between 1 and 65535, got 70000.\n"


def test_make_serve_points_to_the_playground(tmp_path):
    from serving.runtime import Stack

    assert "make playground" in Stack(run_dir=tmp_path / "run", models_dir=tmp_path / "models").describe_endpoints()
