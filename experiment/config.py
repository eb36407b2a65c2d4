"""Training configuration: one dataclass per pipeline on a shared base, with command-line flags generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from experiment.artifacts import TORCH_FORMAT_FILES
from experiment.errors import UsageError
from experiment.json_types import JSONDict, JSONScalar
from experiment.spec import ACTIVATIONS, NetworkSpec, parse_hidden_sizes

ConfigT = TypeVar("ConfigT", bound="TrainConfig")
DefaultT = TypeVar("DefaultT")

# Keras's Adam default epsilon; torch's default is 1e-8, so both sides set it explicitly.
ADAM_EPSILON = 1e-7


def config_field(default: DefaultT, help: str, **metadata: object) -> DefaultT:
    """A dataclass field with its --help text and, optionally, parse= (the flag's parser) and choices=."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and places shared by both pipelines; the same defaults give the same run on each side."""

    epochs: int = config_field(40, "number of passes over the training split")
    batch_size: int = config_field(32, "examples per optimizer step (the global batch in a distributed run)")
    learning_rate: float = config_field(1e-3, "Adam learning rate")
    seed: int = config_field(0, "seed for the data split, weight initialisation, dropout and shuffling")
    hidden_sizes: tuple[int, ...] = config_field(
        (64, 32), "hidden layer widths, comma-separated, e.g. 128,64", parse=parse_hidden_sizes
    )
    activation: str = config_field("relu", "hidden activation", choices=ACTIVATIONS)
    dropout: float = config_field(0.1, "dropout rate after each hidden layer")
    data_dir: Path | None = config_field(
        None, "folder of MNIST-format IDX files; default: scikit-learn's bundled 8x8 digits"
    )
    run_name: str | None = config_field(
        None,
        "TensorBoard run name; default: the model, the settings that differ from the defaults and a timestamp, "
        "e.g. digits-epochs10-lr0.01-20261129-041723",
    )
    output_dir: Path = config_field(Path("models"), "where exports go: <output-dir>/<framework>/<model>/<version>/")
    log_dir: Path = config_field(Path("runs"), "where TensorBoard logs go: <log-dir>/<framework>/<run-name>/")
    checkpoint_dir: Path | None = config_field(
        None,
        "folder for training checkpoints: one is saved every --checkpoint-every steps and a restarted run resumes "
        "from the latest; every process of a distributed run must see the same folder; default: no checkpoints",
    )
    checkpoint_every: int = config_field(100, "optimizer steps between two checkpoints (with --checkpoint-dir)")

    framework: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise UsageError(f"--epochs must be a positive integer, got {self.epochs}.")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be a positive integer, got {self.batch_size}.")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning-rate must be positive, got {self.learning_rate}.")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}.")
        if self.checkpoint_every <= 0:
            raise UsageError(f"--checkpoint-every must be a positive integer, got {self.checkpoint_every}.")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name.startswith(".")):
            raise UsageError(f"--run-name {self.run_name!r} must be a plain folder name.")

    def resolved_run_name(self, model_name: str) -> str:
        """The run name given, or `<model>[-<setting that differs from the default>...]-<timestamp>`.

        The framework is the folder above the run (runs/tf/<run>, runs/torch/<run>), so TensorBoard shows runs as
        `tf/digits-lr0.01-20261129-041723`. A generated name already taken gets a numeric suffix.
        """
        if self.run_name:
            return self.run_name
        timestamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        stem = "-".join([model_name, *self.differences_from_defaults(), timestamp])
        name, suffix = stem, 1
        while (Path(self.log_dir) / self.framework / name).exists():
            suffix += 1
            name = f"{stem}-{suffix}"
        return name

    def differences_from_defaults(self) -> list[str]:
        """Short labels for the training settings that differ from the defaults, e.g. ['lr0.01', 'hidden128x64']."""
        labels = []
        for field in dataclasses.fields(TrainConfig):
            if field.name not in _RUN_NAME_LABELS or getattr(self, field.name) == field.default:
                continue
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                text = "x".join(str(item) for item in value)
            elif isinstance(value, float):
                text = f"{value:g}"
            else:
                text = str(value)
            labels.append(_RUN_NAME_LABELS[field.name] + text)
        return labels

    def network_spec(self, image_shape: tuple[int, int], pixel_max: float, num_classes: int) -> NetworkSpec:
        """The network this config describes, for a dataset of the given shape."""
        return NetworkSpec(
            input_shape=(image_shape[0], image_shape[1]),
            pixel_max=pixel_max,
            hidden_sizes=self.hidden_sizes,
            activation=self.activation,
            dropout=self.dropout,
            num_classes=num_classes,
        )

    def hyperparameters(self) -> dict[str, JSONScalar]:
        """The settings that shape training, JSON-ready, for metadata.json and TensorBoard hparams."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "optimizer": "adam",
            "adam_epsilon": ADAM_EPSILON,
        }

    def resume_settings(self, dataset_name: str) -> JSONDict:
        """What a checkpoint must have been made with to be resumed by this config: all but the epoch count."""
        settings: JSONDict = {
            "framework": self.framework,
            "dataset": dataset_name,
            **self.hyperparameters(),
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "dropout": self.dropout,
        }
        del settings["epochs"]  # more epochs than the interrupted run asked for is how a user extends a run
        return settings

    def tensorboard_hparams(self) -> dict[str, JSONScalar]:
        """Scalar-only hyperparameters for TensorBoard's HParams dashboard, the same keys on both sides."""
        return {
            "framework": self.framework,
            **self.hyperparameters(),
            "hidden_sizes": ",".join(str(size) for size in self.hidden_sizes),
            "activation": self.activation,
            "dropout": self.dropout,
            "dataset": "digits" if self.data_dir is None else str(self.data_dir),
        }


# The settings that change what a run learns, and their prefix in a generated run name ('' for the activation,
# whose value names itself).
_RUN_NAME_LABELS = {
    "epochs": "epochs",
    "batch_size": "batch",
    "learning_rate": "lr",
    "seed": "seed",
    "hidden_sizes": "hidden",
    "activation": "",
    "dropout": "dropout",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one sentence on stderr (no usage dump), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(config_class: type[TrainConfig], prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of config_class, defaults and help taken from the dataclass."""
    parser = _Parser(prog=prog, description=description)
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        hint = hints[field.name]
        help_text = str(field.metadata.get("help", ""))
        if hint is bool:
            parser.add_argument(
                _flag(field.name),
                help=help_text,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=field.default,
            )
            continue
        if field.default is not None:  # a None default is described in the help text itself
            help_text += f" (default: {_show_default(field.default)})"
        parser.add_argument(
            _flag(field.name),
            help=help_text,
            dest=field.name,
            default=argparse.SUPPRESS,  # keep the dataclass default, shown in --help above
            type=field.metadata.get("parse") or _scalar_type(hint),
            choices=field.metadata.get("choices"),  # None: any value
        )
    return parser


def _scalar_type(hint: object) -> Callable[[str], object]:
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    base = arguments[0] if arguments else hint
    for parse in (int, float, str, Path):
        if base is parse:
            return parse
    raise TypeError(f"no command-line parser for {hint}")


def _show_default(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def parse_config(config_class: type[ConfigT], argv: Sequence[str] | None, prog: str, description: str) -> ConfigT:
    """Parse argv into config_class; argparse mistakes exit 2 with one line, value mistakes raise UsageError."""
    parser = build_parser(config_class, prog, description)
    namespace = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return config_class(**vars(namespace))


def parse_torch_formats(text: str) -> tuple[str, ...]:
    """--formats 'onnx,pt2' → ('onnx', 'pt2'): known names, each once, onnx among them (both servers serve it)."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in TORCH_FORMAT_FILES]
    if unknown:
        raise UsageError(f"--formats: unknown format {unknown[0]!r}; choose from {', '.join(TORCH_FORMAT_FILES)}.")
    if "onnx" not in names:
        raise UsageError("--formats must include onnx: the Flask app and TorchServe's archive serve model.onnx.")
    return names


def per_replica_batch_size(global_batch_size: int, replicas: int) -> int:
    """Split a global batch evenly over data-parallel replicas; an uneven split is refused in one sentence."""
    if global_batch_size % replicas != 0:
        raise UsageError(
            f"--batch-size {global_batch_size} is the global batch and must be divisible by the {replicas} "
            f"data-parallel replicas; use a multiple of {replicas}."
        )
    return global_batch_size // replicas
