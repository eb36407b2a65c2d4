"""Classify, Regress and MultiInference as TensorFlow Serving runs them: tf.Examples in, results out.

The request's Input (a list of Examples, optionally sharing a context) becomes one DT_STRING tensor of serialized
Examples fed to the signature's "inputs" tensor; the model parses them itself. A classify signature returns
"classes" and/or "scores" of shape [batch, num_classes]; a regress signature "outputs" of shape [batch] or
[batch, 1]. The checks and their words are the real server's (classifier.cc, regressor.cc, multi_inference.cc);
the signature's method_name is checked only with --enable_signature_method_name_check, as there, so the
signatures of TF2 SavedModels (all written with the predict method name) serve Classify and Regress.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, model_pb2, regression_pb2

from serving.protocol.errors import RequestError, quoted
from serving.protocol.tensors import DTYPE_BY_NUMPY
from serving.tfserving.servable import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    Servable,
    Signature,
    method_name_check,
)

# (servable, signature, inputs by alias, output aliases) → outputs by alias: Predictor.run_signature.
Runner = Callable[[Servable, Signature, Mapping[str, np.ndarray], tuple[str, ...]], dict[str, np.ndarray]]
INPUTS, CLASSES, SCORES, OUTPUTS = "inputs", "classes", "scores", "outputs"


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The Examples as a DT_STRING vector (N,); with a context, each is the context's bytes followed by its own."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [example.SerializeToString() for example in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        # Concatenated serializations merge: the example's own features win over the context's.
        context = request_input.example_list_with_context.context.SerializeToString()
        serialized = [
            context + example.SerializeToString() for example in request_input.example_list_with_context.examples
        ]
    else:
        serialized = []
    if not serialized:
        raise RequestError("Input is empty.")
    examples = np.empty(len(serialized), dtype=object)
    examples[:] = serialized
    return examples


def _one_line(definition: meta_graph_pb2.SignatureDef) -> str:
    return text_format.MessageToString(definition, as_one_line=True)


_WHAT = {CLASSIFY_METHOD: "classification", REGRESS_METHOD: "regression"}


def _signature(servable: Servable, name: str, method: str) -> Signature:
    name = name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise RequestError(f"No signature was found with the name: {quoted(name)}")
    if method_name_check() and signature.method_name != method:
        raise RequestError(
            f"Expected {_WHAT[method]} signature method_name to be {method}. Was: {signature.method_name}"
        )
    return signature


def _check_layout(definition: meta_graph_pb2.SignatureDef, method: str, output_counts: tuple[int, ...]) -> None:
    """What classify and regress signatures must be, in the real server's order; each refusal INVALID_ARGUMENT."""
    what = _WHAT[method]
    if method_name_check() and definition.method_name != method:
        raise RequestError(f"Expected {what} signature method_name to be {method}. Was: {definition.method_name}")
    if len(definition.inputs) != 1:
        raise RequestError("Expected one input Tensor.")
    if len(definition.outputs) not in output_counts:
        count = len(definition.outputs)
        raise RequestError(
            f"Expected one or two output Tensors, found {count}"
            if 2 in output_counts
            else "Expected one output Tensor."
        )
    if INPUTS not in definition.inputs:
        raise RequestError(f"No {what} inputs found in SignatureDef: {_one_line(definition)}")


def classification_outputs(definition: meta_graph_pb2.SignatureDef) -> tuple[str, ...]:
    """The output aliases a classify signature is run for ("classes" and/or "scores"); refuses other layouts."""
    _check_layout(definition, CLASSIFY_METHOD, (1, 2))
    chosen = tuple(alias for alias in (CLASSES, SCORES) if alias in definition.outputs)
    if not chosen:
        raise RequestError(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}". '
            f"Signature was: {_one_line(definition)}"
        )
    return chosen


def regression_outputs(definition: meta_graph_pb2.SignatureDef) -> tuple[str, ...]:
    """("outputs",) for a well-formed regress signature; refuses other layouts."""
    _check_layout(definition, REGRESS_METHOD, (1,))
    if OUTPUTS not in definition.outputs:
        raise RequestError(f"No regression outputs found in SignatureDef: {_one_line(definition)}")
    return (OUTPUTS,)


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(str(size) for size in array.shape) + "]"


def classification_result(
    count: int, outputs: Mapping[str, np.ndarray], result: classification_pb2.ClassificationResult
) -> None:
    """Fill result from the classes (DT_STRING) and/or scores (DT_FLOAT) tensors of count examples."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, tensor, kind, dtype in ((CLASSES, classes, "OSU", "DT_STRING"), (SCORES, scores, "f", "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise RequestError(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(tensor)}")
        if tensor.dtype.kind not in kind or (kind == "f" and tensor.dtype != np.float32):
            got = "DT_STRING" if tensor.dtype.kind in "OSU" else types_pb2.DataType.Name(_dtype_enum(tensor.dtype))
            raise RequestError(f"Expected {name} Tensor of {dtype}. Got: {got}")
        if tensor.shape[0] != count:
            raise RequestError(f"Expected {name} output batch size of {count}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise RequestError(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]
    for row in range(count):
        classifications = result.classifications.add()
        for column in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[row, column]
                entry.label = label.decode("utf-8", errors="replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[row, column])


def regression_result(count: int, outputs: Mapping[str, np.ndarray], result: regression_pb2.RegressionResult) -> None:
    """Fill result from the outputs tensor ([batch] or [batch, 1], DT_FLOAT) of count examples."""
    tensor = outputs[OUTPUTS]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise RequestError(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape_text(tensor)}"
        )
    if tensor.shape[0] != count:
        raise RequestError(f"Input batch size did not match output batch size: {count} vs. {tensor.shape[0]}")
    if tensor.dtype != np.float32:
        raise RequestError(
            f"Expected output Tensor of DT_FLOAT.  Got: {types_pb2.DataType.Name(_dtype_enum(tensor.dtype))}"
        )
    for value in tensor.ravel().tolist():
        result.regressions.add(value=value)


def _dtype_enum(dtype: np.dtype) -> int:
    return DTYPE_BY_NUMPY.get(dtype, types_pb2.DT_INVALID)


def fill_model_spec(spec: model_pb2.ModelSpec, name: str, signature_name: str, version: int) -> None:
    """The model spec an answer carries: the model asked for, the signature used, the version that answered."""
    spec.name = name
    spec.signature_name = signature_name
    spec.version.value = version


def classify(servable: Servable, request: classification_pb2.ClassificationRequest, run: Runner):
    """A ClassificationResponse for request on servable."""
    response = classification_pb2.ClassificationResponse()
    return _run_examples(
        servable, request, run, CLASSIFY_METHOD, classification_outputs, classification_result, response
    )


def regress(servable: Servable, request: regression_pb2.RegressionRequest, run: Runner):
    """A RegressionResponse for request on servable."""
    response = regression_pb2.RegressionResponse()
    return _run_examples(servable, request, run, REGRESS_METHOD, regression_outputs, regression_result, response)


def _run_examples(servable: Servable, request, run: Runner, method: str, outputs_of, fill_result, response):
    """Classify and Regress alike: run the method's signature over the request's Examples into response."""
    signature = _signature(servable, request.model_spec.signature_name, method)
    aliases = outputs_of(signature.definition)
    examples = serialized_examples(request.input)
    fill_result(len(examples), run(servable, signature, {INPUTS: examples}, aliases), response.result)
    fill_model_spec(response.model_spec, request.model_spec.name, signature.name, servable.version)
    return response


def multi_inference(servable: Servable, request: inference_pb2.MultiInferenceRequest):
    """Several classify/regress signatures over the same Examples, in one run of the graph."""
    model_name, input_tensors, plans = "", [], []
    for task in request.tasks:
        if not task.model_spec.name:
            raise RequestError("Found ModelSpec with an empty model name.")
        if model_name and task.model_spec.name != model_name:
            raise RequestError("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        model_name = task.model_spec.name
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if any(name == planned.name for planned, _, _ in plans):
            raise RequestError(f"Duplicate evaluation of signature: {quoted(name)}")
        signature = servable.signatures.get(name)
        if signature is None:
            raise RequestError(f"Requested signature not found in model graph: {quoted(name)}")
        if task.method_name == CLASSIFY_METHOD:
            aliases = classification_outputs(signature.definition)
        elif task.method_name == REGRESS_METHOD:
            aliases = regression_outputs(signature.definition)
        else:
            raise RequestError(f"Unsupported signature method_name: {task.method_name}", "UNIMPLEMENTED")
        tensor = signature.definition.inputs[INPUTS].name
        if tensor not in input_tensors:
            # A TF2 SavedModel gives each signature its own input placeholder; the same Examples feed them all.
            if input_tensors and method_name_check():
                raise RequestError("Input tensor must be the same for all Signatures.")
            input_tensors.append(tensor)
        plans.append((signature, aliases, task.method_name))
    examples = serialized_examples(request.input)
    fetches = sorted({signature.definition.outputs[alias].name for signature, aliases, _ in plans for alias in aliases})
    fetched = dict(zip(fetches, servable.run(dict.fromkeys(input_tensors, examples), tuple(fetches)), strict=True))
    response = inference_pb2.MultiInferenceResponse()
    for signature, aliases, method in plans:
        outputs = {alias: fetched[signature.definition.outputs[alias].name] for alias in aliases}
        result = response.results.add()
        fill_model_spec(result.model_spec, model_name, signature.name, servable.version)
        if method == CLASSIFY_METHOD:
            classification_result(len(examples), outputs, result.classification_result)
        else:
            regression_result(len(examples), outputs, result.regression_result)
    return response
