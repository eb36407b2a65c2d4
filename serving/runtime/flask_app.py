"""The spec of the Flask app under gunicorn (`serving.flask_app:create_app()`): REST on 5000."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from serving.runtime.spec import (
    DEFAULT_MODEL_NAME,
    HOST,
    PROJECT_ROOT,
    Endpoint,
    Example,
    ServerSpec,
    curl_command,
)

NAME = "flask"
DEFAULT_PORT = 5000
GUNICORN_CONFIG = PROJECT_ROOT / "serving" / "gunicorn_conf.py"
APPLICATION = "serving.flask_app:create_app()"


def endpoints(url: str | None, model_name: str = DEFAULT_MODEL_NAME) -> list[Endpoint]:
    """The app's one endpoint at this base URL (TensorFlow Serving's REST API)."""
    from serving.clients import RestClient

    if not url:
        return []
    return [
        Endpoint(
            "flask-rest",
            NAME,
            "Flask + gunicorn",
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
) -> ServerSpec:
    """gunicorn on 127.0.0.1:port serving base_path's torch versions (ONNX Runtime by default); environment adds FLASK_* settings."""
    url = f"http://{HOST}:{port}"
    predict_url = f"{url}/v1/models/{model_name}:predict"
    settings: dict[str, str | None] = {"FLASK_MODEL_NAME": model_name}
    if base_path is not None:
        settings["FLASK_MODEL_BASE_PATH"] = str(base_path)
    if model_format is not None:  # onnx (the app's default), pt2 or torchscript
        settings["FLASK_MODEL_FORMAT"] = model_format
    # gunicorn_conf.py makes a fresh metrics folder per server; one inherited from the caller would be shared.
    settings["PROMETHEUS_MULTIPROC_DIR"] = None
    return ServerSpec(
        name=NAME,
        title="Flask app under gunicorn (serving.flask_app)",
        # `python -m gunicorn` uses this interpreter, so no PATH set-up is needed.
        command=[python, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), "-b", f"{HOST}:{port}", application],
        ports={"REST": port},
        is_ready=lambda: is_ready(url),
        endpoints=endpoints(url, model_name),
        examples=[Example("Flask REST", "REST", predict_url, curl_command(predict_url))],
        environment={**settings, **(environment or {})},
        needs=("torch",),
    )
