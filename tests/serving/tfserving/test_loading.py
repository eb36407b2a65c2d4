"""Loading as TensorFlow Serving loads: warm-up from the model's own records, version labels, model configs, batching.

Most cases load the reference models in this process (fast, and they look inside the server); the ones that
reload a running server's config talk to the server under test, so they run against the real one as well.
"""

from __future__ import annotations

import dataclasses
import shutil
import time

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from experiment.errors import UsageError
from serving import runtime, versions
from serving.protocol.errors import RequestError
from serving.runtime import tfserving
from serving.tfserving import batching, config, manager, warmup
from serving.tfserving.grpc_service import run_predict
from serving.tfserving.predictor import Predictor
from tests.serving.tfserving import models
from tests.serving.tfserving.support import RPC_TIMEOUT_S, add_examples, require_ours, rpc_error, x_request


def write_warmup(version_dir, *records: prediction_log_pb2.PredictionLog) -> None:
    """The real server's warm-up file: a TFRecord of PredictionLogs under assets.extra."""
    path = version_dir / warmup.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())


def predict_log(**request_fields) -> prediction_log_pb2.PredictionLog:
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.CopyFrom(x_request(**request_fields))
    return record


def example_logs() -> list[prediction_log_pb2.PredictionLog]:
    """A classify, a regress and a multi-inference record over half_plus_two's tf.Example signatures."""
    classify, regress, multi = (prediction_log_pb2.PredictionLog() for _ in range(3))
    for request, signature in (
        (classify.classify_log.request, "classify_x_to_y"),
        (regress.regress_log.request, "regress_x_to_y"),
    ):
        request.model_spec.signature_name = signature
        add_examples(request, 1.0, 2.0)
    task = multi.multi_inference_log.request.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name, task.model_spec.signature_name = "default", "regress_x_to_y"
    add_examples(multi.multi_inference_log.request, 3.0)
    return [classify, regress, multi]


@pytest.fixture
def half_plus_two(models_dir, tmp_path):
    """A fresh copy of half_plus_two (version 123) as the only version of a model, to write warm-up files into."""
    base_path = tmp_path / "half_plus_two"
    shutil.copytree(models_dir / "half_plus_two", base_path)
    return base_path


def load(base_path, *flags: str) -> manager.ModelManager:
    """A manager serving base_path as model "default" with the server's own flag parsing, loaded once."""
    options = config.parse_options([f"--model_base_path={base_path}", "--file_system_poll_wait_seconds=0", *flags])
    models_manager = manager.ModelManager(options.sources, 0)
    models_manager.poll_once()
    return models_manager


def test_a_model_without_warmup_records_loads_without_warmup_calls(half_plus_two):
    loaded = load(half_plus_two)
    assert warmup.run_warmup(loaded.servable("default")) == 0
    assert loaded.statuses("default")[0].state == versions.AVAILABLE


def test_every_kind_of_warmup_record_is_replayed_before_the_version_serves(half_plus_two):
    write_warmup(half_plus_two / models.VERSION_FOLDER, predict_log(), predict_log(shape=(3, 1)), *example_logs())
    loaded = load(half_plus_two)
    assert loaded.statuses("default")[0].state == versions.AVAILABLE
    assert warmup.run_warmup(loaded.servable("default")) == 5


def test_a_failing_warmup_record_fails_the_load_with_that_records_error(half_plus_two):
    bad_alias = predict_log()
    bad_alias.predict_log.request.inputs["z"].CopyFrom(bad_alias.predict_log.request.inputs.pop("x"))
    write_warmup(half_plus_two / models.VERSION_FOLDER, predict_log(), bad_alias)
    (status,) = load(half_plus_two).statuses("default")
    assert (status.state, status.error_code) == (versions.END, "INVALID_ARGUMENT")
    assert "input tensor alias not found in signature: z" in status.error_message
    # --enable_model_warmup=false: the same version loads, its records untouched.
    assert load(half_plus_two, "--enable_model_warmup=false").statuses("default")[0].state == versions.AVAILABLE


def test_a_warmup_file_that_is_not_a_tfrecord_fails_the_load_as_data_loss(half_plus_two):
    path = half_plus_two / models.VERSION_FOLDER / warmup.WARMUP_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"certainly not a TFRecord file" * 4)
    (status,) = load(half_plus_two).statuses("default")
    assert status.state == versions.END and status.error_code == "DATA_LOSS"
    assert "Please verify your warmup data is in TFRecord format." in status.error_message


def test_labels_at_startup_need_the_allow_flag(models_dir, tmp_path):
    path = tmp_path / "models.config"
    path.write_text(models.model_config(models_dir))
    with pytest.raises(
        UsageError,
        match=r"Request to assign label to version 12[34] of model half_plus_two_2_versions, which is not currently available",
    ):
        config.parse_options([f"--model_config_file={path}"])
    options = config.parse_options([f"--model_config_file={path}", "--allow_version_labels_for_unavailable_models"])
    assert {source.name: source.labels for source in options.sources}[models.TWO_VERSIONS] == models.LABELS


def test_label_rules_on_reload(models_dir):
    """Without the allow flag a label may only name an AVAILABLE version; with it, a new label may name any."""
    source = config.sources_from_config(
        text_format.Parse(models.model_config(models_dir, labels={}), model_server_config_pb2.ModelServerConfig())
    )
    two = [entry for entry in source if entry.name == models.TWO_VERSIONS]
    strict = manager.ModelManager(two, 0)
    strict.poll_once()
    strict.reconfigure([_relabel(two[0], stable=124)])
    assert strict.servable(models.TWO_VERSIONS, label="stable").version == 124
    with pytest.raises(manager.LabelError, match="Request to assign label to version 999"):
        strict.reconfigure([_relabel(two[0], stable=124, future=999)])
    lenient = manager.ModelManager(config.with_server_flags(two, True, True), 0)
    lenient.poll_once()
    lenient.reconfigure([_relabel(two[0], stable=123, future=999)])  # a new label may wait for its version
    with pytest.raises(
        RequestError, match=r"Servable not found for request: Specific\(half_plus_two_2_versions, 999\)"
    ):
        lenient.servable(models.TWO_VERSIONS, label="future")
    with pytest.raises(manager.LabelError):  # but an existing label cannot move to a version that is not there
        lenient.reconfigure([_relabel(two[0], stable=998, future=999)])


def _relabel(source: versions.ModelSource, **labels: int) -> versions.ModelSource:
    return dataclasses.replace(source, labels=labels)


def test_bad_model_config_stops_the_server_with_the_real_servers_words(tmp_path, capsys):  # testBadModelConfig
    from serving.tfserving.main import main

    path = tmp_path / "bad_model_config.txt"
    path.write_text("improperly formatted file")
    assert main([f"--model_config_file={path}"]) == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in capsys.readouterr().err


def test_predict_with_batching(models_dir):  # testPredictBatching (in this process, with the scheduler)
    loaded = load(models_dir / "half_plus_two", "--enable_batching")
    scheduler = batching.BatchScheduler(
        batching.BatchingOptions(max_batch_size=4, batch_timeout_micros=1000, num_batch_threads=1)
    )
    predictor = Predictor(loaded, scheduler)
    try:
        for output_filter in (("y",), ()):
            response = run_predict(predictor, x_request(output_filter=output_filter))
            assert list(response.outputs["y"].float_val) == [3.0] and response.model_spec.version.value == 123
        scalar = x_request(shape=())
        with pytest.raises(RequestError, match="Batching Run\\(\\) input tensors must have at least one dimension"):
            run_predict(predictor, scalar)
    finally:
        scheduler.stop()


# ---- a running server's config ------------------------------------------------------------------------------------


def _reload(model_service, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    model_service.HandleReloadConfigRequest(request, RPC_TIMEOUT_S)


def _labelled_version(model_service, label: str) -> int:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name, request.model_spec.version_label = models.TWO_VERSIONS, label
    return model_service.GetModelStatus(request, RPC_TIMEOUT_S).model_version_status[0].version


@pytest.mark.slow
def test_handle_reload_config_request_moves_labels_by_the_real_servers_rules(served, model_service):
    try:
        _reload(model_service, models.model_config(served.models_dir, labels={"stable": 124, "canary": 123}))
        assert (_labelled_version(model_service, "stable"), _labelled_version(model_service, "canary")) == (124, 123)
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(models.model_config(served.models_dir, labels={"stable": 999}), request.config)
        error = rpc_error(model_service.HandleReloadConfigRequest, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Request to assign label to version 999 of model half_plus_two_2_versions" in error.details()
    finally:
        _reload(model_service, models.model_config(served.models_dir))
    assert _labelled_version(model_service, "stable") == 123


def _config_naming(*base_paths: str) -> model_server_config_pb2.ModelServerConfig:
    model_config = model_server_config_pb2.ModelServerConfig()
    for index, base_path in enumerate(base_paths):
        model_config.model_config_list.config.add(
            name=f"model{index}", base_path=base_path, model_platform="tensorflow"
        )
    return model_config


def test_reload_base_paths_must_be_folders_under_the_allowed_roots(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "digits" / "1").mkdir(parents=True)
    (outside / "secret").mkdir(parents=True)
    (root / "escape").symlink_to(outside / "secret")  # a link inside the root that leads out of it
    (root / "file").write_text("not a folder")
    roots = config.allowed_roots("", [versions.ModelSource("digits", root)])
    assert roots == (root.resolve(),)
    config.check_reload_base_paths(_config_naming(str(root / "digits"), str(root)), roots)  # the root and below
    refusals = set()
    for base_path in (
        "/etc",
        str(outside / "secret"),
        str(outside / "missing"),
        str(root / "missing"),
        str(root / "digits" / ".." / ".." / "outside" / "secret"),
        str(root / "escape"),
        str(root / "file"),
    ):
        with pytest.raises(UsageError) as raised:
            config.check_reload_base_paths(_config_naming(str(root / "digits"), base_path), roots)
        refusals.add(str(raised.value))
    # One sentence for every case: whether a path exists never shows, and no path is echoed.
    assert refusals == {
        "The base_path of model 'model1' is not an existing folder under the server's allowed model roots "
        "(--allowed_model_roots); the config was not applied."
    }


def test_allowed_model_roots_flag(tmp_path, models_dir):
    base = models_dir / "half_plus_two"
    assert config.parse_options([f"--model_base_path={base}"]).allowed_model_roots == (base.resolve(),)
    options = config.parse_options([f"--model_base_path={base}", f"--allowed_model_roots={tmp_path}, {models_dir}"])
    assert options.allowed_model_roots == (tmp_path.resolve(), models_dir.resolve())
    with pytest.raises(UsageError, match="--allowed_model_roots entry"):
        config.parse_options([f"--model_base_path={base}", f"--allowed_model_roots={tmp_path / 'missing'}"])


@pytest.mark.slow
def test_reload_outside_the_allowed_roots_is_refused_alike_and_changes_nothing(served, model_service, prediction):
    require_ours(served, "the real server accepts any base path")
    models_dir = served.models_dir
    details = set()
    for base_path in (
        "/etc",
        str(models_dir.parent / "missing"),
        str(models_dir / "half_plus_two" / ".." / ".."),
        str(models_dir / "half_plus_two" / "missing"),
    ):
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.add(
            name="half_plus_two", base_path=base_path, model_platform="tensorflow"
        )
        error = rpc_error(model_service.HandleReloadConfigRequest, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details.add(error.details())
    assert len(details) == 1 and "/" not in details.pop()
    # Nothing was applied: every model of the start-up config still answers.
    assert prediction.Predict(x_request("half_plus_three", output_filter=()), RPC_TIMEOUT_S).outputs["y"].float_val == [
        4.0
    ]


@pytest.mark.slow
def test_model_config_is_not_reread_with_a_zero_poll_period(
    served, prediction
):  # testModelConfigReloadWithZeroPollPeriod
    require_ours(served, "it rewrites the config file the server was started with")
    path = served.models_dir / models.CONFIG_FILE
    original = path.read_text()
    try:
        path.write_text(original.replace('name: "half_plus_three"', 'name: "renamed_half_plus_three"'))
        time.sleep(2)
        assert prediction.Predict(x_request("half_plus_three", output_filter=()), RPC_TIMEOUT_S).outputs[
            "y"
        ].float_val == [4.0]
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_model_config_file_is_polled(served, models_dir, tmp_path):  # testModelConfigReload
    require_ours(served, "it starts a server of its own")
    path = tmp_path / "model_config.txt"
    entry = 'model_config_list {{ config {{ name: "{0}" base_path: "{1}" model_platform: "tensorflow" }} }}'
    path.write_text(entry.format("half_plus_two", models_dir / "half_plus_two"))
    flags = [f"--model_config_file={path}", "--model_config_file_poll_wait_seconds=1", "--workers=1"]
    spec = tfserving.spec(tfserving.TFServingPorts.free(rest=False), "half_plus_two", None, flags)
    with (
        runtime.start(spec, tmp_path / "tfserving.log", 180),
        grpc.insecure_channel(spec.endpoint("tf-grpc").address) as channel,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert stub.Predict(x_request("half_plus_two", output_filter=()), RPC_TIMEOUT_S).outputs["y"].float_val == [3.0]
        path.write_text(entry.format("half_plus_three", models_dir / "half_plus_three"))
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = stub.Predict(x_request("half_plus_three", output_filter=()), RPC_TIMEOUT_S)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline, error.details()
                time.sleep(0.5)
        assert answer.outputs["y"].float_val == [4.0]


@pytest.mark.slow
def test_a_corrupt_newest_version_at_start_falls_back_to_the_newest_that_loads(served, models_dir, tmp_path):
    require_ours(served, "it starts a server of its own (the real server would serve nothing)")
    base_path = tmp_path / "half_plus_two"
    shutil.copytree(models_dir / "half_plus_two", base_path)
    (base_path / "124").mkdir()
    (base_path / "124" / "saved_model.pb").write_bytes(b"not a SavedModel")
    spec = tfserving.spec(tfserving.TFServingPorts.free(rest=False), "default", base_path, ["--workers=1"])
    with (
        runtime.start(spec, tmp_path / "tfserving.log", 180) as server,
        grpc.insecure_channel(spec.endpoint("tf-grpc").address) as channel,
    ):
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(x_request(), RPC_TIMEOUT_S)
        assert answer.outputs["y"].float_val == [3.0] and answer.model_spec.version.value == 123
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "default"
        statuses = {
            s.version: s
            for s in model_service_pb2_grpc.ModelServiceStub(channel)
            .GetModelStatus(request, RPC_TIMEOUT_S)
            .model_version_status
        }
        assert (
            statuses[124].state == get_model_status_pb2.ModelVersionStatus.END and statuses[124].status.error_code != 0
        )
        assert statuses[123].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert "version 124 failed to load; serving version 123" in server.log()
