"""TorchServe handler for the exported ONNX model, run by ONNX Runtime: TensorFlow Serving's JSON body in, the same out.

The body is parsed and answered by serving.protocol, the same code the other servers use: torch-model-archiver packs
that package into the .mar beside this file (see torch_pipeline.export), so inside TorchServe's model folder
`serving.protocol` is the archive's own copy. Nothing else from the repository travels with the handler.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from serving.protocol import rest
from serving.protocol.errors import RequestError
from serving.protocol.signatures import TensorSpec, classifier_signature, require_signature

# The serving signature (experiment.spec); repeated here because experiment/ does not travel inside the .mar.
INPUT_NAME = "images"
PROBABILITIES = "probabilities"
CLASSES = "classes"
SIGNATURE_NAME = "serving_default"
JSON_CONTENT_TYPE = "application/json"
LOADED_VERSION_METRIC = "ModelVersionLoaded"
BAD_REQUEST = 400
REASON_PHRASES = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}
MODEL_FORMAT = "onnx"  # the archive's serialized file is model.onnx (torch_pipeline.export)


class DigitsHandler(BaseHandler):
    """Parses {"instances": [...]} or {"inputs": ...}, runs the ONNX model, answers each request separately.

    With server-side batching, one call carries several HTTP requests; a malformed one is answered 400 on its own
    (context.set_response_status per request index) while the others in the batch still get their predictions.
    """

    def initialize(self, context: Any) -> None:
        """Open the manifest's model.onnx in ONNX Runtime and read the input shape from metadata.json.

        BaseHandler.initialize is not called: for a .onnx file it opens its own session with one intra-op thread per
        core, which TorchServe's several worker processes would oversubscribe; everything else it sets up (devices,
        TorchScript, torch.compile) does not apply to an ONNX model on the CPU.
        """
        self.context = context
        self.manifest = context.manifest
        self.map_location = "cpu"
        model_dir = context.system_properties.get("model_dir")
        self.model_pt_path = os.path.join(model_dir, self.manifest["model"]["serializedFile"])
        options = onnxruntime.SessionOptions()
        # One intra-op thread per worker, as the Flask workers have (measured by make compare).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.model = onnxruntime.InferenceSession(self.model_pt_path, options, providers=["CPUExecutionProvider"])
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "metadata.json")) as stream:
            network = json.load(stream)["network"]
        self.input_shape = tuple(int(size) for size in network["input_shape"])  # (H, W)
        self.signature = classifier_signature(
            SIGNATURE_NAME, INPUT_NAME, self.input_shape, PROBABILITIES, CLASSES, int(network["num_classes"])
        )
        # Per call: (row_format, instance count) for a valid request, or the error message for a refused one.
        self.request_plans: list[tuple[bool, int] | str] = []
        self._report_loaded_version(context)
        self.initialized = True

    @staticmethod
    def _report_loaded_version(context: Any) -> None:
        """Set the ModelVersionLoaded gauge to this archive's version (TorchServe has no such series of its own).

        Each worker sets it when it loads its model; a roll-out starts the new version's workers last, so once it
        is done the gauge names the version that answers. TorchServe exposes it on its metrics port when
        model_metrics_auto_detect is on (serving/torchserve/config.properties).
        """
        from ts.metrics.metric_type_enum import MetricTypes

        try:
            version = float(context.manifest["model"]["modelVersion"])
        except (KeyError, TypeError, ValueError):
            return  # a version that is not a number has no gauge value
        context.metrics.add_metric(LOADED_VERSION_METRIC, version, "version", metric_type=MetricTypes.GAUGE)

    def parse_request(self, body: Any) -> tuple[np.ndarray, bool]:
        """One body → (images float32 (N, H, W), row_format); any failure to read it raises PredictionException 4xx.

        Whatever a body makes the parser raise (its RequestError, or anything its own bounds did not foresee) is this
        request's mistake alone: it becomes a 400 here, so that it can never escape into TorchServe and fail the
        whole batch with 503.
        """
        try:
            if isinstance(body, (bytes, bytearray)):
                body = rest.load_json(body)
            parsed = rest.parse_predict_body(
                body, self.signature.inputs, allow_non_finite=False, max_batch_size=rest.MAX_BATCH_SIZE
            )
            require_signature(parsed.signature_name, self.signature.name)
        except RequestError as error:
            raise PredictionException(error.message, error.http_status) from None
        except Exception:  # noqa: BLE001 - the handler boundary: nothing from one body may fail its batch
            raise PredictionException(rest.UNREADABLE_BODY, BAD_REQUEST) from None
        return parsed.inputs[INPUT_NAME], parsed.row_format

    def preprocess(self, data: list[dict[str, Any]]) -> np.ndarray:
        """Every valid request's images in one tensor (total N, H, W); refused requests are remembered by index."""
        self.request_plans = []
        batches = []
        for index, request in enumerate(data):
            body = request.get("body", request.get("data"))
            try:
                images, row_format = self.parse_request(body)
            except PredictionException as error:
                # Answer this request alone with the error; raising would fail every request in the batch.
                self.context.set_response_status(
                    error.error_code, REASON_PHRASES.get(error.error_code, "Bad Request"), index
                )
                self.request_plans.append(error.message)
                continue
            batches.append(images)
            self.request_plans.append((row_format, len(images)))
        if not batches:
            return np.empty((0, *self.input_shape), dtype=np.float32)
        return np.concatenate(batches)

    def inference(self, data: np.ndarray, *args: Any, **kwargs: Any) -> dict[str, np.ndarray] | None:
        """Run the ONNX model on the whole batch (total N, H, W); None when every request was refused."""
        if data.shape[0] == 0:
            return None
        names = list(self.signature.outputs)
        return dict(zip(names, self.model.run(names, {INPUT_NAME: data}), strict=True))

    def postprocess(self, data: dict[str, np.ndarray] | None) -> list[str]:
        """Split the batch back per request: row or columnar answer as the request was sent, or {"error": ...}."""
        # (total N, C) probabilities and (total N,) classes of every valid request, in request order.
        outputs = dict(data) if data is not None else {}
        responses, start = [], 0
        for index, plan in enumerate(self.request_plans):
            self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
            if isinstance(plan, str):
                responses.append(rest.dumps({"error": plan}))
                continue
            row_format, size = plan
            stop = start + size
            rows = {name: array[start:stop] for name, array in outputs.items()}
            answer = rest.format_predict_response(rows, row_format)
            # A compact string: TorchServe would pretty-print a dict, tripling the bytes on the wire.
            responses.append(rest.dumps(answer))
            start = stop
        return responses

    def describe_handle(self) -> str:
        """The signature, answered by the management API's `GET /models/<name>?customized=true`."""

        def describe(spec: TensorSpec) -> dict[str, Any]:
            return {"dtype": np.dtype(spec.dtype).name, "shape": [-1 if size is None else size for size in spec.shape]}

        return json.dumps(
            {
                "signature_name": self.signature.name,
                "format": MODEL_FORMAT,
                "inputs": {alias: describe(spec) for alias, spec in self.signature.inputs.items()},
                "outputs": {alias: describe(spec) for alias, spec in self.signature.outputs.items()},
            }
        )
