"""gRPC servicers: tensorflow.serving.PredictionService and ModelService on the official generated stubs."""

from __future__ import annotations

import logging
from typing import Callable

import grpc
from google.protobuf.message import Message
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.protocol.errors import RequestError
from serving.protocol.tensors import fill_tensor, tensor_to_array
from serving.tfserving.manager import ModelManager
from serving.tfserving.predictor import Predictor
from serving.versions import ModelSource

logger = logging.getLogger("serving.tfserving")
SIGNATURE_DEF_FIELD = "signature_def"


def _abort(context: grpc.ServicerContext, error: RequestError) -> None:
    context.abort(grpc.StatusCode[error.code], error.message)


def _abort_internal(context: grpc.ServicerContext, method: str) -> None:
    # Anything unexpected is logged with its traceback here and answered INTERNAL; the server keeps running.
    logger.exception("%s failed unexpectedly.", method)
    context.abort(grpc.StatusCode.INTERNAL, f"{method} failed inside the server; see the server log.")


def _answer(context: grpc.ServicerContext, method: str, build: Callable[[], Message]) -> Message:
    """build()'s response; a RequestError aborts with its status, anything else with INTERNAL."""
    try:
        return build()
    except RequestError as error:
        _abort(context, error)
    except Exception:
        _abort_internal(context, method)


def _version_of(model_spec) -> tuple[int | None, str | None]:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return model_spec.version.value, None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def build_metadata_response(predictor: Predictor, request: get_model_metadata_pb2.GetModelMetadataRequest):
    """GetModelMetadata's answer (shared with the REST metadata route); raises RequestError."""
    if not request.HasField("model_spec"):
        raise RequestError("Missing ModelSpec.")
    if not request.metadata_field:
        raise RequestError("GetModelMetadataRequest must specify at least one metadata_field.")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise RequestError(f"Metadata field {field} is not supported; only signature_def is.")
    version, label = _version_of(request.model_spec)
    servable = predictor.manager.servable(request.model_spec.name, version, label)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_defs.signature_def[name].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.model_name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
    return response


def build_status_response(manager: ModelManager, request: get_model_status_pb2.GetModelStatusRequest):
    """GetModelStatus's answer (shared with the REST status route); raises RequestError."""
    if not request.HasField("model_spec"):
        raise RequestError("Missing ModelSpec.")
    version, label = _version_of(request.model_spec)
    if label is not None:
        version = manager.servable(request.model_spec.name, label=label).version
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.statuses(request.model_spec.name, version):
        response.model_version_status.add(
            version=status.version,
            state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state),
            status=status_pb2.StatusProto(
                error_code=error_codes_pb2.Code.Value(status.error_code),
                error_message=status.error_message,
            ),
        )
    return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        """Run the named signature on the request's input tensors."""
        try:
            if not request.HasField("model_spec"):
                raise RequestError("Missing ModelSpec.")
            model_spec = request.model_spec
            version, label = _version_of(model_spec)
            servable, signature = self.predictor.resolve(model_spec.name, version, label, model_spec.signature_name)
            inputs = {alias: tensor_to_array(tensor, alias) for alias, tensor in request.inputs.items()}
            outputs = self.predictor.predict(
                servable, signature, inputs, request.output_filter, timeout_s=context.time_remaining()
            )
        except RequestError as error:
            _abort(context, error)
        except Exception:
            _abort_internal(context, "Predict")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.model_name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for alias, array in outputs.items():
            fill_tensor(response.outputs[alias], array)
        return response

    def GetModelMetadata(self, request, context: grpc.ServicerContext):
        """The signature_def map of the version asked for (the latest by default)."""
        return _answer(context, "GetModelMetadata", lambda: build_metadata_response(self.predictor, request))

    def _unimplemented(self, method: str, context: grpc.ServicerContext) -> None:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{method} is not implemented by this TensorFlow Serving–compatible server; use Predict.",
        )

    def Classify(self, request, context: grpc.ServicerContext):
        """Not implemented: the digits model has no Example-based classification signature."""
        self._unimplemented("Classify", context)

    def Regress(self, request, context: grpc.ServicerContext):
        """Not implemented: the digits model has no regression signature."""
        self._unimplemented("Regress", context)

    def MultiInference(self, request, context: grpc.ServicerContext):
        """Not implemented (it combines Classify and Regress)."""
        self._unimplemented("MultiInference", context)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest to replace the served model list."""

    def __init__(
        self,
        manager: ModelManager,
        sources_from_config: Callable[[model_server_config_pb2.ModelServerConfig], list[ModelSource]],
    ) -> None:
        self.manager = manager
        self.sources_from_config = sources_from_config

    def GetModelStatus(self, request, context: grpc.ServicerContext):
        """States of one model's versions (START, LOADING, AVAILABLE, UNLOADING, END) with load errors."""
        return _answer(context, "GetModelStatus", lambda: build_status_response(self.manager, request))

    def HandleReloadConfigRequest(self, request, context: grpc.ServicerContext):
        """Serve the models of request.config from now on (as tensorflow_model_server does)."""
        try:
            sources = self.sources_from_config(request.config)
        except Exception as error:  # UsageError or RequestError: a sentence about the config
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self.manager.reconfigure(sources)
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())
