"""Every command of README.md and docs/*.md runs, against a stack started the way the README says.

The test makes a sandbox folder that links to this checkout's code (so `.run/`, `models/`, `runs/` are its own),
starts the servers there with `make serve` on ports the system picks, and runs each shell block with bash, in
document order, with these substitutions (the docs name DESIGN's default ports, which other work on this machine
may hold):

- the default ports (8500, 8501, 5000, 8080-8082, 7070, 7071) become the sandbox stack's;
- `make serve` runs only once (the stack is shared), `make stop` at the end; `make demo` gets `--free-ports`
  and reuses the exports, `make train-tf` / `make train-torch` without ARGS train for one epoch;
- `make playground` and `make tensorboard` run until their page answers, then stop;
- `curl` fails on an HTTP error (`--fail-with-body`).

Before each block the test waits until every server serves the newest export on disk, so a block that trains does
not race the next one. Blocks marked `<!-- docs-test: syntax only, ... -->` are checked by test_docs_syntax.py.
No output may carry a TensorFlow or absl C++ log line below warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.docs import blocks
from tests.docs.sandbox import DEFAULT_PORTS, make_sandbox, wait_until_current

# The sandbox's stack and the README's training: `make test-fast` leaves these out.
pytestmark = [pytest.mark.server, pytest.mark.training]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A sandbox with a stack started by `make serve`; `make stop` and `make status` (exit 0) at the end."""
    sandbox = make_sandbox(tmp_path_factory.mktemp("docs"))
    # One epoch each first, so that `make serve` finds exports instead of training 40 epochs of both (minutes on a
    # busy 2-core machine); training as `make serve` does it is the same command, and the README's blocks run it.
    for target in ("train-tf", "train-torch"):
        trained = sandbox.make(target, "ARGS=--epochs 1")
        assert trained.returncode == 0, trained.stdout + trained.stderr
    sandbox.start()
    yield sandbox
    sandbox.stop()


RUNNABLE = [block for block in blocks.all_blocks() if block.language in blocks.SHELL_LANGUAGES and block.mode == "run"]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.where)
def test_documented_commands_run(sandbox, block):
    wait_until_current(sandbox)
    sandbox.run_block(block)


def _urls() -> list[tuple[Path, int, str, int, str]]:
    """The stack's URLs in the text that a GET can ask (patterns with <...> and predict paths need a body)."""
    return [
        (path, *found)
        for path in blocks.documents()
        for found in blocks.urls(path)
        if found[2] in DEFAULT_PORTS
        and found[3] != "/"
        and "<" not in found[3]
        and not found[3].endswith(":predict")
        and "/predictions/" not in found[3]
    ]


@pytest.mark.parametrize(
    "path, line, url, port, url_path", _urls(), ids=[f"{path.name}:{line}" for path, line, *_ in _urls()]
)
def test_documented_urls_answer(sandbox, path, line, url, port, url_path):
    folder, port_map = sandbox.folder, sandbox.port_map
    headers = {}
    if port in (8080, 8081):
        keys = json.loads((folder / ".run/torchserve/key_file.json").read_text())
        headers["Authorization"] = f"Bearer {keys['inference' if port == 8080 else 'management']['key']}"
    answer = requests.get(f"http://127.0.0.1:{port_map[port]}{url_path}", headers=headers, timeout=30)
    assert answer.status_code < 400, (
        f"{path.relative_to(blocks.ROOT)}:{line}: {url} answered HTTP {answer.status_code}: {answer.text[:300]}"
    )
