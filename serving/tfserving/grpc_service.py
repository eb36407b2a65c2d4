"""gRPC servicers: tensorflow.serving.PredictionService and ModelService on the official generated stubs.

Every method of the real server: Predict, Classify, Regress, MultiInference and GetModelMetadata; GetModelStatus
and HandleReloadConfigRequest. Answers carry what the real server's do (Predict's outputs in the typed fields,
float_val and friends; the model spec of the version that answered); refusals carry its status codes and words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

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

from experiment.errors import UsageError
from serving.protocol.errors import RequestError
from serving.protocol.tensors import fill_tensor_fields, tensors_to_arrays
from serving.tfserving import inference
from serving.tfserving.config import check_reload_base_paths
from serving.tfserving.manager import LabelError, ModelManager
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
    except Exception:  # noqa: BLE001 (anything else is INTERNAL with one sentence, never a dropped call)
        _abort_internal(context, method)


def version_of(model_spec) -> tuple[int | None, str | None]:
    """(version, label) of a ModelSpec: at most one of them is set."""
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return model_spec.version.value, None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def _servable_for(predictor: Predictor, request):
    """The version a request's model spec names; INVALID_ARGUMENT "Missing ModelSpec" without one."""
    if not request.HasField("model_spec"):
        raise RequestError("Missing ModelSpec")
    version, label = version_of(request.model_spec)
    return predictor.servable(request.model_spec.name, version, label)


def build_metadata_response(predictor: Predictor, request: get_model_metadata_pb2.GetModelMetadataRequest):
    """GetModelMetadata's answer (shared with the REST metadata route); raises RequestError."""
    if not request.HasField("model_spec"):
        raise RequestError("Missing ModelSpec")
    if not request.metadata_field:
        raise RequestError("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise RequestError(f"Metadata field {field} is not supported")
    servable = _servable_for(predictor, request)
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
        raise RequestError("Missing ModelSpec")
    version, label = version_of(request.model_spec)
    if label is not None:
        version = manager.version_for_label(request.model_spec.name, label)
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


def run_predict(predictor: Predictor, request: predict_pb2.PredictRequest, timeout_s: float | None = None):
    """Predict's answer, outputs in the typed fields as the real server writes them; raises RequestError."""
    servable = _servable_for(predictor, request)
    signature = servable.signature(request.model_spec.signature_name)
    # Shapes and value counts are checked before anything is allocated: a few bytes never become gigabytes.
    inputs = tensors_to_arrays(request.inputs)
    outputs = predictor.predict(servable, signature, inputs, request.output_filter, timeout_s)
    response = predict_pb2.PredictResponse()
    inference.fill_model_spec(response.model_spec, request.model_spec.name, signature.name, servable.version)
    for alias, array in outputs.items():
        fill_tensor_fields(response.outputs[alias], array)
    return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def _runner(self, context: grpc.ServicerContext) -> inference.Runner:
        timeout_s = context.time_remaining()
        return lambda servable, signature, inputs, aliases: self.predictor.run_signature(
            servable, signature, inputs, aliases, timeout_s
        )

    def Predict(self, request, context: grpc.ServicerContext):
        """Run the named signature on the request's input tensors."""
        return _answer(context, "Predict", lambda: run_predict(self.predictor, request, context.time_remaining()))

    def Classify(self, request, context: grpc.ServicerContext):
        """Run a classify signature on the request's tf.Examples."""
        return _answer(
            context,
            "Classify",
            lambda: inference.classify(_servable_for(self.predictor, request), request, self._runner(context)),
        )

    def Regress(self, request, context: grpc.ServicerContext):
        """Run a regress signature on the request's tf.Examples."""
        return _answer(
            context,
            "Regress",
            lambda: inference.regress(_servable_for(self.predictor, request), request, self._runner(context)),
        )

    def MultiInference(self, request, context: grpc.ServicerContext):
        """Run several classify/regress signatures of one model on the same tf.Examples."""

        def build():
            first = request.tasks[0].model_spec if request.tasks else None
            version, label = version_of(first) if first is not None else (None, None)
            servable = self.predictor.servable(first.name if first is not None else "", version, label)
            return inference.multi_inference(servable, request)

        return _answer(context, "MultiInference", build)

    def GetModelMetadata(self, request, context: grpc.ServicerContext):
        """The signature_def map of the version asked for (the latest by default)."""
        return _answer(context, "GetModelMetadata", lambda: build_metadata_response(self.predictor, request))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest to replace the served model list."""

    def __init__(
        self,
        manager: ModelManager,
        sources_from_config: Callable[[model_server_config_pb2.ModelServerConfig], list[ModelSource]],
        allowed_roots: tuple[Path, ...],
    ) -> None:
        self.manager = manager
        self.sources_from_config = sources_from_config
        self.allowed_roots = allowed_roots

    def GetModelStatus(self, request, context: grpc.ServicerContext):
        """States of one model's versions (START, LOADING, AVAILABLE, UNLOADING, END) with load errors."""
        return _answer(context, "GetModelStatus", lambda: build_status_response(self.manager, request))

    def HandleReloadConfigRequest(self, request, context: grpc.ServicerContext):
        """Serve the models of request.config from now on (as tensorflow_model_server does), if every base path
        lies under an allowed root; models the config leaves out are unloaded, as the real server does."""

        def build():
            try:
                check_reload_base_paths(request.config, self.allowed_roots)
                sources = self.sources_from_config(request.config)
                self.manager.reconfigure(sources)
            except LabelError as error:
                raise RequestError(str(error), "FAILED_PRECONDITION") from None
            except UsageError as error:  # a sentence about the config
                raise RequestError(str(error)) from None
            return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())

        return _answer(context, "HandleReloadConfigRequest", build)
