"""TensorFlow Serving's REST API (`/v1/models/<name>[:predict|/metadata]`), served by TF Serving and the Flask app."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from experiment.json_types import JSONDict, JSONValue, as_array
from experiment.spec import CLASSES, INPUT_NAME, PROBABILITIES
from serving.clients import errors
from serving.clients.base import DEFAULT_TIMEOUT_S, as_batch, wait_for_available_version
from serving.clients.errors import ServerUnavailableError, ServingError


class RestClient:
    """TensorFlow Serving's REST API (also served by the Flask app): /v1/models/{name}[:predict|/metadata]."""

    def __init__(
        self,
        base_url: str,
        model_name: str = "digits",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        server: str = "REST server",
    ) -> None:
        """server names it in error sentences, e.g. "TensorFlow Serving (REST)" or "Flask (REST)"."""
        import requests

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.description = f"{server} at {self.base_url}"
        self._session = requests.Session()  # keep-alive: one TCP connection for many calls

    def _request(self, method: str, path: str, json: JSONValue = None) -> JSONValue:
        """The decoded JSON answer of one call (json: the request body, none when None)."""
        import requests

        url = f"{self.base_url}/v1/models/{self.model_name}{path}"
        try:
            response = self._session.request(method, url, timeout=self.timeout_s, json=json)
        except requests.Timeout:
            raise errors.timed_out(self.description, self.timeout_s) from None
        except requests.ConnectionError:
            raise errors.unreachable(self.description) from None
        document: JSONValue
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code != 200:
            error = document.get("error") if isinstance(document, dict) else None
            message = error if isinstance(error, str) and error else (response.text.strip()[:200] or response.reason)
            status = response.status_code
            if status == 404:
                raise errors.unknown_model(self.description, self.model_name, status, message)
            raise errors.refused(
                self.description, status, message, ServerUnavailableError if status == 503 else ServingError
            )
        if document is None:
            raise ServingError(f"{self.description} answered with a body that is not JSON.", response.status_code)
        return document

    def predict(self, images: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """POST :predict in the columnar format; images (N, H, W) → probabilities (N, C), classes (N,)."""
        batch = as_batch(images)
        document = self._request("POST", ":predict", json={"inputs": {INPUT_NAME: batch.tolist()}})
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, dict) or PROBABILITIES not in outputs or CLASSES not in outputs:
            raise ServingError(f"{self.description} answered without outputs '{PROBABILITIES}' and '{CLASSES}'.")
        return np.asarray(outputs[PROBABILITIES], dtype=np.float32), np.asarray(outputs[CLASSES], dtype=np.int64)

    def get_metadata(self) -> JSONDict:
        """GET /v1/models/{name}/metadata."""
        document = self._request("GET", "/metadata")
        if not isinstance(document, dict):
            raise ServingError(f"{self.description} answered the metadata request with JSON that is not an object.")
        return document

    def get_status(self) -> list[JSONDict]:
        """GET /v1/models/{name}: one dict per version."""
        document = self._request("GET", "")
        versions = document.get("model_version_status", []) if isinstance(document, dict) else []
        return [version for version in as_array(versions) if isinstance(version, dict)]

    def wait_until_available(self, timeout: float) -> None:
        """Poll GET /v1/models/{name} until a version is AVAILABLE."""
        wait_for_available_version(self, timeout)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()
