"""TorchServe handler for the exported TorchScript model: TensorFlow Serving's JSON body in, its row format out.

TorchServe copies this file alone into the .mar, so it imports only torch, numpy and TorchServe itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

INPUT_NAME = "images"


class DigitsHandler(BaseHandler):
    """Parses {"instances": [...]} or {"inputs": ...}, runs the TorchScript model, answers per request."""

    def initialize(self, context: Any) -> None:
        super().initialize(context)  # loads the TorchScript file named in the manifest
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "metadata.json")) as stream:
            self.input_shape = tuple(json.load(stream)["network"]["input_shape"])
        self.request_sizes: list[int] = []

    def _images_of(self, body: Any) -> np.ndarray:
        if isinstance(body, (bytes, bytearray)):
            try:
                body = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise PredictionException("The request body is not valid JSON.", 400) from None
        if not isinstance(body, dict):
            raise PredictionException('The request body must be a JSON object with "instances" or "inputs".', 400)
        if "instances" in body:
            values = body["instances"]
        elif "inputs" in body:
            values = body["inputs"]
            if isinstance(values, dict):
                if INPUT_NAME not in values:
                    raise PredictionException(f'"inputs" must name the input "{INPUT_NAME}".', 400)
                values = values[INPUT_NAME]
        else:
            raise PredictionException('The request body must have "instances" or "inputs".', 400)
        try:
            images = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise PredictionException("The images must be numbers in equally long nested lists.", 400) from None
        if images.ndim != 3 or images.shape[1:] != self.input_shape or len(images) == 0:
            expected = "[N, " + ", ".join(str(size) for size in self.input_shape) + "]"
            raise PredictionException(f"The images have shape {list(images.shape)}; expected {expected} with N ≥ 1.", 400)
        if not np.isfinite(images).all():
            raise PredictionException("The images contain NaN or infinity.", 400)
        return images

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """One tensor (sum of N, H, W) from every request in the batch; remember each request's size."""
        batches = [self._images_of(request.get("body") or request.get("data")) for request in data]
        self.request_sizes = [len(images) for images in batches]
        return torch.from_numpy(np.concatenate(batches))

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Split the batch back per request, each answered as {"predictions": [{probabilities, classes}, ...]}."""
        probabilities = data["probabilities"].tolist()
        classes = data["classes"].tolist()
        responses, start = [], 0
        for size in self.request_sizes:
            rows = [
                {"probabilities": probabilities[index], "classes": classes[index]} for index in range(start, start + size)
            ]
            responses.append({"predictions": rows})
            start += size
        return responses
