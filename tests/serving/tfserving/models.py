"""Equivalents of TensorFlow Serving's test models, written by our own code, and the model config that serves them.

    half_plus_two        TF1 graph (tf.compat.v1 SavedModelBuilder): y = 0.5 x + 2 on "x"; classify/regress
                         signatures parse serialized tf.Examples with a float feature "x" (and "x2", default 0)
    half_plus_three      the same with y = 0.5 x + 3, its regress signature named "tensorflow/serving/regress"
    half_plus_two_2_versions   half_plus_two as versions 123 and 124
    multi_io             TF2 tf.function: several inputs and outputs of different dtypes; a scalar signature;
                         an "echo" signature over every numeric dtype, DT_STRING and DT_BOOL
    strings              TF2: DT_STRING in, its length, upper case and bytes ("*_bytes") out
    tf2_unknown_rank     TF2 tf.saved_model.save of v1 * v2 * x, x of unknown rank (v1 = 3, v2 = 2)
    tf2_two_signatures   TF2 with serving_default (y = 1) and custom_signature_key (y = 2)
    half_plus_two_tf2    TF2 tf.saved_model.save of half_plus_two: serving_default, classify_x_to_y ("scores") and
                         regress_x_to_y ("outputs") over serialized tf.Examples, every one with the predict method name
    slow                 TF2: y = x * 0 + a sum over a loop that runs while its counter is below max(x); from
                         x = 2**24 on the float counter stops growing, so the call runs until it is cut off
    bad_half_plus_two    a graph without any signature

Every model is version 123 in a folder named 00000123, as in TensorFlow Serving's testdata. To run the same
cases against the real server: `python -m tests.serving.tfserving.models DIR`, start tensorflow_model_server with
--model_config_file=DIR/models.config (DIR mounted at the same path in Docker), and give the suite its addresses
(see tests/serving/tfserving/conftest.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

VERSION_FOLDER = "00000123"
CONFIG_FILE = "models.config"
TWO_VERSIONS = "half_plus_two_2_versions"
LABELS = {"stable": 123, "canary": 124}
# Served name → folder: the reference tests serve half_plus_two as "default" and under its own name.
SERVED = {
    "default": "half_plus_two",
    "half_plus_two": "half_plus_two",
    "half_plus_three": "half_plus_three",
    TWO_VERSIONS: TWO_VERSIONS,
    "multi_io": "multi_io",
    "strings": "strings",
    "tf2_unknown_rank": "tf2_unknown_rank",
    "tf2_two_signatures": "tf2_two_signatures",
    "bad_half_plus_two": "bad_half_plus_two",
    "half_plus_two_tf2": "half_plus_two_tf2",
    "slow": "slow",
}


def write_half_plus(export_dir: Path, bias: float, regress_name: str, classify_name: str) -> None:
    """A TF1 graph: y = a x + bias on a float "x" (predict), and classify/regress signatures over tf.Examples."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        a, b, c = v1.Variable(0.5, name="a"), v1.Variable(bias, name="b"), v1.Variable(3.0, name="c")
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")  # (N,) serialized tf.Examples
        features = v1.io.parse_example(
            serialized,
            {
                "x": v1.io.FixedLenFeature([1], tf.float32),
                "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        x = tf.identity(features["x"], name="x")  # (N, 1)
        x2 = tf.identity(features["x2"], name="x2")  # (N, 1)
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        y3 = tf.identity(a * x2 + c, name="y3")
        session.run(v1.global_variables_initializer())

        def signature(inputs, outputs, method):
            info = v1.saved_model.utils.build_tensor_info
            return v1.saved_model.signature_def_utils.build_signature_def(
                {alias: info(tensor) for alias, tensor in inputs.items()},
                {alias: info(tensor) for alias, tensor in outputs.items()},
                f"tensorflow/serving/{method}",
            )

        signatures = {
            "serving_default": signature({"x": x}, {"y": y}, "predict"),
            regress_name: signature({"inputs": serialized}, {"outputs": y}, "regress"),
            classify_name: signature({"inputs": serialized}, {"scores": y}, "classify"),
            "regress_x_to_y2": signature({"inputs": serialized}, {"outputs": y2}, "regress"),
            "regress_x2_to_y3": signature({"inputs": x2}, {"outputs": y3}, "regress"),
            "classify_x2_to_y3": signature({"inputs": x2}, {"scores": y3}, "classify"),
        }
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()


def write_without_signatures(export_dir: Path) -> None:
    """A TF1 graph with a variable and no SignatureDef at all."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        v1.Variable(0.5, name="a")
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(session, ["serve"])
        builder.save()


# The echo signature's inputs: one per dtype a request can carry (DT_HALF and DT_UINT16 only over gRPC).
ECHO_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
)


def write_multi_io(export_dir: Path) -> None:
    """TF2: several inputs and outputs of different dtypes, a scalar signature, and an echo of every dtype."""
    import tensorflow as tf

    class MultiInputOutput(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 2], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="count"),
                tf.TensorSpec([None], tf.bool, name="flag"),
                tf.TensorSpec([None], tf.float64, name="weight"),
                tf.TensorSpec([None], tf.string, name="tag"),
            ]
        )
        def serve(self, x, count, flag, weight, tag):
            return {
                "total": tf.reduce_sum(x, axis=1) * tf.cast(weight, tf.float32),  # (N,)
                "doubled": count * 2,  # (N,)
                "negated": tf.logical_not(flag),  # (N,)
                "weight_squared": weight * weight,  # (N,)
                "tag_length": tf.strings.length(tag),  # (N,) int32
            }

        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="x")])
        def scalar(self, x):
            return {"y": x * 2.0, "also_y": x + 1.0}

        @tf.function(input_signature=[tf.TensorSpec(None, getattr(tf, name), name=name) for name in ECHO_DTYPES])
        def echo(self, *values):
            return {f"{name}_out": tf.identity(value) for name, value in zip(ECHO_DTYPES, values, strict=True)}

    module = MultiInputOutput()
    signatures = {"serving_default": module.serve, "scalar": module.scalar, "echo": module.echo}
    tf.saved_model.save(module, str(export_dir), signatures=signatures)


def write_strings(export_dir: Path) -> None:
    """TF2: DT_STRING "text" (N,) in; its length, its upper case and its bytes unchanged out."""
    import tensorflow as tf

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {
                "length": tf.strings.length(text, unit="UTF8_CHAR"),
                "upper": tf.strings.upper(text),
                "text_bytes": text,
            }

    module = Strings()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})


def write_unknown_rank(export_dir: Path) -> None:
    """TF2 tf.saved_model.save of y = v1 * v2 * x (v1 = 3, v2 = 2), x of unknown rank."""
    import tensorflow as tf

    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, str(export_dir), root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))


def write_two_signatures(export_dir: Path) -> None:
    """TF2 with serving_default (y = 1) and custom_signature_key (y = 2), both over an x of unknown rank."""
    import tensorflow as tf

    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": tf.constant(1.0)}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": tf.constant(2.0)}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, str(export_dir), signatures={"serving_default": root.f, "custom_signature_key": root.g})


def write_half_plus_two_tf2(export_dir: Path) -> None:
    """TF2 half_plus_two: y = 0.5 x + 2 as serving_default, and as classify/regress signatures over tf.Examples.

    tf.saved_model.save gives every signature the predict method name, whatever API it is meant for.
    """
    import tensorflow as tf

    root = tf.train.Checkpoint()
    root.a, root.b = tf.Variable(0.5), tf.Variable(2.0)

    def from_examples(serialized):
        return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    examples = [tf.TensorSpec([None], tf.string, name="inputs")]
    root.predict = tf.function(lambda x: {"y": root.a * x + root.b}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.classify = tf.function(
        lambda inputs: {"scores": root.a * from_examples(inputs) + root.b}, input_signature=examples
    )
    root.regress = tf.function(
        lambda inputs: {"outputs": root.a * from_examples(inputs) + root.b}, input_signature=examples
    )
    signatures = {"serving_default": root.predict, "classify_x_to_y": root.classify, "regress_x_to_y": root.regress}
    tf.saved_model.save(root, str(export_dir), signatures=signatures)


def write_slow(export_dir: Path) -> None:
    """TF2: a loop that counts up to max(x); a float counter stops at 2**24, so a larger x never finishes."""
    import tensorflow as tf

    def serve(x):
        limit = tf.reduce_max(x)
        _, total = tf.while_loop(
            lambda count, total: count < limit, lambda count, total: (count + 1.0, total + count), (0.0, 0.0)
        )
        return {"y": x * 0.0 + total}

    root = tf.train.Checkpoint()
    root.f = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(root, str(export_dir), signatures={"serving_default": root.f})


def write_models(root: Path) -> Path:
    """Write every model under root (one folder each) and root/models.config serving them; the config's path."""
    root = Path(root).resolve()
    writers = {
        "half_plus_two": lambda path: write_half_plus(path, 2.0, "regress_x_to_y", "classify_x_to_y"),
        "half_plus_three": lambda path: write_half_plus(
            path, 3.0, "tensorflow/serving/regress", "tensorflow/serving/classify"
        ),
        "multi_io": write_multi_io,
        "strings": write_strings,
        "tf2_unknown_rank": write_unknown_rank,
        "tf2_two_signatures": write_two_signatures,
        "bad_half_plus_two": write_without_signatures,
        "half_plus_two_tf2": write_half_plus_two_tf2,
        "slow": write_slow,
    }
    for folder, write in writers.items():
        if not (root / folder / VERSION_FOLDER).is_dir():
            write(root / folder / VERSION_FOLDER)
    for version in (123, 124):
        target = root / TWO_VERSIONS / f"{version:08d}"
        if not target.is_dir():
            write_half_plus(target, 2.0, "regress_x_to_y", "classify_x_to_y")
    path = root / CONFIG_FILE
    path.write_text(model_config(root))
    return path


def model_config(root: Path, labels: dict[str, int] | None = None) -> str:
    """The text-format ModelServerConfig serving every model under root (the two-version model with labels)."""
    entries = []
    for name, folder in SERVED.items():
        extra = ""
        if name == TWO_VERSIONS:
            chosen = LABELS if labels is None else labels
            extra = " model_version_policy { specific { versions: 123 versions: 124 } }" + "".join(
                f' version_labels {{ key: "{label}" value: {version} }}' for label, version in chosen.items()
            )
        entries.append(
            f'  config {{ name: "{name}" base_path: "{root / folder}" model_platform: "tensorflow"{extra} }}'
        )
    return "model_config_list {\n" + "\n".join(entries) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    """Write the models and their config into a folder, for a real tensorflow_model_server to serve."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.serving.tfserving.models", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", type=Path, help="where to write the models and models.config")
    arguments = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(write_models(arguments.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
