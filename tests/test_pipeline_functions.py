"""The pipelines stay readable: no function of tf_pipeline/ or torch_pipeline/ runs over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 60


def _long_functions(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() has {lines} lines")
    return found


@pytest.mark.parametrize("package", ["tf_pipeline", "torch_pipeline"])
def test_no_pipeline_function_runs_over_60_lines(package):
    long_functions = _long_functions(package)
    assert not long_functions, "\n".join(long_functions)


def test_both_train_modules_name_the_same_steps():
    def private_functions(package: str) -> set[str]:
        tree = ast.parse((ROOT / package / "train.py").read_text())
        return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("_")}

    steps = {
        "_set_up",
        "_resume",
        "_train_epochs",
        "_train_one_epoch",
        "_log_epoch",
        "_save_checkpoint",
        "_evaluate_and_export",
    }
    assert steps <= private_functions("tf_pipeline")
    assert steps <= private_functions("torch_pipeline")
