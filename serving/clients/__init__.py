"""One client family for every endpoint, with one error family; `python -m serving.client` is its command line.

Every client offers `predict(images)`, `get_metadata()`, `wait_until_available(timeout)`, `close()` and a
`description` (see `PredictionClient`), and raises `ServingError` (or a subclass) when a server refuses a request
or cannot be reached:

    TFServingGrpcClient   tensorflow.serving's gRPC API through the official stubs (real TF Serving or ours)
    RestClient            TensorFlow Serving's REST API (TF Serving and the Flask app)
    TorchServeClient      TorchServe's inference and management REST APIs, token authorization included
    TorchServeGrpcClient  TorchServe's own gRPC APIs (stubs generated from the protos torchserve ships), the same keys

Which client talks to which running endpoint is not decided here: each server's spec in `serving.runtime` says so.
"""

from serving.clients.base import DEFAULT_TIMEOUT_S, PredictionClient
from serving.clients.errors import ServerUnavailableError, ServingError, TorchServeError
from serving.clients.rest import RestClient
from serving.clients.tfserving_grpc import TFServingGrpcClient
from serving.clients.torchserve import TorchServeClient
from serving.clients.torchserve_grpc import TorchServeGrpcClient

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PredictionClient",
    "RestClient",
    "ServerUnavailableError",
    "ServingError",
    "TFServingGrpcClient",
    "TorchServeClient",
    "TorchServeError",
    "TorchServeGrpcClient",
]
