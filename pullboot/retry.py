"""Deadlines and the one retry/backoff loop (IMDS, source fetches, lifecycle signals).

A :class:`Deadline` is a point in monotonic time plus the run's cancel flag
(set by SIGTERM/SIGINT): every wait in pullboot asks it how long it may still
wait, and every wait ends when the flag is set. :func:`retry` calls an attempt
until it succeeds, sleeping a full-jitter exponential backoff between tries,
and gives up (re-raising the last error) when the error is not retryable, the
deadline has passed, or the run is canceled.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Cancel = threading.Event | Callable[[], bool] | None
# How often a wait on a plain callable (not an Event) looks at the cancel flag.
_CANCEL_POLL_S = 0.1


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Deadline:
    """``at`` (on ``clock``) by which an operation must end; ``cancel`` ends it earlier.

    ``cancel`` may be a ``threading.Event`` (waits wake at once when it is set)
    or a callable polled every 0.1 s. ``clock`` and ``sleep`` are injectable so
    tests can run budgets on virtual time.
    """

    at: float
    cancel: Cancel = None
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    sleep: Callable[[float], None] | None = field(default=None, compare=False)

    @classmethod
    def after(cls, seconds: float, *, cancel: Cancel = None,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] | None = None) -> Deadline:
        """A deadline ``seconds`` from now (``math.inf``: none, but still cancelable)."""
        return cls(clock() + seconds, cancel, clock, sleep)

    def within(self, seconds: float) -> Deadline:
        """The earlier of this deadline and ``seconds`` from now; same cancel flag."""
        return Deadline(min(self.at, self.clock() + seconds), self.cancel, self.clock, self.sleep)

    def left(self) -> float:
        """Seconds left (0 when passed; ``inf`` for no deadline)."""
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.at

    def canceled(self) -> bool:
        """True once the run's cancel flag is set."""
        if self.cancel is None:
            return False
        if isinstance(self.cancel, threading.Event):
            return self.cancel.is_set()
        return bool(self.cancel())

    def done(self) -> bool:
        """Expired or canceled: nothing more may be started."""
        return self.expired() or self.canceled()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` (cut at the deadline); True if canceled meanwhile."""
        seconds = min(seconds, self.left())
        if self.sleep is not None:  # virtual time (tests)
            if seconds > 0:
                self.sleep(seconds)
            return self.canceled()
        if isinstance(self.cancel, threading.Event):
            return self.cancel.wait(seconds) if seconds > 0 else self.cancel.is_set()
        end = time.monotonic() + seconds
        while not self.canceled():
            now = time.monotonic()
            if now >= end:
                return False
            time.sleep(min(_CANCEL_POLL_S, end - now))
        return True


def unbounded(cancel: Cancel = None) -> Deadline:
    """No time limit, only the cancel flag."""
    return Deadline(math.inf, cancel)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: try ``n`` waits U(0, min(cap, base * 2**n))."""

    base: float = 0.5
    cap: float = 10.0

    def delay(self, tries: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** tries))  # jitter, not crypto


def retry(attempt: Callable[[int], T], *, retryable: Callable[[Exception], bool],
          deadline: Deadline, backoff: Backoff, what: str,
          level: int = logging.DEBUG) -> T:
    """Call ``attempt(try_number)`` until it returns; the one retry loop of pullboot.

    An exception for which ``retryable`` is false propagates at once. A
    retryable one is retried after a backoff delay, cut to the deadline,
    unless the deadline has passed or the run is canceled: then the last
    exception propagates, and the caller (which knows ``deadline``) words the
    final error. ``attempt`` should bound its own I/O by ``deadline`` too.
    Each retry is logged at ``level``.
    """
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(tries)
        except Exception as exc:
            if not retryable(exc) or deadline.done():
                raise
            delay = backoff.delay(tries)
            log.log(level, "%s failed (%s); retry %d in %.1fs", what,
                    getattr(exc, "message", exc), tries, min(delay, deadline.left()))
            # No new try once the deadline is reached: it could only be cut short,
            # and the error worth reporting is the last real one.
            if deadline.wait(delay) or deadline.done():
                raise
