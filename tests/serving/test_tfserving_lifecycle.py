"""python -m serving.tfserving over its lifetime: new versions under load, a broken one, batching, SIGTERM.

The companion of test_tfserving.py (whose helpers start the servers), kept apart to keep each file readable.
"""

from __future__ import annotations

import functools
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving.clients import RestClient, ServerUnavailableError, ServingError, TFServingGrpcClient
from tests.serving.load_recorder import LoadRecorder
from tests.serving.test_tfserving import POLL_SECONDS, in_process, new_base_path, publish_version, start_server  # noqa: F401

# ---- versions --------------------------------------------------------------------------------------------


class VersionRecorder(LoadRecorder[int]):
    """8 gRPC clients predicting in a loop, recording (time, client, version answered) and every failure."""

    def __init__(self, address: str, images: np.ndarray, client_count: int = 8) -> None:
        self._clients = [TFServingGrpcClient(address, timeout_s=60) for _ in range(client_count)]
        askers = [
            (f"client {index}", functools.partial(_answered_version, client, images[index : index + 1]))
            for index, client in enumerate(self._clients)
        ]
        super().__init__(askers, failure_types=(ServingError,), pause_s=0.005, join_timeout_s=120)

    def __exit__(self, *exception: object) -> None:
        super().__exit__(*exception)
        for client in self._clients:
            client.close()

    def first_answer_from(self, version: int, since: float, timeout: float) -> float | None:
        """Seconds from since until version first answered, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = [at for at, _, answered in self.since(since) if answered == version]
            if times:
                return min(times) - since
            time.sleep(0.05)
        return None

    def versions_since(self, since: float) -> set[int]:
        return {version for _, _, version in self.since(since)}


def _answered_version(client: TFServingGrpcClient, image: np.ndarray) -> int:
    return client.predict_response(image).model_spec.version.value


def _status(address: str) -> dict[int, get_model_status_pb2.ModelVersionStatus]:
    with grpc.insecure_channel(address) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "digits"
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {status.version: status for status in response.model_version_status}


@pytest.mark.slow
def test_new_version_is_served_under_load_and_a_broken_one_leaves_it_serving(tf_trained, digits, tmp_path):
    base_path = new_base_path(tmp_path, tf_trained.export_path)
    server = start_server(base_path, tmp_path)
    try:
        with VersionRecorder(server.grpc_address, digits.test.images) as recorder:
            time.sleep(1.0)
            published = time.monotonic()
            publish_version(base_path, tf_trained.export_path, 2)
            # Within the poll interval plus the time one load and warm-up take on a busy machine.
            delay = recorder.first_answer_from(2, published, timeout=POLL_SECONDS + 30)
            assert delay is not None, server.log()[-2000:]
            print(f"version 2 answered {delay:.2f} s after it was published (poll interval {POLL_SECONDS} s)")
            time.sleep(POLL_SECONDS + 0.5)
            settled = time.monotonic()

            broken = base_path / "3"
            broken.mkdir()
            (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
            failed = time.monotonic()
            deadline = failed + POLL_SECONDS + 30
            while time.monotonic() < deadline and _status(server.grpc_address).get(3, None) is None:
                time.sleep(0.1)
            # Every worker (--workers) scans the folder at the same instants; a status may come from any of them.
            while (
                time.monotonic() < deadline
                and getattr(_status(server.grpc_address).get(3), "state", None)
                != get_model_status_pb2.ModelVersionStatus.END
            ):
                time.sleep(0.1)
            time.sleep(POLL_SECONDS * 2)  # keep the clients going across more polls of the broken folder
        assert recorder.failures == []
        assert recorder.versions_since(settled) == {2}
        statuses = _status(server.grpc_address)
        assert statuses[2].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert statuses[1].state == get_model_status_pb2.ModelVersionStatus.END
        assert statuses[3].state == get_model_status_pb2.ModelVersionStatus.END
        assert statuses[3].status.error_code != 0 and statuses[3].status.error_message
        log = server.log()
        assert "Loaded model digits version 2" in log and "Unloaded model digits version 1" in log
        # Once per worker (each loads for itself), never once per poll.
        assert log.count("Failed to load model digits version 3") == log.count("Serving digits:")
        rest = requests.post(
            f"{server.rest_url}/v1/models/digits:predict",
            json={"instances": digits.test.images[:1].tolist()},
            timeout=10,
        )
        assert rest.status_code == 200
    finally:
        assert server.stop() == 0


# ---- batching and shutdown -------------------------------------------------------------------------------


@pytest.mark.slow
def test_batching_answers_each_client_its_own_rows_and_sigterm_loses_no_accepted_request(
    tf_trained, digits, in_process, tmp_path
):
    parameters = tmp_path / "batching.txt"
    parameters.write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\nnum_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 8\nallowed_batch_sizes: 32\n"
    )
    server = start_server(
        new_base_path(tmp_path, tf_trained.export_path),
        tmp_path,
        "--enable_batching",
        f"--batching_parameters_file={parameters}",
    )
    try:
        # Mixed batch sizes from 16 clients: each answer must be that client's rows, in order.
        failures: list[str] = []

        def batched_work(index: int) -> None:
            client = TFServingGrpcClient(server.grpc_address, timeout_s=60)
            try:
                for number in range(20):
                    start, size = (index * 20 + number) % 300, 1 + number % 3
                    _, classes = client.predict(digits.test.images[start : start + size])
                    if classes.tolist() != in_process[1][start : start + size].tolist():
                        failures.append(f"rows {start}..{start + size}: {classes.tolist()}")
            except ServingError as error:
                failures.append(str(error))
            finally:
                client.close()

        threads = [threading.Thread(target=batched_work, args=(index,)) for index in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        too_big = TFServingGrpcClient(server.grpc_address)
        with pytest.raises(ServingError, match="INVALID_ARGUMENT"):
            too_big.predict(digits.test.images[:33])
        too_big.close()

        # SIGTERM while 8 gRPC and 4 REST clients send: every call either succeeds or is refused as UNAVAILABLE
        # (never cancelled half-way, never a 500), and the server exits 0.
        outcomes: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load(make_client) -> None:
            client = make_client()
            refused_since = None
            try:
                while not stop.is_set():
                    try:
                        _, classes = client.predict(digits.test.images[:4])
                        outcome = "ok" if classes.tolist() == in_process[1][:4].tolist() else "wrong answer"
                        refused_since = None
                    except ServerUnavailableError as error:
                        outcome = "refused" if error.status in ("UNAVAILABLE", 503, None) else f"lost: {error}"
                        refused_since = refused_since or time.monotonic()
                        if time.monotonic() - refused_since > 2:
                            break
                    except ServingError as error:
                        outcome = f"lost: {error}"
                    with lock:
                        outcomes.append(outcome)
            finally:
                client.close()

        clients = [lambda: TFServingGrpcClient(server.grpc_address, timeout_s=60)] * 8 + [
            lambda: RestClient(server.rest_url, timeout_s=60)
        ] * 4
        threads = [threading.Thread(target=load, args=(make,), daemon=True) for make in clients]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        with lock:
            before = outcomes.count("ok")
        server.process.send_signal(signal.SIGTERM)
        exit_status = server.process.wait(60)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert exit_status == 0, server.log()[-2000:]
        assert before > 0
        assert {outcome for outcome in outcomes} <= {"ok", "refused"}, [
            o for o in outcomes if o not in ("ok", "refused")
        ][:5]
        log = server.log()
        assert "Shutting down" in log and "Stopped." in log and "Traceback" not in log
    finally:
        server.stop()
