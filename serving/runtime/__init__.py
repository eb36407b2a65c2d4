"""Managed server processes, one spec per server, and the stack on top: the only code that starts a server.

One server on free ports, ready, with a client per endpoint (a spec's endpoints say which client speaks to it):

    from serving import runtime
    from serving.runtime import tfserving

    spec = tfserving.spec(tfserving.TFServingPorts.free(), "digits", Path("models/tf/digits"))
    with runtime.start(spec, log_path=Path("/tmp/tfserving.log"), timeout=180) as server:
        for endpoint in server.spec.endpoints:          # tf-grpc, tf-rest
            client = endpoint.client()                  # TFServingGrpcClient, RestClient
            probabilities, classes = client.predict(images)
            client.close()
        server.send_signal(signal.SIGTERM); server.wait(60)   # or leave the `with`: a graceful stop

The same for `flask_app.spec(free_port(), "digits", base_path)` and
`torchserve.spec(TorchServeInstance.on_free_ports(folder), model_store)`; `runtime.launch` starts without waiting.

The whole stack (what `make serve` runs) on free ports, state in a folder of its own:

    stack = runtime.Stack(ports=runtime.Ports.free(), run_dir=tmp / "run", models_dir=Path("models"))
    seconds = stack.start(train=False)                  # {"tfserving": 18.8, "flask": 15.7, "torchserve": 23.8}
    clients = {endpoint.name: endpoint.client() for endpoint in stack.endpoints()}
    stack.stop()
"""

from experiment.processes import free_port, free_ports, port_is_free
from serving.runtime.process import ServerProcess, start, stop_all, wait_until_ready
from serving.runtime.spec import Endpoint, Example, ServerError, ServerSpec
from serving.runtime.stack import Ports, ServerStatus, Stack

launch = ServerProcess.launch

__all__ = [
    "Endpoint",
    "Example",
    "Ports",
    "ServerError",
    "ServerProcess",
    "ServerSpec",
    "ServerStatus",
    "Stack",
    "free_port",
    "free_ports",
    "launch",
    "port_is_free",
    "start",
    "stop_all",
    "wait_until_ready",
]
