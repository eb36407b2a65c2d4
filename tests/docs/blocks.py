"""The commands and URLs of README.md and docs/*.md, as the docs test runs them.

A fenced block marked `sh` or `bash` is a list of commands; the docs test runs it, top to bottom, against a stack
started the way the README says. A block that cannot run here (a cluster, docker, a system package) or that a
slower test runs elsewhere is marked, on the line just above its fence, with

    <!-- docs-test: syntax only, <why, or which test runs it> -->

and then only its syntax is checked (`bash -n`). `python` blocks are compiled, never run (they are fragments).
URLs `http://127.0.0.1:<port>/...` in the text are asked with GET when the port is one of the stack's.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = ("sh", "bash")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<mode>[a-z -]+?)\s*(?:,\s*(?P<reason>.*?))?\s*-->\s*$")
_URL = re.compile(r"http://127\.0\.0\.1:(?P<port>\d+)(?P<path>/[^\s`'\"<>)\]]*)?")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and its docs-test marker."""

    path: Path
    line: int  # the line of the opening fence, counted from 1
    language: str
    text: str
    mode: str  # "run" or "syntax only"
    reason: str

    @property
    def where(self) -> str:
        """README.md:42, as failure messages name a block."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents() -> list[Path]:
    """README.md, then docs/*.md in name order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the marker on the line above it (if any)."""
    lines = path.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, language = opening.group(1), opening.group(2)
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[index + 1 : end])
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        mode = marker["mode"] if marker else "run"
        found.append(Block(path, index + 1, language, body + "\n", mode, (marker["reason"] or "") if marker else ""))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    """The blocks of every document."""
    return [block for path in documents() for block in blocks(path)]


def urls(path: Path) -> list[tuple[int, str, int, str]]:
    """(line, url, port, path) for every 127.0.0.1 URL outside the shell blocks (those run as commands)."""
    inside: set[int] = set()
    for block in blocks(path):
        if block.language in SHELL_LANGUAGES or block.language == "text":
            inside.update(range(block.line, block.line + block.text.count("\n") + 2))
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number in inside:
            continue
        for match in _URL.finditer(line):
            found.append((number, match.group(0), int(match["port"]), match["path"] or "/"))
    return found
