"""Only a failed collective of a multi-worker run is reported as a lost worker; every other error keeps its type."""

from __future__ import annotations

import pytest

from experiment import runs
from tf_pipeline import distributed


def _role(num_workers: int) -> distributed.WorkerRole:
    return distributed.WorkerRole(index=num_workers - 1, num_workers=num_workers, address=None)


def test_a_failed_collective_of_a_multi_worker_run_is_a_lost_worker_in_one_sentence():
    import tensorflow as tf

    expected = r"worker 1 stopped: a collective with the other workers failed \(UnavailableError\); nothing"
    with pytest.raises(runs.WorkerLost, match=expected), distributed.collective_failures(_role(2)):
        raise tf.errors.UnavailableError(None, None, "Socket closed")


def test_a_single_worker_keeps_tensorflows_error():
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError), distributed.collective_failures(_role(1)):
        raise tf.errors.InvalidArgumentError(None, None, "Incompatible shapes")


def test_an_error_that_is_not_tensorflows_passes_through():
    with pytest.raises(ValueError, match="a bug"), distributed.collective_failures(_role(2)):
        raise ValueError("a bug")
