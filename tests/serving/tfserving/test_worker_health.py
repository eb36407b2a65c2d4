"""Every worker of a multi-worker TF server answers its health check for the whole group at once: the moment the
last worker says it is ready, a check reaching any worker says SERVING (no wait for that worker's next tick)."""

from __future__ import annotations

from concurrent import futures
from types import SimpleNamespace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.frontend.workers import WorkerGroup
from serving.tfserving import workers


def test_a_health_check_on_any_worker_sees_the_group_ready_at_once(tmp_path):
    group = WorkerGroup(0, 2, tmp_path)
    servicer = health.HealthServicer()
    sharing = workers.StateSharing(group, servicer, ("",), None)
    sharing.manager = SimpleNamespace(all_models_available=lambda: True)  # this worker has loaded its models
    sharing.refresh(sharing.manager)  # worker 1 has not said it is ready yet: NOT_SERVING
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[workers.health_check_refresher(sharing)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            WorkerGroup(1, 2, tmp_path).publish_ready(True)  # the other worker, through the shared folder
            # No state-sharing thread runs here: only the check itself can bring the answer up to date.
            assert (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        server.stop(None)
