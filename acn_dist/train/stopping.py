"""A stop asked for by a signal (Ctrl-C, `kill`, a scheduler's SIGTERM): training ends the step it
is in, writes a checkpoint and stops, so that running the same command again resumes there
instead of at the last scheduled checkpoint."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While inside, SIGINT and SIGTERM only set `signum`; the loop looks at `requested` between
    steps. A second signal acts as it would have without this (Ctrl-C twice still interrupts at
    once). Signals reach only the main thread, so elsewhere (a Ray Train worker's training thread)
    this installs nothing and `requested` stays false."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            return
        self._restore()
        signal.raise_signal(signum)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
