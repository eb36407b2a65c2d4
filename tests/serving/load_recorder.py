"""Load while a server changes what it serves: threads asking in a loop, every answer and failure recorded and timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Answer = TypeVar("Answer")


class LoadRecorder(Generic[Answer]):
    """One thread per asker, calling it in a loop until the block ends; records (time, label, answer) per answer and
    'label: ErrorType: message' per failure of the given types (any other exception ends that thread)."""

    def __init__(
        self,
        askers: Sequence[tuple[str, Callable[[], Answer]]],
        failure_types: tuple[type[BaseException], ...] = (Exception,),
        pause_s: float = 0.0,
        join_timeout_s: float = 60.0,
    ) -> None:
        self.answers: list[tuple[float, str, Answer]] = []
        self.failures: list[str] = []
        self._failure_types = failure_types
        self._pause_s = pause_s
        self._join_timeout_s = join_timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(label, ask), daemon=True) for label, ask in askers]

    def _work(self, label: str, ask: Callable[[], Answer]) -> None:
        while not self._stop.is_set():
            try:
                answer = ask()
            except self._failure_types as error:  # counted, so that one failure does not hide the others
                with self._lock:
                    self.failures.append(f"{label}: {type(error).__name__}: {error}")
            else:
                with self._lock:
                    self.answers.append((time.monotonic(), label, answer))
            time.sleep(self._pause_s)

    def __enter__(self) -> LoadRecorder[Answer]:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._join_timeout_s)

    def since(self, moment: float) -> list[tuple[float, str, Answer]]:
        """The answers recorded at or after moment (time.monotonic()), in order."""
        with self._lock:
            return [answer for answer in self.answers if answer[0] >= moment]
