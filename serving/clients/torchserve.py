"""TorchServe's inference and management REST APIs behind the common client interface.

Token authorization (TorchServe's default) is handled by reading the keys from the key_file.json TorchServe writes
into its working directory; the file is read again whenever it changes, since TorchServe rewrites it when keys are
regenerated or expire.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import requests

from experiment.spec import CLASSES, INPUT_NAME, PROBABILITIES
from serving.clients.base import as_batch, poll_until
from serving.clients.errors import ServerUnavailableError, TorchServeError

READY = "READY"


class TorchServeClient:
    """Sends TensorFlow Serving's row-format body to POST /predictions/<model>; checks readiness via management."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        model_name: str = "digits",
        key_file: str | Path | None = None,
        management_url: str = "http://127.0.0.1:8081",
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.key_file = Path(key_file) if key_file is not None else None
        self.management_url = management_url.rstrip("/")
        self.timeout = timeout
        self.description = f"torchserve at {self.base_url}"
        self.session = requests.Session()
        self._keys: dict[str, str] = {}
        self._key_file_stamp: tuple[float, int] | None = None

    # Token authorization -------------------------------------------------------------------------------------

    def _key(self, api: str) -> str | None:
        """The current key for 'inference' or 'management', or None when no key file is used (or not yet written)."""
        if self.key_file is None:
            return None
        try:
            stat = self.key_file.stat()
        except FileNotFoundError:
            return None  # TorchServe writes it shortly after starting
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._key_file_stamp:
            try:
                document = json.loads(self.key_file.read_text())
                self._keys = {name: document[name]["key"] for name in ("inference", "management", "API")}
            except (OSError, ValueError, KeyError, TypeError):
                return None  # caught mid-write; the next call reads it again
            self._key_file_stamp = stamp
        return self._keys.get(api)

    def authorization_headers(self, api: str = "inference") -> dict[str, str]:
        """The Authorization header for 'inference' or 'management' calls; empty when token auth is off."""
        key = self._key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _send(self, method: str, url: str, **arguments: Any) -> requests.Response:
        """One HTTP call; a server that cannot be reached becomes ServerUnavailableError naming its base URL."""
        try:
            return self.session.request(method, url, timeout=self.timeout, **arguments)
        except requests.RequestException as error:
            base = self.management_url if url.startswith(self.management_url) else self.base_url
            raise ServerUnavailableError(f"Cannot reach {base}: {type(error).__name__}.") from None

    def _request(self, method: str, url: str, api: str, **arguments: Any) -> requests.Response:
        """Send with the current key; if TorchServe says it expired (60 min by default), renew it once and resend."""
        headers = arguments.pop("headers", {})
        response = self._send(method, url, headers={**headers, **self.authorization_headers(api)}, **arguments)
        if response.status_code in (400, 401) and self.key_file is not None and _is_key_error(response):
            api_key = self._key("API")
            if api_key:
                # TorchServe's token API issues a new key and rewrites key_file.json, which _key then re-reads.
                self._send(
                    "POST",
                    f"{self.management_url}/token",
                    params={"type": api},
                    headers={"Authorization": f"Bearer {api_key}"},
                )
                response = self._send(method, url, headers={**headers, **self.authorization_headers(api)}, **arguments)
        return response

    # The common client interface ---------------------------------------------------------------------------

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) float32 and classes (N,) int64 for images (N, H, W) of raw pixel values."""
        body = json.dumps({"instances": as_batch(images).tolist()}, separators=(",", ":"))
        response = self._request(
            "POST",
            f"{self.base_url}/predictions/{self.model_name}",
            "inference",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        document = _json_or_error(response)
        rows = document["predictions"]
        probabilities = np.asarray([row[PROBABILITIES] for row in rows], dtype=np.float32)
        classes = np.asarray([row[CLASSES] for row in rows], dtype=np.int64)
        return probabilities, classes

    def describe(self, customized: bool = False) -> dict[str, Any]:
        """The management API's description of the model (versions, workers and their states, batching).

        customized=True also asks the handler's describe_handle, whose signature arrives as customizedMetadata.
        """
        parameters = {"customized": "true"} if customized else None
        response = self._request(
            "GET", f"{self.management_url}/models/{self.model_name}", "management", params=parameters
        )
        document = _json_or_error(response)
        return document[0] if isinstance(document, list) and document else document

    def get_metadata(self) -> dict[str, Any]:
        """Model name, version, input and output signature (from the handler), batching and worker states."""
        description = self.describe(customized=True)
        signature: dict[str, Any] = {}
        customized = description.get("customizedMetadata")
        if isinstance(customized, str):
            try:
                signature = json.loads(customized)
            except json.JSONDecodeError:
                signature = {}
        elif isinstance(customized, dict):
            signature = customized
        return {
            "server": "torchserve",
            "model_name": description.get("modelName", self.model_name),
            "model_version": description.get("modelVersion"),
            "signature_name": signature.get("signature_name"),
            "inputs": signature.get("inputs", {INPUT_NAME: {}}),
            "outputs": signature.get("outputs", {PROBABILITIES: {}, CLASSES: {}}),
            "batch_size": description.get("batchSize"),
            "max_batch_delay_ms": description.get("maxBatchDelay"),
            "workers": [
                {"id": worker.get("id"), "status": worker.get("status")} for worker in description.get("workers", [])
            ],
        }

    def is_available(self) -> bool:
        """True when the model's workers are READY: at least minWorkers of them (and at least one)."""
        try:
            description = self.describe()
        except (TorchServeError, ServerUnavailableError, ValueError):
            return False
        workers = description.get("workers", [])
        ready = sum(1 for worker in workers if worker.get("status") == READY)
        return ready >= max(1, int(description.get("minWorkers", 1)))

    def wait_until_available(self, timeout: float = 60.0) -> None:
        """Block until is_available(); TimeoutError after timeout seconds. (/ping says only that the JVM is up.)"""
        poll_until(
            lambda: None if self.is_available() else "workers not READY",
            timeout,
            lambda problem: f"TorchServe's {self.model_name!r} workers were not READY at {self.management_url} "
            f"within {timeout:g} s.",
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    def __enter__(self) -> "TorchServeClient":
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def _is_key_error(response: requests.Response) -> bool:
    """Whether TorchServe refused the request for its token (it answers InvalidKeyException, status 400 in 0.12)."""
    try:
        return response.json().get("type") == "InvalidKeyException"
    except (ValueError, AttributeError):
        return False


def _json_or_error(response: requests.Response) -> Any:
    """The decoded JSON of a 200 answer; otherwise TorchServeError with the server's message and status."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code == 200 and document is not None:
        return document
    message = None
    if isinstance(document, dict):
        # Our handler answers {"error": ...}; TorchServe itself answers {"code", "type", "message"}.
        message = document.get("error") or document.get("message")
    raise TorchServeError(message or f"TorchServe answered HTTP {response.status_code}.", response.status_code)
