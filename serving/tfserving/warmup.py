"""Model warm-up as TensorFlow Serving does it: replay the requests stored with the model before serving it.

<version>/assets.extra/tf_serving_warmup_requests is a TFRecord file of PredictionLog messages (the real server's
format: predict, classify, regress or multi-inference logs, at most 1000). Each request runs once against the
freshly loaded version; the first one that fails fails the load with that request's error. A version without the
file loads without any warm-up call.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.protocol.errors import RequestError
from serving.protocol.tensors import tensor_to_array
from serving.tfserving import inference
from serving.tfserving.predictor import check_predict
from serving.tfserving.servable import Servable, Signature

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000
logger = logging.getLogger("serving.tfserving")


def _run(servable: Servable, signature: Signature, inputs, aliases):
    return signature.run(inputs, aliases)


def replay(servable: Servable, record: prediction_log_pb2.PredictionLog) -> None:
    """Run one logged request against servable; RequestError if it fails."""
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request = record.predict_log.request
        signature = servable.signature(request.model_spec.signature_name)
        # The model's own records: TensorFlow's rule for short typed fields applies, as in the real server.
        inputs = {alias: tensor_to_array(tensor, alias, fill=True) for alias, tensor in request.inputs.items()}
        signature.run(inputs, check_predict(signature, inputs, request.output_filter))
    elif kind == "classify_log":
        inference.classify(servable, record.classify_log.request, _run)
    elif kind == "regress_log":
        inference.regress(servable, record.regress_log.request, _run)
    elif kind == "multi_inference_log":
        inference.multi_inference(servable, record.multi_inference_log.request)
    elif kind is not None:
        field = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[kind]
        raise RequestError(f"Unsupported log_type for warmup: {field.number}", "UNIMPLEMENTED")


def run_warmup(servable: Servable) -> int:
    """Replay the version's warm-up file, if it has one; the number of records run."""
    path = servable.path / WARMUP_FILE
    if not path.is_file():
        logger.info("No warmup data file found at %s", path)
        return 0
    started, count = time.monotonic(), 0
    try:
        for tensor in tf.data.TFRecordDataset(str(path)):
            raw = tensor.numpy()
            record = prediction_log_pb2.PredictionLog()
            try:
                record.ParseFromString(raw)
            except Exception:  # noqa: BLE001 (protobuf's DecodeError, by any of its implementations' names)
                raise RequestError(f"Failed to parse warmup record: {raw[:50]!r} from {path}") from None
            replay(servable, record)
            count += 1
            if count > MAX_RECORDS:
                raise RequestError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
    except tf.errors.DataLossError as error:
        raise RequestError(
            f"{error.message}. Please verify your warmup data is in TFRecord format.", "DATA_LOSS"
        ) from None
    logger.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. Elapsed time: %.3f s.",
        path,
        count,
        time.monotonic() - started,
    )
    return count
