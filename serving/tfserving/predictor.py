"""The predict path shared by gRPC and REST: find the servable and signature, check inputs, run (batched or not)."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from serving.protocol.errors import RequestError
from serving.tfserving.batching import BatchScheduler
from serving.tfserving.manager import ModelManager
from serving.tfserving.servable import Servable, Signature


class Predictor:
    """Resolves requests against the ModelManager and runs them, through the batch scheduler when enabled."""

    def __init__(self, manager: ModelManager, scheduler: BatchScheduler | None = None) -> None:
        self.manager = manager
        self.scheduler = scheduler

    def resolve(
        self, model_name: str, version: int | None, label: str | None, signature_name: str | None
    ) -> tuple[Servable, Signature]:
        """The servable and signature a request names; NOT_FOUND / FAILED_PRECONDITION when absent."""
        if not model_name:
            raise RequestError("The model spec names no model.", "INVALID_ARGUMENT")
        servable = self.manager.servable(model_name, version, label)
        return servable, servable.signature(signature_name)

    def predict(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_filter: Iterable[str] = (),
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Check the inputs against the signature and return the chosen outputs."""
        rows = signature.check_inputs(inputs)
        output_aliases = signature.check_output_filter(output_filter)
        if self.scheduler is None:
            return signature.run(inputs, output_aliases)
        return self.scheduler.run(servable, signature, inputs, rows, output_aliases, timeout_s)
