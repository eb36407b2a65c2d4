"""Every shell block of README.md and docs/*.md is valid bash, every python block compiles, every marker says why."""

from __future__ import annotations

import subprocess

import pytest

from tests.docs import blocks

MODES = ("run", "syntax only")


@pytest.mark.parametrize(
    "block", [b for b in blocks.all_blocks() if b.language in blocks.SHELL_LANGUAGES], ids=lambda block: block.where
)
def test_shell_block_is_valid_bash_and_its_marker_says_why(block):
    assert block.mode in MODES, f"{block.where}: unknown docs-test marker {block.mode!r}; use one of {MODES}."
    if block.mode != "run":
        assert block.reason, f"{block.where}: a `docs-test: {block.mode}` marker needs a reason after a comma."
    result = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert result.returncode == 0, f"{block.where}: not valid bash:\n{result.stderr}"


@pytest.mark.parametrize(
    "block", [b for b in blocks.all_blocks() if b.language == "python"], ids=lambda block: block.where
)
def test_python_block_compiles(block):
    try:
        compile(block.text, block.where, "exec")
    except SyntaxError as error:
        pytest.fail(f"{block.where}: line {error.lineno} of the block is not valid Python: {error.msg}.")


def test_blocks_are_found_in_the_readme():
    shell = [block for block in blocks.blocks(blocks.ROOT / "README.md") if block.language in blocks.SHELL_LANGUAGES]
    assert any("make serve" in block.text for block in shell)
