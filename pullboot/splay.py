"""Splay: a delay before fetching, so a fleet does not hit its source in the same second.

The delay is random in ``[0, splay)``, or with ``splay_stable`` derived from
the instance id (the hostname off EC2) so that each instance keeps its own
slot run after run. The first run on an instance is not delayed unless
``splay_first_boot`` asks for it: a new instance should come up as fast as it
can.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplayDecision:
    """How long to wait and why (logged, and ``seconds`` goes into the report)."""

    seconds: float
    reason: str


def decide(*, splay: float, stable: bool, first_boot: bool, splay_first_boot: bool,
           key: str) -> SplayDecision:
    """The delay for this run. ``key`` identifies the instance (for ``stable``)."""
    if splay <= 0:
        return SplayDecision(0.0, "no splay configured")
    if first_boot and not splay_first_boot:
        return SplayDecision(0.0, "first run on this instance (set splay_first_boot to "
                             "splay it too)")
    if stable:
        digest = hashlib.sha256(key.encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        return SplayDecision(round(fraction * splay, 3), f"stable for {key}")
    return SplayDecision(round(random.uniform(0, splay), 3), "random")


def wait(decision: SplayDecision, cancel: threading.Event) -> bool:
    """Sleep for the decided delay; returns False when ``cancel`` cut it short."""
    if decision.seconds <= 0:
        log.debug("splay skipped: %s", decision.reason)
        return True
    log.info("splay: waiting %.1fs before fetching (%s)", decision.seconds, decision.reason)
    return not cancel.wait(decision.seconds)
