"""Config dataclasses and the flags generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiment.config import TrainConfig, build_parser, parse_config
from experiment.errors import UsageError
from experiment.spec import NetworkSpec, parse_hidden_sizes


def test_every_field_has_a_flag():
    parser = build_parser(TrainConfig, "prog", "test")
    help_text = parser.format_help()
    for flag in (
        "--epochs",
        "--batch-size",
        "--learning-rate",
        "--seed",
        "--hidden-sizes",
        "--data-dir",
        "--run-name",
        "--output-dir",
        "--log-dir",
        "--activation",
        "--dropout",
    ):
        assert flag in help_text


def test_flags_parse_into_typed_fields():
    config = parse_config(
        TrainConfig,
        ["--epochs", "3", "--hidden-sizes", "128,64", "--data-dir", "x", "--learning-rate", "0.01"],
        "prog",
        "test",
    )
    assert config.epochs == 3 and config.hidden_sizes == (128, 64)
    assert config.data_dir == Path("x") and config.learning_rate == 0.01
    assert parse_config(TrainConfig, [], "prog", "test") == TrainConfig()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--batch-size", "-4"], "--batch-size must be a positive integer"),
        (["--hidden-sizes", "64,x"], "not a comma-separated list"),
        (["--hidden-sizes", "64,0"], "positive integers"),
        (["--dropout", "1.5"], "--dropout must be in"),
        (["--run-name", "../escape"], "plain folder name"),
    ],
)
def test_bad_values_raise_one_sentence(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_config(TrainConfig, argv, "prog", "test")


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--epochs", "many"], ["--activation", "gelu5"]])
def test_argparse_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_config(TrainConfig, argv, "prog", "test")
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("prog: error:")


def test_hidden_sizes_syntax():
    assert parse_hidden_sizes("64, 32") == (64, 32)
    assert parse_hidden_sizes("") == ()


def test_network_spec_round_trip():
    spec = TrainConfig(hidden_sizes=(16,)).network_spec((28, 28), 255.0, 10)
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    assert spec.input_size == 784
