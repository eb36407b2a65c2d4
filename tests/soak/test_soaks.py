"""The edge soaks under pytest's `long_soak` marker, run by hand: `.venv/bin/python -m pytest -m long_soak tests/soak`.

Neither `make test` nor CI's robustness soak (`-m soak`) selects them: together they take tens of minutes.
"""

from __future__ import annotations

import pytest

from tests.soak import data_parallel

pytestmark = [pytest.mark.long_soak, pytest.mark.slow]


@pytest.mark.timeout(6 * 3600)
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_fifty_two_process_runs_in_a_row_never_crash(framework, tmp_path):
    assert data_parallel.soak(framework, 50, timeout=600, report_dir=tmp_path) == 0, sorted(tmp_path.iterdir())


@pytest.mark.timeout(6 * 3600)
def test_fifty_versions_under_load_fail_no_request_and_end_on_the_newest(tf_trained, torch_trained, tmp_path):
    from tests.soak import version_churn

    models = tmp_path / "models"
    models.mkdir()
    (models / "tf").symlink_to(tf_trained.export_path.parents[1])
    (models / "torch").symlink_to(torch_trained.export_path.parents[1])
    assert version_churn.main(["--source", str(models), "--versions", "50", "--clients", "8"]) == 0
