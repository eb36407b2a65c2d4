"""What every client offers, and the small pieces the clients share (batch shaping, waiting for a model)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from experiment.json_types import JSONDict
from serving.clients.errors import ServingError

DEFAULT_TIMEOUT_S = 10.0
POLL_SECONDS = 0.2


class PredictionClient(Protocol):
    """What every client offers, whichever server it talks to."""

    description: str
    model_name: str

    def predict(self, images: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """images (N, H, W) float32 → probabilities (N, C) float32, classes (N,) int64."""

    def get_metadata(self) -> JSONDict:
        """The server's description of the model (signature, versions)."""

    def wait_until_available(self, timeout: float) -> None:
        """Block until the model answers; TimeoutError naming the server otherwise."""

    def close(self) -> None:
        """Release connections."""


def as_batch(images: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """images as a contiguous float32 batch: one (H, W) image becomes (1, H, W)."""
    images = np.asarray(images, dtype=np.float32)
    return images[np.newaxis] if images.ndim == 2 else np.ascontiguousarray(images)


def poll_until(check: Callable[[], str | None], timeout: float, failure: Callable[[str], str]) -> None:
    """Call check() until it returns None (ready); otherwise it returns what is missing, which failure() words.

    A ServingError raised by check counts as "not yet" and its sentence becomes the reason; after timeout seconds,
    TimeoutError(failure(last reason)).
    """
    deadline = time.monotonic() + timeout
    last_problem = "no answer yet"
    while True:
        try:
            problem = check()
            if problem is None:
                return
            last_problem = problem
        except ServingError as error:
            last_problem = str(error)
        if time.monotonic() >= deadline:
            raise TimeoutError(failure(last_problem))
        time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))


def wait_for_available_version(client: VersionedClient, timeout: float) -> None:
    """Poll client.get_status() (TF Serving's model status) until a version is AVAILABLE."""

    def check() -> str | None:
        if any(status.get("state") == "AVAILABLE" for status in client.get_status()):
            return None
        return "no version is AVAILABLE yet"

    poll_until(
        check,
        timeout,
        lambda problem: (
            f"{client.description} did not have model '{client.model_name}' available within {timeout:g} s ({problem})."
        ),
    )


class VersionedClient(Protocol):
    """A client of TensorFlow Serving's API, which reports each version's state."""

    description: str
    model_name: str

    def get_status(self) -> list[JSONDict]:
        """One dict per version (version, state, status)."""
