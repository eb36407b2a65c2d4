"""The spec of the Flask app on uvicorn (`python -m serving.flask_app`): REST on 5000."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from serving.runtime.spec import (
    DEFAULT_MODEL_NAME,
    HOST,
    Endpoint,
    Example,
    ServerSpec,
    curl_command,
)

NAME = "flask"
DEFAULT_PORT = 5000
APPLICATION = "serving.flask_app:create_app"


def endpoints(url: str | None, model_name: str = DEFAULT_MODEL_NAME) -> list[Endpoint]:
    """The app's one endpoint at this base URL (TensorFlow Serving's REST API)."""
    from serving.clients import RestClient

    if not url:
        return []
    return [
        Endpoint(
            "flask-rest",
            NAME,
            "Flask + uvicorn",
            "torch",
            "REST",
            url,
            model_name,
            lambda model, timeout: RestClient(url, model, timeout, "Flask (REST)"),
        )
    ]


def is_ready(url: str) -> bool:
    """True when the app's /readyz answers 200 (every worker that answered has its model loaded)."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2.0) as response:
            status: int = response.status
            return status == 200
    except urllib.error.HTTPError:
        return False


def spec(
    port: int = DEFAULT_PORT,
    model_name: str = DEFAULT_MODEL_NAME,
    base_path: Path | None = None,
    environment: dict[str, str] | None = None,
    application: str = APPLICATION,
    python: str = sys.executable,
    model_format: str | None = None,
    flags: Sequence[str] = (),
) -> ServerSpec:
    """`python -m serving.flask_app` on 127.0.0.1:port serving base_path's torch versions (ONNX Runtime by default);
    environment adds FLASK_* settings (and WEB_CONCURRENCY); application is the module:function building the app;
    flags are more of the server's flags (--workers, --max-body-bytes, --keep-alive-seconds, ...)."""
    url = f"http://{HOST}:{port}"
    predict_url = f"{url}/v1/models/{model_name}:predict"
    settings: dict[str, str | None] = {"FLASK_MODEL_NAME": model_name}
    if base_path is not None:
        settings["FLASK_MODEL_BASE_PATH"] = str(base_path)
    if model_format is not None:  # onnx (the app's default), pt2 or torchscript
        settings["FLASK_MODEL_FORMAT"] = model_format
    # The server makes a fresh metrics folder of its own; a folder inherited from the caller would be shared.
    settings["PROMETHEUS_MULTIPROC_DIR"] = None
    command = [python, "-m", "serving.flask_app", "--host", HOST, "--port", str(port)]
    if application != APPLICATION:
        command += ["--app", application]
    command += list(flags)
    return ServerSpec(
        name=NAME,
        title="Flask app on uvicorn (serving.flask_app)",
        command=command,
        ports={"REST": port},
        is_ready=lambda: is_ready(url),
        endpoints=endpoints(url, model_name),
        examples=[Example("Flask REST", "REST", predict_url, curl_command(predict_url))],
        environment={**settings, **(environment or {})},
        needs=("torch",),
    )
