"""TensorFlow Serving's REST API (`/v1/models/<name>[:predict|/metadata]`), served by TF Serving and the Flask app."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiment.spec import CLASSES, INPUT_NAME, PROBABILITIES
from serving.clients.base import DEFAULT_TIMEOUT_S, as_batch, wait_for_available_version
from serving.clients.errors import ServerUnavailableError, ServingError


class RestClient:
    """TensorFlow Serving's REST API (also served by the Flask app): /v1/models/{name}[:predict|/metadata]."""

    def __init__(self, base_url: str, model_name: str = "digits", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.description = f"the REST server at {self.base_url}"
        self._session = requests.Session()  # keep-alive: one TCP connection for many calls

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        url = f"{self.base_url}/v1/models/{self.model_name}{path}"
        try:
            response = self._session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout:
            raise ServerUnavailableError(f"{self.description} did not answer within {self.timeout_s:g} s.") from None
        except requests.ConnectionError:
            raise ServerUnavailableError(
                f"Cannot reach {self.description}: the connection was refused or dropped."
            ) from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code != 200:
            message = document.get("error") if isinstance(document, dict) else None
            message = message or (response.text.strip()[:200] or response.reason)
            error_type = ServerUnavailableError if response.status_code == 503 else ServingError
            status = response.status_code
            raise error_type(f"{self.description} answered HTTP {status}: {message}", status)
        if document is None:
            raise ServingError(f"{self.description} answered with a body that is not JSON.", response.status_code)
        return document

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """POST :predict in the columnar format; images (N, H, W) → probabilities (N, C), classes (N,)."""
        batch = as_batch(images)
        document = self._request("POST", ":predict", json={"inputs": {INPUT_NAME: batch.tolist()}})
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, dict) or PROBABILITIES not in outputs or CLASSES not in outputs:
            raise ServingError(f"{self.description} answered without outputs '{PROBABILITIES}' and '{CLASSES}'.")
        return np.asarray(outputs[PROBABILITIES], dtype=np.float32), np.asarray(outputs[CLASSES], dtype=np.int64)

    def get_metadata(self) -> dict:
        """GET /v1/models/{name}/metadata."""
        return self._request("GET", "/metadata")

    def get_status(self) -> list[dict]:
        """GET /v1/models/{name}: one dict per version."""
        document = self._request("GET", "")
        return document.get("model_version_status", []) if isinstance(document, dict) else []

    def wait_until_available(self, timeout: float) -> None:
        """Poll GET /v1/models/{name} until a version is AVAILABLE."""
        wait_for_available_version(self, timeout)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()
