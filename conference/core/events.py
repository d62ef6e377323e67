"""Process-wide operational events and counters, for conference/ops (metrics, webhooks).

The domain, the real-time layer, the recorder and the mailer report here what an
operator watches and what an outside system is told of, without importing what
listens:

* `count`: a cheap event an operator counts (a database failure, a mail sent or
  refused, a composition done); `/metrics` reads `counters` at scrape time.
* `emit`: something a webhook announces (``meeting.started``, ``recording.sealed``...);
  every listener of `listeners` is called with ``(type, data)`` in the emitting
  thread (the recorder's, a database thread, the composition jobs' thread), so a
  listener hands the event over to its own loop and never blocks.

Both are for events that happen a few times a second at most: the media plane's
per-packet counters stay on its own objects (read at scrape time, conference/ops/metrics.py).
Neither ever raises into its caller.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["count", "counters", "emit", "listeners", "snapshot"]

logger = logging.getLogger(__name__)

#: name -> how many times it happened in this process (`count`)
counters: Counter[str] = Counter()
_lock = threading.Lock()

#: called with ``(type, data)`` by `emit`, in the emitting thread
listeners: list[Callable[[str, dict[str, Any]], None]] = []


def count(name: str, amount: int = 1) -> None:
    """Add ``amount`` to the counter ``name`` (thread-safe)."""
    with _lock:
        counters[name] += amount


def snapshot() -> dict[str, int]:
    """A copy of `counters` (thread-safe)."""
    with _lock:
        return dict(counters)


def emit(event_type: str, data: dict[str, Any]) -> None:
    """Tell every listener that ``event_type`` happened; a listener's error is logged."""
    for listener in list(listeners):
        try:
            listener(event_type, data)
        except Exception:
            logger.exception("a listener of %s failed", event_type)
