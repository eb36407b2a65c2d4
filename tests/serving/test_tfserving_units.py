"""In-process parts of the TensorFlow Serving–compatible server and the client: no subprocess, no network."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from tensorflow.core.protobuf import meta_graph_pb2

from experiment.errors import UsageError
from serving import versions
from serving.protocol.errors import RequestError
from serving.tfserving import batching, config, manager, predictor
from serving.tfserving.servable import Signature, set_method_name_check


def test_batching_parameters_text_format():
    options = batching.parse_batching_parameters(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 500 }\nnum_batch_threads { value: 3 }\n"
        "max_enqueued_batches { value: 10 }\nallowed_batch_sizes: 16\nallowed_batch_sizes: 64\n"
        "pad_variable_length_inputs: true\n"
    )
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads) == (64, 500, 3)
    assert options.allowed_batch_sizes == (16, 64) and options.max_enqueued_batches == 10


@pytest.mark.parametrize(
    "text",
    [
        "max_batch_size: 3",
        "no_such_field { value: 1 }",
        "max_batch_size { value: 0 }",
        "max_batch_size { value: 8 } allowed_batch_sizes: 4",
    ],
)
def test_bad_batching_parameters_are_one_sentence(text):
    with pytest.raises(UsageError):
        batching.parse_batching_parameters(text)


def test_model_config_file_with_policies_and_labels(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    path = tmp_path / "models.config"
    path.write_text(
        f'model_config_list {{ config {{ name: "a" base_path: "{tmp_path / "a"}" model_platform: "tensorflow" '
        f"model_version_policy {{ specific {{ versions: 1 versions: 3 }} }} version_labels {{ key: 'stable' value: 1 }} }} "
        f'config {{ name: "b" base_path: "{tmp_path / "b"}" model_version_policy {{ latest {{ num_versions: 2 }} }} }} }}'
    )
    first, second = config.read_model_config(path)
    assert first.policy.select([1, 2, 3, 4]) == {1, 3} and first.labels == {"stable": 1}
    assert second.policy.select([1, 2, 3, 4]) == {3, 4}


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--model_base_path"),
        (["--model_base_path=/no/such/folder"], "is not a directory"),
        (["--model_base_path=.", "--model_config_file=x"], "not both"),
        (["--model_base_path=.", "--batching_parameters_file=x"], "needs --enable_batching"),
        (["--model_base_path=.", "--port=70000"], "--port"),
        (["--model_base_path=.", "--port=9000", "--rest_api_port=9000"], "must differ"),
    ],
)
def test_server_flag_mistakes_are_one_sentence(argv, message):
    with pytest.raises(UsageError, match=message):
        config.parse_options(argv)


def test_server_main_exits_2_with_one_line(capsys):
    from serving.tfserving.main import main

    assert main(["--model_base_path=/no/such/folder"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is not a directory" in error[0]


class _FakeServable:
    def __init__(self, version: int) -> None:
        self.version = version


def test_manager_keeps_the_old_version_until_the_new_one_loads_and_when_it_fails(tmp_path):
    (tmp_path / "1").mkdir()
    broken: set[int] = set()
    events: list[str] = []

    def loader(name: str, version: int, path: Path):
        if version in broken:
            raise ValueError(f"version {version} is corrupt")
        events.append(f"load {version}")
        return _FakeServable(version)

    models = manager.ModelManager([versions.ModelSource("digits", tmp_path)], loader=loader)
    models.poll_once()
    assert models.servable("digits").version == 1 and models.all_models_available()
    broken.add(2)
    (tmp_path / "2").mkdir()
    models.poll_once()
    models.poll_once()  # unchanged broken folder: not retried
    assert models.servable("digits").version == 1
    states = {status.version: status for status in models.statuses("digits")}
    assert (
        states[2].state == versions.END
        and "corrupt" in states[2].error_message
        and states[1].state == versions.AVAILABLE
    )
    broken.clear()
    (tmp_path / "2" / "saved_model.pb").write_bytes(b"fixed")  # the folder changed: try again
    models.poll_once()
    assert models.servable("digits").version == 2
    assert {status.version: status.state for status in models.statuses("digits")} == {
        2: versions.AVAILABLE,
        1: versions.END,
    }
    assert events == ["load 1", "load 2"]
    with pytest.raises(RequestError) as raised:
        models.servable("digits", version=1)
    assert raised.value.code == "NOT_FOUND"
    with pytest.raises(RequestError):
        models.statuses("cats")


class _DoublingSignature:
    """What the batch scheduler needs of a signature: a name, output aliases, and run()."""

    name = "serving_default"
    outputs = ("doubled",)

    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def run(self, arrays, output_aliases):
        self.calls.append(int(arrays["images"].shape[0]))
        return {"doubled": arrays["images"] * 2}


def _doubling_signature(calls: list[int]) -> _DoublingSignature:
    return _DoublingSignature(calls)


def test_batch_scheduler_merges_concurrent_requests_and_returns_each_its_rows():
    calls: list[int] = []
    signature = _doubling_signature(calls)
    options = batching.BatchingOptions(
        max_batch_size=8, batch_timeout_micros=20000, num_batch_threads=1, allowed_batch_sizes=(4, 8)
    )
    scheduler = batching.BatchScheduler(options)
    answers: dict[int, np.ndarray] = {}
    servable = object()  # one model version: its requests may share a batch
    try:

        def send(index: int) -> None:
            rows = np.full((1 + index % 2, 2), index, np.float32)
            answers[index] = scheduler.run(servable, signature, {"images": rows}, len(rows), ("doubled",), 10)[
                "doubled"
            ]

        threads = [threading.Thread(target=send, args=(index,)) for index in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        scheduler.stop()
    for index, answer in answers.items():
        np.testing.assert_array_equal(answer, np.full((1 + index % 2, 2), 2 * index, np.float32))
    assert len(calls) < 6 and set(calls) <= {4, 8}  # merged, and padded to allowed sizes only


def test_batch_scheduler_refuses_oversized_requests_unless_splitting():
    calls: list[int] = []
    signature = _doubling_signature(calls)
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    scheduler = batching.BatchScheduler(batching.BatchingOptions(max_batch_size=4, num_batch_threads=1))
    with pytest.raises(RequestError, match="Task size 10 is larger than maximum input batch size 4"):
        scheduler.run(object(), signature, {"images": rows}, 10, ("doubled",), 10)
    scheduler.stop()
    splitting = batching.BatchScheduler(
        batching.BatchingOptions(max_batch_size=4, num_batch_threads=1, enable_large_batch_splitting=True)
    )
    try:
        np.testing.assert_array_equal(
            splitting.run(object(), signature, {"images": rows}, 10, ("doubled",), 10)["doubled"], rows * 2
        )
    finally:
        splitting.stop()
    assert max(calls) <= 4


def _signature(**input_names: str) -> Signature:
    definition = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for alias, tensor_name in input_names.items():
        definition.inputs[alias].name = tensor_name
    definition.outputs["doubled"].name = "doubled:0"
    return Signature("serving_default", definition, servable=None)


@pytest.mark.parametrize(
    "inputs, output_filter, words",
    [
        (
            {},
            (),
            "input size does not match signature: 0!=1 len({}) != len({images}). Sent extra: {}. Missing but required: {images}.",
        ),
        (
            {"pixels": np.zeros(1)},
            (),
            "input tensor alias not found in signature: pixels. Inputs expected to be in the set {images}.",
        ),
        (
            {"images": np.zeros(1)},
            ("logits",),
            "output tensor alias not found in signature: logits Outputs expected to be in the set {doubled}.",
        ),
        ({"images": np.zeros(1)}, ("doubled", "doubled"), "duplicate output tensor alias: doubled"),
    ],
)
def test_predict_checks_names_and_output_filters_as_tensorflow_serving_does(inputs, output_filter, words):
    with pytest.raises(RequestError) as raised:
        predictor.check_predict(_signature(images="images:0"), inputs, output_filter)
    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.message == words


def test_predict_leaves_shapes_and_dtypes_to_the_graph():
    signature = _signature(images="images:0")
    assert predictor.check_predict(signature, {"images": np.zeros((), np.float64)}, ()) == ("doubled",)
    unknown = Signature("init", meta_graph_pb2.SignatureDef(method_name=""), servable=None)
    assert predictor.check_predict(unknown, {}, ()) == ()  # the method name is not checked by default
    set_method_name_check(True)  # --enable_signature_method_name_check
    try:
        with pytest.raises(RequestError, match="Expected prediction signature method_name to be one of") as raised:
            predictor.check_predict(unknown, {}, ())
    finally:
        set_method_name_check(False)
    assert raised.value.code == "INTERNAL"


@pytest.mark.parametrize(
    "inputs, words",
    [
        ({"a": np.zeros(())}, "must have at least one dimension"),
        ({"a": np.zeros(2), "b": np.zeros(3)}, "equal 0th-dimension size"),
    ],
)
def test_batching_needs_a_shared_batch_dimension(inputs, words):
    with pytest.raises(RequestError, match=words):
        predictor.batch_size(inputs)
    assert predictor.batch_size({"a": np.zeros((4, 2)), "b": np.zeros(4)}) == 4


# ---- client command line --------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("argv_prefix", [["tf", "--grpc"], ["tf", "--rest"], ["flask", "--rest"]])
def test_client_cli_unreachable_server_is_one_sentence_and_exit_1(argv_prefix, capsys):
    from serving.client import main

    port = _free_port()
    target = f"127.0.0.1:{port}" if argv_prefix[-1] == "--grpc" else f"http://127.0.0.1:{port}"
    assert main([*argv_prefix, target, "--sample", "2", "--timeout", "5"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Cannot reach" in error[0] and "Traceback" not in error[0]


def test_client_cli_rejects_a_bad_images_file(tmp_path, capsys):
    from serving.client import main

    path = tmp_path / "images.npy"
    np.save(path, np.zeros((2, 3, 4, 5)))
    assert main(["tf", "--images", str(path)]) == 2
    assert "shape" in capsys.readouterr().err
    assert main(["tf", "--images", str(tmp_path / "missing.npy")]) == 2


def test_client_wait_until_available_names_the_server():
    from serving.client import TFServingGrpcClient

    address = f"127.0.0.1:{_free_port()}"
    client = TFServingGrpcClient(address, timeout_s=0.5)
    try:
        with pytest.raises(TimeoutError, match=address):
            client.wait_until_available(1.0)
    finally:
        client.close()
