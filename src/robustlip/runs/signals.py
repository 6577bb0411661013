"""Stop requests for a command that runs without Lightning's Trainer (robustlip-eval's evaluator).

SLURM sends SIGTERM before a preemption or at the time limit and then, after a grace of 30-90 s,
SIGKILL; a user presses Ctrl-C. Either sets a flag that the evaluator asks before every forward pass
(robustlip.evaluation), so the work stops within seconds with what was measured kept. A second Ctrl-C
aborts at once (Python's ``KeyboardInterrupt``), as in every other robustlip command.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Exit status of a command stopped by a signal: 128 + the signal number (the shell's convention).
EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class StopRequest:
    """Whether SIGTERM or Ctrl-C asked the command to stop, and which one."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signal_name or "SIGTERM"]

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.signal_name = self.signal_name or name
        print(f"\n{name}: stopping within seconds and keeping what was measured"
              f"{' (Ctrl-C again to abort without keeping it)' if name == 'SIGINT' else ''}", file=sys.stderr, flush=True)


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """SIGTERM and SIGINT set the flag of the yielded :class:`StopRequest` while the block runs.

    Handlers can only be set from the main thread; elsewhere the flag is never set. A SIGINT that the
    process started with ignored (a background job of a script, nohup) stays ignored.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(sig, request._handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
