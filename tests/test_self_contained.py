"""The repository is complete in itself: no tracked file points at a design page or a folder outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Built from parts so that this file does not match itself.
OUTSIDE_REFERENCES = ("DESIGN" + ".md", "../" + "shared")


def _tracked_files() -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository():
    found = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
        for number, line in enumerate(text.splitlines(), start=1):
            found += [f"{path.relative_to(ROOT)}:{number}: {name}" for name in OUTSIDE_REFERENCES if name in line]
    assert not found, "\n".join(found)


def test_every_make_command_of_the_architecture_page_is_a_target():
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`make ([a-z][a-z-]*)", page))
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    assert {"setup", "train-tf", "train-torch", "serve", "stop", "demo", "test"} <= named
    assert named <= targets, f"docs/architecture.md names targets the Makefile lacks: {sorted(named - targets)}"
