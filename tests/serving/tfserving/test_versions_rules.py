"""The real server's rules for versions over time: a model that loads nothing stops the start, a later bad version
leaves the last good one serving, and versions that left (END) stay in the status."""

from __future__ import annotations

import shutil
import signal

import pytest
from tensorflow_serving.apis import get_model_status_pb2

from serving import versions
from serving.runtime import ServerProcess, tfserving
from serving.tfserving import manager
from serving.tfserving.grpc_service import build_status_response
from tests.serving.tfserving import models


def _copy_version(models_dir, base_path, version: int) -> None:
    shutil.copytree(models_dir / "half_plus_two" / models.VERSION_FOLDER, base_path / str(version))


def _break_version(base_path, version: int) -> None:
    (base_path / str(version)).mkdir(parents=True)
    (base_path / str(version) / "saved_model.pb").write_bytes(b"not a SavedModel")


def _states(loaded: manager.ModelManager) -> dict[int, tuple[str, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    response = build_status_response(loaded, request)
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    return {
        entry.version: (state_name(entry.state), entry.status.error_message[:30])
        for entry in response.model_version_status
    }


def test_versions_that_left_stay_in_the_status_as_end(models_dir, tmp_path):  # testGetModelStatus over versions
    base_path = tmp_path / "default"
    _copy_version(models_dir, base_path, 1)
    loaded = manager.ModelManager([versions.ModelSource("default", base_path)], 0)
    loaded.poll_once()
    assert _states(loaded) == {1: ("AVAILABLE", "")}
    _copy_version(models_dir, base_path, 2)
    loaded.poll_once()  # what --file_system_poll_wait_seconds does on its schedule
    assert _states(loaded) == {2: ("AVAILABLE", ""), 1: ("END", "")}
    shutil.rmtree(base_path / "1")
    loaded.poll_once()
    assert _states(loaded) == {2: ("AVAILABLE", ""), 1: ("END", "")}, "a version whose folder is gone stays END"


def test_a_later_bad_version_leaves_the_last_good_one_serving(models_dir, tmp_path):
    base_path = tmp_path / "default"
    _copy_version(models_dir, base_path, 1)
    loaded = manager.ModelManager([versions.ModelSource("default", base_path)], 0)
    loaded.poll_once()
    loaded.check_started()
    _break_version(base_path, 2)
    loaded.poll_once()
    assert loaded.servable("default").version == 1
    states = _states(loaded)
    assert states[1] == ("AVAILABLE", "") and states[2][0] == "END" and states[2][1]
    loaded.check_started()  # still serving: nothing to refuse


def test_a_model_that_loads_nothing_is_refused_in_the_real_words(tmp_path):
    base_path = tmp_path / "bad"
    _break_version(base_path, 7)
    loaded = manager.ModelManager([versions.ModelSource("bad", base_path)], 0)
    loaded.poll_once()
    with pytest.raises(manager.ServablesUnavailable) as raised:
        loaded.check_started()
    message = str(raised.value)
    assert message.startswith(
        "UNKNOWN: 1 servable(s) did not become available: {{{name: bad version: 7} due to error: "
    )
    assert message.endswith("}, }")
    empty = manager.ModelManager([versions.ModelSource("empty", tmp_path / "empty")], 0)
    empty.poll_once()
    empty.check_started()  # no version on disk yet is no failure: the server waits for one, as the real one does


@pytest.mark.slow
def test_bad_model_at_startup_exits_non_zero(tmp_path):  # _TestBadModel: the server does not become available
    base_path = tmp_path / "bad_half_plus_two"
    _break_version(base_path, 123)
    spec = tfserving.spec(tfserving.TFServingPorts.free(rest=False), "default", base_path, ["--workers=1"])
    server = ServerProcess.launch(spec, tmp_path / "tfserving.log")
    try:
        assert server.wait(timeout=300) != 0
    finally:
        if server.exit_status() is None:
            server.send_signal(signal.SIGKILL)
    log = server.log()
    assert (
        "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
        "{{{name: default version: 123} due to error: "
    ) in log
    assert "Traceback" not in log
