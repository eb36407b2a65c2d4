"""`make tensorboard`: TensorBoard over runs/, with TensorFlow's C++ start-up lines below warning kept off the terminal.

Run with `python -m experiment.tensorboard --logdir runs [--port 6006]`: TensorBoard's own flags, unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from experiment import library_logs


def main(argv: Sequence[str] | None = None) -> int:
    """Run TensorBoard's command line with these flags until Ctrl-C; its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    library_logs.quiet()  # TensorBoard imports TensorFlow when it is installed
    from tensorboard import main as tensorboard_main

    sys.argv = ["tensorboard", *arguments]  # TensorBoard parses its flags from sys.argv (absl's app.run)
    try:
        tensorboard_main.run_main()
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
