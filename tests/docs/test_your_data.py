"""docs/your-data.md, end to end: every command of the page, in order, on small generated Fashion-MNIST-style files.

The page's blocks carry `docs-test: syntax only` for test_docs_commands.py (they need a stack serving another model);
this test runs them on a stack of its own, then checks what the page says beyond its commands: every server gives
the same classes, a body of the wrong shape is refused in one sentence, and the playground says in one sentence
that it draws for 8×8 models only.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import requests

from experiment.data import write_idx
from tests.docs import blocks
from tests.docs.sandbox import make_sandbox, wait_until_current

# Trains both frameworks and starts a stack: `make test-fast` leaves it out.
pytestmark = [pytest.mark.server, pytest.mark.training]

PAGE = blocks.ROOT / "docs" / "your-data.md"
MODEL = "fashion"


def _write_fashion_style_files(folder, train: int = 300, test: int = 60, seed: int = 0) -> None:
    """28×28 uint8 images whose class shows as a bright 7×7 patch at one of ten places, over noise; gzipped."""
    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        images = generator.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            row, column = divmod(int(label), 5)
            image[2 + 12 * row : 9 + 12 * row, 1 + 5 * column : 8 + 5 * column] = 230
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def test_your_data_page_runs_end_to_end(tmp_path):
    sandbox = make_sandbox(tmp_path)
    _write_fashion_style_files(tmp_path / "data" / MODEL)
    page = [block for block in blocks.blocks(PAGE) if block.language in blocks.SHELL_LANGUAGES]
    assert any("make serve" in block.text for block in page) and any("curl" in block.text for block in page)
    try:
        for block in page:
            if (tmp_path / ".run" / "stack.json").exists():
                wait_until_current(sandbox, MODEL)
            sandbox.run_block(block)
        for framework in ("tf", "torch"):
            metadata = json.loads(next((tmp_path / "models" / framework / MODEL).glob("*/metadata.json")).read_text())
            assert metadata["network"]["input_shape"] == [28, 28]

        # Every server answers the page's body, with the same classes.
        body = (tmp_path / "fashion.json").read_bytes()
        answers = {}
        for name, default in (("tfserving", 8501), ("flask", 5000)):
            url = f"http://127.0.0.1:{sandbox.port_map[default]}/v1/models/{MODEL}:predict"
            answer = requests.post(url, data=body, timeout=30)
            assert answer.status_code == 200, answer.text
            answers[name] = [row["classes"] for row in answer.json()["predictions"]]
        key = json.loads((tmp_path / ".run/torchserve/key_file.json").read_text())["inference"]["key"]
        answer = requests.post(
            f"http://127.0.0.1:{sandbox.port_map[8080]}/predictions/{MODEL}",
            data=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        answers["torchserve"] = [row["classes"] for row in answer.json()["predictions"]]
        assert len(set(map(tuple, answers.values()))) == 1, answers

        # An 8×8 body is refused with HTTP 400 and one sentence; Flask's names the shape the model takes.
        small = json.dumps({"instances": np.zeros((1, 8, 8)).tolist()})
        for default in (8501, 5000):
            refused = requests.post(
                f"http://127.0.0.1:{sandbox.port_map[default]}/v1/models/{MODEL}:predict", data=small, timeout=30
            )
            assert refused.status_code == 400 and refused.json()["error"], refused.text
        sentence = "Input 'images' has shape [1, 8, 8] but the model expects float32 [N, 28, 28]."
        assert refused.json()["error"] == sentence, refused.text
        refused = requests.post(
            f"http://127.0.0.1:{sandbox.port_map[8080]}/predictions/{MODEL}",
            data=small,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert refused.status_code == 400, refused.text
        assert "[1, 8, 8]" in refused.json()["error"] and "[N, 28, 28]" in refused.json()["error"], refused.text

        # The playground names the model and says in one sentence that it draws for 8×8 models only.
        playground = subprocess.run(
            [sys.executable, "-m", "serving.playground", "--port", "1"],
            cwd=tmp_path,
            env=sandbox.environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert playground.returncode == 2, playground.stdout + playground.stderr
        [sentence] = playground.stderr.strip().splitlines()
        assert f"`{MODEL}` takes 28×28 images" in sentence and "8×8 digits only" in sentence, sentence
    finally:
        sandbox.stop()
