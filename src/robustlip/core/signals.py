"""Stop requests by signal, and the exit status of a command they stopped (robustlip-eval, robustlip-train).

SLURM sends SIGTERM before a preemption or at the time limit and then, after a grace of 30-90 s,
SIGKILL; a user presses Ctrl-C. Either sets a flag that the evaluator asks before every forward pass
(robustlip.evaluation), so the work stops within seconds with what was measured kept. A second Ctrl-C
aborts at once (Python's ``KeyboardInterrupt``), as in every other robustlip command.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

#: Exit status of a command stopped by a signal: 128 + the signal number (the shell's convention).
EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class StopRequest:
    """Whether SIGTERM or Ctrl-C asked the command to stop, and which one.

    :meth:`install` makes the signals set the flag (and call ``on_request``, e.g. to raise Lightning's own
    stop flag) instead of killing the process; :meth:`restore` gives the previous handlers back. A second
    Ctrl-C aborts at once (Python's ``KeyboardInterrupt``). ``doing`` and ``aborting`` word the line printed
    on the first signal. robustlip-eval's evaluator asks :meth:`requested` before every forward pass;
    robustlip-train's :class:`~robustlip.callbacks.resume.SignalStop` uses it for Ctrl-C.
    """

    def __init__(self, doing: str = "stopping within seconds and keeping what was measured",
                 aborting: str = "abort without keeping it", on_request: Callable[[], None] | None = None) -> None:
        self.signal_name: str | None = None
        self.doing = doing
        self.aborting = aborting
        self.on_request = on_request
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signal_name or "SIGTERM"]

    def install(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Handle ``signals`` until :meth:`restore`. Handlers can only be set from the main thread (elsewhere the
        flag is never set); a signal the process started with ignored (a background job of a script, nohup)
        stays ignored."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            previous = signal.getsignal(sig)
            if previous != signal.SIG_IGN:
                self._previous[sig] = previous
                signal.signal(sig, self._handle)

    def restore(self) -> None:
        """The handlers from before :meth:`install`."""
        for sig, handler in self._previous.items():
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, handler if handler is not None else default)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.signal_name = self.signal_name or name
        if self.on_request is not None:
            self.on_request()
        print(f"\n{name}: {self.doing}{f' (Ctrl-C again to {self.aborting})' if name == 'SIGINT' else ''}",
              file=sys.stderr, flush=True)


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """SIGTERM and SIGINT set the flag of the yielded :class:`StopRequest` while the block runs."""
    request = StopRequest()
    request.install()
    try:
        yield request
    finally:
        request.restore()
