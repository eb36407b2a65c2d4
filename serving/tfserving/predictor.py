"""Predict as TensorFlow Serving runs it, shared by gRPC, REST and the warm-up: find the version, check, run.

The checks are the real server's (its predict_util.cc), in its order and words: a signature method it can call,
exactly the signature's inputs, output aliases that exist and repeat none. Shapes and dtypes are left to the graph.
With --enable_batching every signature call goes through the batch scheduler, which (as the real server's batching
session) needs inputs with a batch dimension of equal size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np

from serving.protocol.errors import RequestError, quoted
from serving.tfserving.batching import BatchScheduler
from serving.tfserving.servable import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Servable,
    Signature,
    method_name_check,
)

CALLABLE_METHODS = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)


# The model manager, as the predictor sees it. Named by its one method, not imported: the manager imports this
# module (through the warm-up), and a type-only import back would close a cycle.
class Servables(Protocol):
    """Finds the servable version a model spec names."""

    def servable(self, model_name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The version a model spec names."""
        ...


def check_predict(
    signature: Signature, inputs: Mapping[str, np.ndarray], output_filter: Iterable[str]
) -> tuple[str, ...]:
    """The output aliases a Predict on signature returns; RequestError for what the real server refuses."""
    definition = signature.definition
    if method_name_check() and definition.method_name not in CALLABLE_METHODS:
        raise RequestError(
            "Expected prediction signature method_name to be one of {" + ", ".join(CALLABLE_METHODS) + "}. "
            f"Was: {definition.method_name}",
            "INTERNAL",
        )
    expected, sent = signature.inputs, sorted(inputs)
    if len(sent) != len(expected):
        extra, missing = sorted(set(sent) - set(expected)), sorted(set(expected) - set(sent))
        raise RequestError(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{quoted(','.join(sent))}}}) != "
            f"len({{{','.join(expected)}}}). Sent extra: {{{quoted(','.join(extra))}}}. "
            f"Missing but required: {{{','.join(missing)}}}."
        )
    for alias in sent:
        if alias not in expected:
            raise RequestError(
                f"input tensor alias not found in signature: {quoted(alias)}. "
                f"Inputs expected to be in the set {{{','.join(expected)}}}."
            )
    chosen: list[str] = []
    for alias in output_filter:
        if alias not in definition.outputs:
            raise RequestError(
                f"output tensor alias not found in signature: {quoted(alias)} "
                f"Outputs expected to be in the set {{{','.join(sorted(definition.outputs))}}}."
            )
        if alias in chosen:
            raise RequestError(f"duplicate output tensor alias: {quoted(alias)}")
        chosen.append(alias)
    return tuple(chosen) or signature.outputs


def batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The shared 0th dimension of the inputs, which batching needs (the real batching session's words otherwise)."""
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise RequestError("Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise RequestError("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop() if sizes else 0


class Predictor:
    """Resolves model specs against the ModelManager and runs signatures, through the batch scheduler when enabled."""

    def __init__(self, manager: Servables, scheduler: BatchScheduler | None = None) -> None:
        self.manager = manager
        self.scheduler = scheduler

    def servable(self, model_name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The version a model spec names (INVALID_ARGUMENT / NOT_FOUND in the real server's words)."""
        return self.manager.servable(model_name, version, label)

    def resolve(
        self, model_name: str, version: int | None, label: str | None, signature_name: str | None
    ) -> tuple[Servable, Signature]:
        """The servable and signature a Predict names."""
        servable = self.servable(model_name, version, label)
        return servable, servable.signature(signature_name)

    def run_signature(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: tuple[str, ...],
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One call of signature, merged with concurrent ones when batching is on."""
        if self.scheduler is None:
            return signature.run(inputs, output_aliases, timeout_s)
        rows = batch_size(inputs)
        return self.scheduler.run(servable, signature, inputs, rows, output_aliases, timeout_s)

    def predict(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_filter: Iterable[str] = (),
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Check the request as the real server does and return the chosen outputs by alias."""
        output_aliases = check_predict(signature, inputs, output_filter)
        return self.run_signature(servable, signature, inputs, output_aliases, timeout_s)
