"""TorchServe handler for the exported TorchScript model: TensorFlow Serving's JSON body in, the same body format out.

TorchServe copies this file alone into the .mar, so it imports only torch, numpy, TorchServe and the standard library.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

# The serving signature (experiment.spec); repeated here because the handler travels alone inside the .mar.
INPUT_NAME = "images"
PROBABILITIES = "probabilities"
CLASSES = "classes"
SIGNATURE_NAME = "serving_default"
JSON_CONTENT_TYPE = "application/json"


class DigitsHandler(BaseHandler):
    """Parses {"instances": [...]} or {"inputs": ...}, runs the TorchScript model, answers each request separately.

    With server-side batching, one call carries several HTTP requests; a malformed one is answered 400 on its own
    (context.set_response_status per request index) while the others in the batch still get their predictions.
    """

    def initialize(self, context: Any) -> None:
        """Load the TorchScript file named in the manifest and the input shape from metadata.json."""
        # One intra-op thread per worker, as the Flask workers have: TorchServe runs several worker processes, and
        # torch's default of one thread per core in each oversubscribes the cores (measured by make compare).
        torch.set_num_threads(1)
        super().initialize(context)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "metadata.json")) as stream:
            network = json.load(stream)["network"]
        self.input_shape = tuple(int(size) for size in network["input_shape"])  # (H, W)
        self.num_classes = int(network["num_classes"])
        # Per call: (row_format, instance count) for a valid request, or the error message for a refused one.
        self.request_plans: list[tuple[bool, int] | str] = []

    def parse_request(self, body: Any) -> tuple[np.ndarray, bool]:
        """One body → (images float32 (N, H, W), row_format); a client mistake raises PredictionException 400."""
        if isinstance(body, (bytes, bytearray)):
            try:
                body = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise PredictionException(f"The request body is not valid JSON: {error}.", 400) from None
        if not isinstance(body, dict):
            raise PredictionException('The request body must be a JSON object with "instances" or "inputs".', 400)
        if ("instances" in body) == ("inputs" in body):
            raise PredictionException(
                'The request body must have exactly one of "instances" (row format) or "inputs" (columnar).', 400
            )
        signature_name = body.get("signature_name", SIGNATURE_NAME)
        if signature_name != SIGNATURE_NAME:
            raise PredictionException(
                f"Unknown signature {signature_name!r}; this model has only {SIGNATURE_NAME!r}.", 400
            )
        row_format = "instances" in body
        values = self._row_values(body["instances"]) if row_format else self._columnar_values(body["inputs"])
        return self._to_images(values), row_format

    @staticmethod
    def _row_values(instances: Any) -> Any:
        if not isinstance(instances, list):
            raise PredictionException('"instances" must be a list with one entry per example.', 400)
        if instances and all(isinstance(instance, dict) for instance in instances):
            if any(set(instance) != {INPUT_NAME} for instance in instances):
                raise PredictionException(f'Each instance object must have exactly one key, "{INPUT_NAME}".', 400)
            return [instance[INPUT_NAME] for instance in instances]
        if any(isinstance(instance, dict) for instance in instances):
            raise PredictionException("Instances must all be objects or all be values, not a mix.", 400)
        return instances

    @staticmethod
    def _columnar_values(inputs: Any) -> Any:
        if isinstance(inputs, dict):
            if set(inputs) != {INPUT_NAME}:
                raise PredictionException(f'"inputs" must name exactly one input, "{INPUT_NAME}".', 400)
            return inputs[INPUT_NAME]
        return inputs

    def _to_images(self, values: Any) -> np.ndarray:
        expected = "float32 [N, " + ", ".join(str(size) for size in self.input_shape) + "]"
        try:
            array = np.asarray(values)
        except ValueError:
            raise PredictionException(
                f"Input '{INPUT_NAME}' is ragged: expected nested lists of {expected}.", 400
            ) from None
        if array.dtype.kind not in "iuf":
            raise PredictionException(
                f"Input '{INPUT_NAME}' must hold only numbers in nested lists of {expected}.", 400
            )
        if array.ndim != 1 + len(self.input_shape) or array.shape[1:] != self.input_shape:
            raise PredictionException(
                f"Input '{INPUT_NAME}' has shape {list(array.shape)} but the model expects {expected}.", 400
            )
        if array.shape[0] == 0:
            raise PredictionException(f"Input '{INPUT_NAME}' is an empty batch; send at least one instance.", 400)
        images = array.astype(np.float32, copy=False)
        if not np.isfinite(images).all():  # after the cast, so values beyond float32's range count too
            raise PredictionException(f"Input '{INPUT_NAME}' contains NaN or infinity.", 400)
        return images

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """Every valid request's images in one tensor (total N, H, W); refused requests are remembered by index."""
        self.request_plans = []
        batches = []
        for index, request in enumerate(data):
            body = request.get("body", request.get("data"))
            try:
                images, row_format = self.parse_request(body)
            except PredictionException as error:
                # Answer this request alone with the error; raising would fail every request in the batch.
                self.context.set_response_status(error.error_code, "Bad Request", index)
                self.request_plans.append(error.message)
                continue
            batches.append(images)
            self.request_plans.append((row_format, len(images)))
        if not batches:
            return torch.empty((0, *self.input_shape), dtype=torch.float32)
        return torch.from_numpy(np.concatenate(batches))

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor] | None:
        """Run the TorchScript model on the whole batch; None when every request was refused."""
        if data.shape[0] == 0:
            return None
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data: dict[str, torch.Tensor] | None) -> list[str]:
        """Split the batch back per request: row or columnar answer as the request was sent, or {"error": ...}."""
        probabilities = data[PROBABILITIES].tolist() if data is not None else []  # (total N, C)
        classes = data[CLASSES].tolist() if data is not None else []  # (total N,)
        responses, start = [], 0
        for index, plan in enumerate(self.request_plans):
            self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
            if isinstance(plan, str):
                responses.append(json.dumps({"error": plan}))
                continue
            row_format, size = plan
            stop = start + size
            if row_format:
                answer: dict[str, Any] = {
                    "predictions": [
                        {PROBABILITIES: probabilities[row], CLASSES: classes[row]} for row in range(start, stop)
                    ]
                }
            else:
                answer = {"outputs": {PROBABILITIES: probabilities[start:stop], CLASSES: classes[start:stop]}}
            # A compact string: TorchServe would pretty-print a dict, tripling the bytes on the wire.
            responses.append(json.dumps(answer, separators=(",", ":")))
            start = stop
        return responses

    def describe_handle(self) -> str:
        """The signature, answered by the management API's `GET /models/<name>?customized=true`."""
        return json.dumps(
            {
                "signature_name": SIGNATURE_NAME,
                "inputs": {INPUT_NAME: {"dtype": "float32", "shape": [-1, *self.input_shape]}},
                "outputs": {
                    PROBABILITIES: {"dtype": "float32", "shape": [-1, self.num_classes]},
                    CLASSES: {"dtype": "int64", "shape": [-1]},
                },
            }
        )
