"""The C++ loader (serving/cpp/, `make cpp-loader`) classifies test digits from model.pt2 as ONNX Runtime does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from experiment import artifacts
from tests import torch_exports

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine to build the C++ loader with"),
]


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """The loader, built by its make target into a temporary folder."""
    program = tmp_path_factory.mktemp("cpp") / "pt2_classify"
    built = subprocess.run(
        ["make", "--no-print-directory", "cpp-loader", f"CPP_LOADER={program}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    return program


def test_the_cpp_program_prints_the_classes_of_the_pt2_package(program, torch_every_format, digits, tmp_path):
    package = torch_every_format.export_path / artifacts.AOTI_FILE
    assert package.is_file()  # g++ exists, so the export wrote it
    images = digits.test.images[:20].astype(np.float32)  # (20, 8, 8)
    with open(tmp_path / "images.txt", "w") as stream:
        stream.write("20 8 8\n")
        np.savetxt(stream, images.reshape(len(images), -1))
    completed = subprocess.run(
        [str(program), str(package), str(tmp_path / "images.txt")], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    classes = [int(line) for line in completed.stdout.split()]
    assert classes == torch_exports.onnx_outputs(torch_every_format.export_path, images)[1].tolist()


def test_a_missing_package_is_one_line_and_exit_1(program, tmp_path):
    (tmp_path / "images.txt").write_text("1 8 8\n" + " ".join(["0"] * 64) + "\n")
    completed = subprocess.run(
        [str(program), str(tmp_path / "missing.pt2"), str(tmp_path / "images.txt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith(f"{program}: error: ") and completed.stderr.count("\n") == 1
