"""TorchServe's inference and management REST APIs behind the common client interface.

Token authorization (TorchServe's default) is handled by `TorchServeKeys`, which reads the keys from the
key_file.json TorchServe writes into its working directory, reads it again whenever it changes (TorchServe rewrites
it when keys are regenerated), and renews an expired key through TorchServe's token API. The gRPC client
(`serving.clients.torchserve_grpc`) shares it, and the helpers that read a model description.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import requests

from experiment.json_types import JSONDict, JSONObject, JSONValue, as_array, as_object
from experiment.spec import CLASSES, INPUT_NAME, PROBABILITIES
from serving.clients import errors
from serving.clients.base import as_batch, poll_until
from serving.clients.errors import ServerUnavailableError, TorchServeError

READY = "READY"
# A query string's parameters, as requests encodes them.
QueryParameters = Mapping[str, str | int]
API_NAMES = ("inference", "management", "API")


class TorchServeKeys:
    """TorchServe's keys from key_file.json (none when key_file is None: token authorization off)."""

    def __init__(self, key_file: str | Path | None, management_url: str | None, timeout: float = 10.0) -> None:
        self.key_file = Path(key_file) if key_file is not None else None
        self.management_url = management_url.rstrip("/") if management_url else None
        self.timeout = timeout
        self._keys: dict[str, str] = {}
        self._stamp: tuple[float, int] | None = None

    def key(self, api: str) -> str | None:
        """The current key for 'inference', 'management' or 'API'; None without a key file (or before it exists)."""
        if self.key_file is None:
            return None
        try:
            stat = self.key_file.stat()
        except FileNotFoundError:
            return None  # TorchServe writes it shortly after starting
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            try:
                document = json.loads(self.key_file.read_text())
                self._keys = {name: document[name]["key"] for name in API_NAMES}
            except (OSError, ValueError, KeyError, TypeError):
                return None  # caught mid-write; the next call reads it again
            self._stamp = stamp
        return self._keys.get(api)

    def headers(self, api: str) -> dict[str, str]:
        """The Authorization header for an api's calls; empty when token authorization is off."""
        key = self.key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def renew(self, api: str) -> bool:
        """Ask TorchServe's token API for a new key (it rewrites key_file.json, which key() re-reads); True if asked.

        TorchServe's keys expire (60 minutes by default); the token API is REST only, on the management address.
        """
        api_key = self.key("API")
        if not api_key or self.management_url is None:
            return False
        try:
            requests.post(
                f"{self.management_url}/token",
                params={"type": api},
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=self.timeout,
            )
        except requests.RequestException:
            return False  # the caller's retry then fails with the server's own answer
        return True


def metadata_from_description(description: JSONObject, model_name: str) -> JSONDict:
    """The common metadata dict from a management API description (customized: the handler's signature)."""
    signature: JSONObject = {}
    customized = description.get("customizedMetadata")
    if isinstance(customized, str):
        try:
            signature = as_object(json.loads(customized))
        except json.JSONDecodeError:
            signature = {}
    elif isinstance(customized, Mapping):
        signature = customized
    return {
        "server": "torchserve",
        "model_name": description.get("modelName", model_name),
        "model_version": description.get("modelVersion"),
        "signature_name": signature.get("signature_name"),
        "format": signature.get("format"),  # the file the handler runs (onnx)
        "inputs": signature.get("inputs", {INPUT_NAME: {}}),
        "outputs": signature.get("outputs", {PROBABILITIES: {}, CLASSES: {}}),
        "batch_size": description.get("batchSize"),
        "max_batch_delay_ms": description.get("maxBatchDelay"),
        "workers": [
            {"id": worker.get("id"), "status": worker.get("status")}
            for worker in map(as_object, as_array(description.get("workers", [])))
        ],
    }


def workers_ready(description: JSONObject) -> bool:
    """Whether a described model version has at least minWorkers workers READY (and at least one)."""
    workers = map(as_object, as_array(description.get("workers", [])))
    ready = sum(1 for worker in workers if worker.get("status") == READY)
    minimum = description.get("minWorkers", 1)
    if not isinstance(minimum, int | float | str):
        raise ValueError(f"minWorkers {minimum!r} is not a number")
    return ready >= max(1, int(minimum))


def predictions_from_answer(document: JSONValue) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Probabilities (N, C) float32 and classes (N,) int64 from the handler's row-format answer.

    KeyError or TypeError when the answer has no rows of both outputs.
    """
    if not isinstance(document, Mapping):
        raise TypeError("the answer is not a JSON object")
    predictions = document["predictions"]
    if not isinstance(predictions, list):
        raise TypeError("'predictions' is not a list")
    rows = [row for row in predictions if isinstance(row, Mapping)]
    if len(rows) != len(predictions):
        raise TypeError("a row of 'predictions' is not an object")
    probabilities = np.asarray([row[PROBABILITIES] for row in rows], dtype=np.float32)
    classes = np.asarray([row[CLASSES] for row in rows], dtype=np.int64)
    return probabilities, classes


def first_description(document: JSONValue) -> JSONDict:
    """The management API answers a list with one description per version asked for; the first of them.

    ValueError when that is not a JSON object.
    """
    description = document[0] if isinstance(document, list) and document else document
    if not isinstance(description, dict):
        raise ValueError("the model description is not a JSON object")
    return description


class TorchServeClient:
    """Sends TensorFlow Serving's row-format body to POST /predictions/<model>[/<version>]; manages via REST.

    version None asks the model's default version, as TorchServe does without one in the path.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        model_name: str = "digits",
        key_file: str | Path | None = None,
        management_url: str = "http://127.0.0.1:8081",
        timeout: float = 10.0,
        version: str | int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.management_url = management_url.rstrip("/")
        self.timeout = timeout
        self.version = None if version is None else str(version)
        self.description = f"TorchServe (REST) at {self.base_url}"
        self.session = requests.Session()
        self.keys = TorchServeKeys(key_file, self.management_url, timeout)

    @property
    def key_file(self) -> Path | None:
        """TorchServe's key_file.json, or None when token authorization is off."""
        return self.keys.key_file

    def authorization_headers(self, api: str = "inference") -> dict[str, str]:
        """The Authorization header for 'inference' or 'management' calls; empty when token auth is off."""
        return self.keys.headers(api)

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], params: QueryParameters | None, data: str | None
    ) -> requests.Response:
        """One HTTP call; a server that cannot be reached becomes ServerUnavailableError naming its base URL."""
        try:
            return self.session.request(method, url, timeout=self.timeout, headers=headers, params=params, data=data)
        except requests.RequestException as error:
            management = url.startswith(self.management_url) and not url.startswith(self.base_url + "/predictions")
            description = f"TorchServe (management) at {self.management_url}" if management else self.description
            if isinstance(error, requests.Timeout):
                raise errors.timed_out(description, self.timeout) from None
            raise errors.unreachable(description) from None

    def _request(
        self,
        method: str,
        url: str,
        api: str,
        *,
        params: QueryParameters | None = None,
        data: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send with the current key; if TorchServe says it expired (60 min by default), renew it once and resend."""
        headers = headers or {}
        response = self._send(method, url, {**headers, **self.keys.headers(api)}, params, data)
        if response.status_code in (400, 401) and _is_key_error(response) and self.keys.renew(api):
            response = self._send(method, url, {**headers, **self.keys.headers(api)}, params, data)
        return response

    def _model_url(self, version: str | int | None) -> str:
        suffix = f"/{version}" if version is not None else ""
        return f"{self.management_url}/models/{self.model_name}{suffix}"

    # The common client interface ---------------------------------------------------------------------------

    def predict(self, images: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Probabilities (N, C) float32 and classes (N,) int64 for images (N, H, W) of raw pixel values."""
        body = json.dumps({"instances": as_batch(images).tolist()}, separators=(",", ":"))
        version = f"/{self.version}" if self.version is not None else ""
        response = self._request(
            "POST",
            f"{self.base_url}/predictions/{self.model_name}{version}",
            "inference",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            return predictions_from_answer(_json_or_error(response))
        except TorchServeError as error:
            status = response.status_code
            if _is_key_error(response) or status == 401:
                raise errors.key_refused(self.description, status, error.message) from None
            if status == 404:
                raise errors.unknown_model(
                    self.description, self.model_name, status, error.message, TorchServeError
                ) from None
            raise errors.refused(self.description, status, error.message, TorchServeError) from None

    def describe(self, customized: bool = False, version: str | int | None = None) -> JSONDict:
        """The management API's description of the model's default version, or of `version` (workers, batching).

        customized=True also asks the handler's describe_handle, whose signature arrives as customizedMetadata.
        """
        parameters = {"customized": "true"} if customized else None
        response = self._request("GET", self._model_url(version), "management", params=parameters)
        return first_description(_json_or_error(response))

    def get_metadata(self) -> JSONDict:
        """Model name, version, input and output signature (from the handler), batching and worker states."""
        return metadata_from_description(self.describe(customized=True, version=self.version), self.model_name)

    def is_available(self) -> bool:
        """True when the model's workers are READY: at least minWorkers of them (and at least one)."""
        try:
            return workers_ready(self.describe(version=self.version))
        except (TorchServeError, ServerUnavailableError, ValueError):
            return False

    def wait_until_available(self, timeout: float = 60.0) -> None:
        """Block until is_available(); TimeoutError after timeout seconds. (/ping says only that the JVM is up.)"""
        poll_until(
            lambda: None if self.is_available() else "workers not READY",
            timeout,
            lambda problem: (
                f"TorchServe's {self.model_name!r} workers were not READY at {self.management_url} "
                f"within {timeout:g} s."
            ),
        )

    # Versions through the management API (what the live roll-out uses) -----------------------------------------

    def list_versions(self) -> list[JSONDict]:
        """Every registered version's description (GET /models/<model>/all)."""
        response = self._request("GET", f"{self._model_url(None)}/all", "management")
        document = _json_or_error(response)
        descriptions = document if isinstance(document, list) else [document]
        return [description for description in descriptions if isinstance(description, dict)]

    def register(self, archive: str, batch_size: int | None = None, max_batch_delay_ms: int | None = None) -> None:
        """Register an archive of the model store as a version of this model, without waiting for its workers.

        Workers and batching come from the archive's own model config unless batch size or delay are given.
        """
        parameters: dict[str, str | int] = {"url": archive, "model_name": self.model_name, "synchronous": "false"}
        if batch_size is not None:
            parameters["batch_size"] = batch_size
        if max_batch_delay_ms is not None:
            parameters["max_batch_delay"] = max_batch_delay_ms
        _json_or_error(self._request("POST", f"{self.management_url}/models", "management", params=parameters))

    def scale_workers(self, version: str | int, workers: int) -> None:
        """Run exactly `workers` workers for a version (PUT /models/<model>/<version>?min_worker=&max_worker=)."""
        parameters = {"min_worker": workers, "max_worker": workers}
        _json_or_error(self._request("PUT", self._model_url(version), "management", params=parameters))

    def set_default(self, version: str | int) -> None:
        """Make a registered version the one /predictions/<model> answers with."""
        _json_or_error(self._request("PUT", f"{self._model_url(version)}/set-default", "management"))

    def unregister(self, version: str | int) -> None:
        """Unregister a version that is not the default (TorchServe refuses to remove the default one)."""
        _json_or_error(self._request("DELETE", self._model_url(version), "management"))

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def _is_key_error(response: requests.Response) -> bool:
    """Whether TorchServe refused the request for its token (it answers InvalidKeyException, status 400 in 0.12)."""
    try:
        document = response.json()
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("type") == "InvalidKeyException"


def _json_or_error(response: requests.Response) -> JSONValue:
    """The decoded JSON of a 2xx answer; otherwise TorchServeError with the server's message and status."""
    try:
        document: JSONValue = response.json()
    except ValueError:
        document = None
    if 200 <= response.status_code < 300 and document is not None:  # 202: registered, workers still starting
        return document
    message = None
    if isinstance(document, dict):
        # Our handler answers {"error": ...}; TorchServe itself answers {"code", "type", "message"}.
        found = document.get("error") or document.get("message")
        message = found if isinstance(found, str) else None
    raise TorchServeError(message or f"TorchServe answered HTTP {response.status_code}.", response.status_code)
