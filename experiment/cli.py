"""Running a command-line entry point so that user mistakes end in one sentence and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

from experiment.errors import UsageError


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Call body(); a UsageError becomes 'prog: error: <sentence>' on stderr and exit status 2."""
    try:
        return body()
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was exported.", file=sys.stderr)
        return 130
