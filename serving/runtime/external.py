"""A stack that runs elsewhere (`docker compose up`, `make serve` in another terminal), named by environment variables.

    TFSERVING_GRPC=127.0.0.1:8500  TFSERVING_REST=http://127.0.0.1:8501
    FLASK_URL=http://127.0.0.1:5000  TORCHSERVE_URL=http://127.0.0.1:8080  TORCHSERVE_GRPC=127.0.0.1:7070
    [TORCHSERVE_MANAGEMENT_URL=http://127.0.0.1:8081]  [TORCHSERVE_GRPC_MANAGEMENT=127.0.0.1:7071]
    [TORCHSERVE_KEY_FILE=path/to/key_file.json]

`client_environment` writes these variables for a stack this runtime started; `endpoints_from_environment` reads
them back into the same endpoints, with the same clients, as the servers' specs give.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from serving.runtime import flask_app, tfserving, torchserve
from serving.runtime.spec import DEFAULT_MODEL_NAME, Endpoint
from serving.runtime.stack import Stack

ENDPOINT_VARIABLES = ("TFSERVING_GRPC", "TFSERVING_REST", "FLASK_URL", "TORCHSERVE_URL", "TORCHSERVE_GRPC")


def client_environment(stack: Stack) -> dict[str, str]:
    """The variables that name the stack's endpoints (what the integration suite reads to test a running stack)."""
    ports, instance = stack.ports, stack.torchserve_instance
    return {
        "TFSERVING_GRPC": f"127.0.0.1:{ports.tf_grpc}",
        "TFSERVING_REST": f"http://127.0.0.1:{ports.tf_rest}",
        "FLASK_URL": f"http://127.0.0.1:{ports.flask}",
        "TORCHSERVE_URL": instance.inference_url,
        "TORCHSERVE_MANAGEMENT_URL": instance.management_url,
        "TORCHSERVE_GRPC": instance.grpc_address,
        "TORCHSERVE_GRPC_MANAGEMENT": instance.grpc_management_address,
        "TORCHSERVE_KEY_FILE": str(instance.key_file),
    }


def endpoints_from_environment(
    environment: Mapping[str, str] = os.environ, model_name: str = DEFAULT_MODEL_NAME
) -> list[Endpoint] | None:
    """The endpoints the variables name (an unset variable leaves its endpoint out); None when none is set."""
    if not any(environment.get(name) for name in ENDPOINT_VARIABLES):
        return None
    key_file = environment.get("TORCHSERVE_KEY_FILE")
    return [
        *tfserving.endpoints(environment.get("TFSERVING_GRPC"), environment.get("TFSERVING_REST"), model_name),
        *flask_app.endpoints(environment.get("FLASK_URL"), model_name),
        *torchserve.endpoints(
            environment.get("TORCHSERVE_URL"),
            environment.get("TORCHSERVE_MANAGEMENT_URL"),
            Path(key_file) if key_file else None,
            model_name,
            environment.get("TORCHSERVE_GRPC"),
            environment.get("TORCHSERVE_GRPC_MANAGEMENT"),
        ),
    ]
