"""The REST servers as the robustness checks see them: address, paths, headers, body limit and error format.

Built from the runtime's endpoints (serving.runtime), so the checks reach whatever a Stack or a ServerSpec started.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from pathlib import Path

from serving.runtime import Endpoint
from serving.torchserve import config as torchserve_config

MEBIBYTE = 1024 * 1024
# The body limits each server documents: --max_request_bytes (TF server), FLASK_MAX_CONTENT_LENGTH (Flask),
# max_request_size in config.properties (TorchServe).
TF_BODY_LIMIT = 64 * MEBIBYTE
FLASK_BODY_LIMIT = 8 * MEBIBYTE


def torchserve_body_limit() -> int:
    """max_request_size from the config.properties every TorchServe instance is written from."""
    return int(torchserve_config.read_properties(torchserve_config.TEMPLATE)["max_request_size"])


@dataclasses.dataclass
class RestTarget:
    """One REST server: where it listens, its paths, the headers every call needs, and what its errors look like."""

    server: str  # "tfserving", "flask", "torchserve"
    host: str
    port: int
    model_name: str
    body_limit: int
    key_file: Path | None = None  # TorchServe's key_file.json when token authorization is on

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, key_file: Path | None = None) -> RestTarget:
        """The target behind a REST endpoint of the runtime (tf-rest, flask-rest or torchserve-rest)."""
        address = urllib.parse.urlsplit(endpoint.address)
        limits = {"tfserving": TF_BODY_LIMIT, "flask": FLASK_BODY_LIMIT}
        limit = limits.get(endpoint.server) or torchserve_body_limit()
        return cls(
            endpoint.server, address.hostname or "127.0.0.1", address.port or 80, endpoint.model_name, limit, key_file
        )

    @property
    def torchserve(self) -> bool:
        """Whether TorchServe's own error format ({"code", "type", "message"}) is acceptable too."""
        return self.server == "torchserve"

    def predict_path(self, model_name: str | None = None, version: str | None = None) -> str:
        """The predict URL path, with another model name or a version when given (neither is escaped)."""
        name = self.model_name if model_name is None else model_name
        if self.torchserve:
            return f"/predictions/{name}" + (f"/{version}" if version is not None else "")
        return f"/v1/models/{name}" + (f"/versions/{version}" if version is not None else "") + ":predict"

    def status_path(self, model_name: str | None = None, version: str | None = None) -> str | None:
        """The model status URL path on this port (TorchServe has none on its inference port: None)."""
        if self.torchserve:
            return None
        name = self.model_name if model_name is None else model_name
        return f"/v1/models/{name}" + (f"/versions/{version}" if version is not None else "")

    def headers(self) -> dict[str, str]:
        """The Authorization header TorchServe's inference API needs while token authorization is on."""
        if self.key_file is None:
            return {}
        try:
            key = json.loads(self.key_file.read_text())["inference"]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {"Authorization": f"Bearer {key}"}
