"""`python -m serving.client tf|flask|torchserve`: query a model server with the project's clients and time each call.

The client family itself is `serving.clients`; which client speaks to which endpoint comes from the servers' specs
in `serving.runtime`, as it does for the stack, the demo and the tests. Without an address, a client talks to the
stack `make serve` runs (its ports, model name and TorchServe key, from `.run/`), or to the default ports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiment import library_logs
from experiment.cli import run_main
from experiment.errors import UsageError
from serving.clients import (  # noqa: F401 (re-exported for scripts that import the clients from this module)
    PredictionClient,
    RestClient,
    ServerUnavailableError,
    ServingError,
    TFServingGrpcClient,
    TorchServeClient,
    TorchServeError,
    TorchServeGrpcClient,
)
from serving.clients.base import DEFAULT_TIMEOUT_S

PROG = "python -m serving.client"


def build_parser() -> argparse.ArgumentParser:
    """`tf`, `flask` and `torchserve` subcommands sharing the sample and timing options."""
    parser = argparse.ArgumentParser(prog=PROG, description="Query a model server and time each call.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model-name", default=None, help="served model name (default: the one `make serve` serves, else digits)"
    )
    source = common.add_mutually_exclusive_group()
    source.add_argument("--sample", type=int, default=10, help="send the first N test-split images (default 10)")
    source.add_argument(
        "--images", type=Path, help="send the images in this .npy file, shape (N, H, W) or (H, W): (N, 8, 8) for digits"
    )
    common.add_argument("--batch-size", type=int, default=1, help="images per call (default 1: one call per image)")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per call (default 10)")
    common.add_argument("--wait", type=float, default=0.0, help="first wait up to this many seconds for the model")
    commands = parser.add_subparsers(dest="server", required=True)
    tf_help = "TensorFlow Serving (real or python -m serving.tfserving)"
    tf_parser = commands.add_parser("tf", parents=[common], help=tf_help)
    endpoint = tf_parser.add_mutually_exclusive_group()
    endpoint.add_argument(
        "--grpc", metavar="HOST:PORT", help="gRPC address (default: the running stack's, else 127.0.0.1:8500)"
    )
    endpoint.add_argument("--rest", metavar="URL", help="REST base URL, e.g. http://127.0.0.1:8501")
    flask_parser = commands.add_parser("flask", parents=[common], help="the Flask app (REST)")
    flask_parser.add_argument(
        "--rest", metavar="URL", help="base URL (default: the running stack's, else http://127.0.0.1:5000)"
    )
    torchserve_parser = commands.add_parser("torchserve", parents=[common], help="TorchServe's inference API")
    torchserve_endpoint = torchserve_parser.add_mutually_exclusive_group()
    torchserve_endpoint.add_argument(
        "--rest",
        metavar="URL",
        help="inference API base URL (default: the running stack's, else http://127.0.0.1:8080)",
    )
    torchserve_endpoint.add_argument(
        "--grpc", metavar="HOST:PORT", help="TorchServe's own gRPC inference API, e.g. 127.0.0.1:7070"
    )
    torchserve_parser.add_argument(
        "--key-file",
        type=Path,
        help="TorchServe's key file, when token auth is on (default: the one of the stack "
        "`make serve` runs, .run/torchserve/key_file.json)",
    )
    return parser


def make_client(arguments: argparse.Namespace) -> PredictionClient:
    """The client of the endpoint the subcommand names, as that server's spec builds it.

    What the command line leaves out comes from the stack `make serve` runs (.run/), else from the default ports.
    """
    from serving.runtime import Stack, flask_app, tfserving, torchserve
    from serving.runtime.stack import DEFAULT_RUN_DIR

    stack = Stack.from_run_dir(DEFAULT_RUN_DIR)  # the default ports and names when no stack left its state there
    addresses = {endpoint.name: endpoint.address for endpoint in stack.endpoints()}
    arguments.model_name = arguments.model_name or stack.model_name
    if arguments.server == "tf":
        grpc_address = None if arguments.rest else arguments.grpc or addresses["tf-grpc"]
        [endpoint] = tfserving.endpoints(grpc_address, arguments.rest, arguments.model_name)
    elif arguments.server == "flask":
        [endpoint] = flask_app.endpoints(arguments.rest or addresses["flask-rest"], arguments.model_name)
    else:
        key_file = arguments.key_file or (stack.torchserve_key_file if stack.torchserve_key_file.exists() else None)
        rest_url = None if arguments.grpc else arguments.rest or addresses["torchserve-rest"]
        [endpoint] = torchserve.endpoints(
            rest_url, key_file=key_file, model_name=arguments.model_name, grpc_address=arguments.grpc
        )
    return endpoint.client(timeout=arguments.timeout)


def load_images(arguments: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    """The images to send and their true labels (None for a .npy file)."""
    if arguments.images is not None:
        try:
            images = np.load(arguments.images, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UsageError(f"Cannot read --images {arguments.images} as a .npy array: {error}.") from None
        if images.dtype.kind not in "iuf":
            raise UsageError(f"--images {arguments.images} holds {images.dtype} values; it must hold numbers.")
        if images.ndim == 2:
            images = images[np.newaxis]
        if images.ndim != 3 or len(images) == 0:
            raise UsageError(
                f"--images {arguments.images} has shape {list(images.shape)}; expected (N, 8, 8) or (8, 8)."
            )
        return images.astype(np.float32), None
    if arguments.sample < 1:
        raise UsageError(f"--sample must be at least 1, got {arguments.sample}.")
    from experiment.data import load_dataset

    test = load_dataset().test
    count = min(arguments.sample, len(test))
    return test.images[:count], test.labels[:count]


def _served_format(client: Any) -> str | None:
    """The model format the server names in its metadata answer (Flask: onnx, pt2 or torchscript), if it names one."""
    try:
        metadata = client.get_metadata()
    except Exception:  # noqa: BLE001 - the format is extra information; predicting is what this command does
        return None
    served = metadata.get("format") if isinstance(metadata, dict) else None
    return served if isinstance(served, str) else None


def run(arguments: argparse.Namespace) -> int:
    """Send the images in calls of --batch-size, print class, label and latency per image, then a summary."""
    if arguments.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {arguments.batch_size}.")
    if arguments.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {arguments.timeout}.")
    images, labels = load_images(arguments)
    client = make_client(arguments)
    try:
        if arguments.wait > 0:
            client.wait_until_available(arguments.wait)
        served_format = _served_format(client)
        print(
            f"{client.description}, model '{arguments.model_name}'"
            + (f", format {served_format}" if served_format else "")
        )
        print(f"{'image':>5}  {'predicted':>9}  {'true':>4}  {'probability':>11}  {'call ms':>8}")
        latencies, correct = [], 0
        for start in range(0, len(images), arguments.batch_size):
            batch = images[start : start + arguments.batch_size]
            started = time.perf_counter()
            probabilities, classes = client.predict(batch)
            latency_ms = (time.perf_counter() - started) * 1000
            latencies.append(latency_ms)
            for offset, predicted in enumerate(classes):
                index = start + offset
                true = "-" if labels is None else str(labels[index])
                correct += labels is not None and int(labels[index]) == int(predicted)
                probability = probabilities[offset, predicted]
                print(f"{index:>5}  {int(predicted):>9}  {true:>4}  {probability:>11.4f}  {latency_ms:>8.2f}")
        summary = f"{len(latencies)} calls, median {np.median(latencies):.2f} ms, max {np.max(latencies):.2f} ms"
        if labels is not None:
            summary += f"; {correct}/{len(images)} correct"
        print(summary)
        return 0
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.client`; unreachable servers end in one sentence and exit 1."""
    arguments = build_parser().parse_args(argv)
    library_logs.quiet()  # the gRPC clients' protobuf imports load TensorFlow

    def body() -> int:
        try:
            return run(arguments)
        except (ServingError, TimeoutError) as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
        except OSError as error:  # should a client let a socket error through
            target = getattr(arguments, "rest", None) or getattr(arguments, "grpc", None) or arguments.server
            print(f"{PROG}: error: Cannot reach {target}: {type(error).__name__}.", file=sys.stderr)
            return 1

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
