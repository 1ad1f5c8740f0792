"""Telling Ctrl-C from ``break`` when the consumer of a stream leaves its loop.

When the body of ``for i, r in f.stream(x):`` raises, Python closes the stream's
generator with :class:`GeneratorExit`, exactly as after ``break``: the generator cannot see
the exception that is on its way out. A ``break`` must let running calls finish, Ctrl-C
must stop them. So while a stream is open, conc-ml's SIGINT handler counts the signals
before it raises :class:`KeyboardInterrupt` as Python's own handler does, and the stream
asks on closing whether one came.

The handler is installed only in the main thread and only over Python's default one: a
program with its own SIGINT handler keeps it (its streams then treat Ctrl-C in the loop
body as a ``break``, as any generator does).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["InterruptWatch"]

_lock = threading.Lock()
_signals_seen = 0
_open_watches = 0


def _count_then_interrupt(signum: int, frame: FrameType | None) -> None:
    global _signals_seen
    _signals_seen += 1
    signal.default_int_handler(signum, frame)


class InterruptWatch:
    """Says whether SIGINT arrived between its creation and :meth:`interrupted`; close it after use."""

    __slots__ = ("_installed", "_start")

    def __init__(self) -> None:
        global _open_watches
        self._installed = False
        self._start = _signals_seen
        if threading.current_thread() is not threading.main_thread():
            return
        with _lock:
            current = signal.getsignal(signal.SIGINT)
            if current is _count_then_interrupt:
                _open_watches += 1
                self._installed = True
            elif current is signal.default_int_handler:
                signal.signal(signal.SIGINT, _count_then_interrupt)
                _open_watches += 1
                self._installed = True

    def interrupted(self) -> bool:
        """Whether Ctrl-C (SIGINT) came since the watch began."""
        return _signals_seen != self._start

    def close(self) -> None:
        """Stop watching; the last watch to close puts Python's handler back."""
        global _open_watches
        if not self._installed:
            return
        self._installed = False
        with _lock:
            _open_watches -= 1
            # Closed from another thread (a generator finalised elsewhere): the next watch
            # that closes in the main thread restores the handler.
            if (
                _open_watches == 0
                and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is _count_then_interrupt
            ):
                signal.signal(signal.SIGINT, signal.default_int_handler)
