"""The soaks under pytest's `soak` marker (excluded from `make test`): `.venv/bin/python -m pytest -m soak tests/soak`."""

from __future__ import annotations

import pytest

from tests.soak import data_parallel

pytestmark = pytest.mark.soak


@pytest.mark.timeout(6 * 3600)
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_fifty_two_process_runs_in_a_row_never_crash(framework, tmp_path):
    assert data_parallel.soak(framework, 50, timeout=600, report_dir=tmp_path) == 0, sorted(tmp_path.iterdir())
