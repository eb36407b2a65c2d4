"""Names a reader sees in the report and on the plots: frameworks, and the server behind every endpoint."""

from __future__ import annotations

import dataclasses

FRAMEWORK_NAMES = {"tf": "TensorFlow/Keras", "torch": "PyTorch"}
# The TF server measured natively is this project's, not TensorFlow Serving's C++ binary: the name says so.
TF_SERVER = "TF-Serving-compatible server (this project)"
FLASK_SERVER = "Flask app (uvicorn)"
TORCHSERVE = "TorchServe"
# The runtime's server names (its specs' `name`, the keys of a stack's cold starts) as a reader knows the servers.
SERVER_NAMES = {"tfserving": TF_SERVER, "flask": FLASK_SERVER, "torchserve": TORCHSERVE}


@dataclasses.dataclass(frozen=True)
class EndpointLabel:
    """One endpoint of the serving stack: whose model it serves and which server answers."""

    key: str  # the runtime's endpoint name: "tf-grpc", "tf-rest", "flask-rest", "torchserve-rest", "torchserve-grpc"
    framework: str  # "tf" or "torch": whose export it serves
    server: str
    protocol: str  # "gRPC" or "REST"
    variable: str  # the environment variable that names it when the stack under test is given

    @property
    def title(self) -> str:
        """'TorchServe, REST'."""
        return f"{self.server}, {self.protocol}"

    def given_by_environment(self, address: str) -> EndpointLabel:
        """The same endpoint answered by a server this run did not start (for example docker compose's)."""
        return dataclasses.replace(self, server=f"server at {address} (given by {self.variable})")


ENDPOINTS = {
    endpoint.key: endpoint
    for endpoint in (
        EndpointLabel("tf-grpc", "tf", TF_SERVER, "gRPC", "TFSERVING_GRPC"),
        EndpointLabel("tf-rest", "tf", TF_SERVER, "REST", "TFSERVING_REST"),
        EndpointLabel("flask-rest", "torch", FLASK_SERVER, "REST", "FLASK_URL"),
        EndpointLabel("torchserve-rest", "torch", TORCHSERVE, "REST", "TORCHSERVE_URL"),
        EndpointLabel("torchserve-grpc", "torch", TORCHSERVE, "gRPC", "TORCHSERVE_GRPC"),
    )
}
