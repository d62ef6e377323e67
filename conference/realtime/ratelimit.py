"""How many messages of each type a WebSocket session may send: a sliding window.

Every message type has a limit per `WINDOW` seconds (`LIMITS`, else `DEFAULT`), and a
session has an overall limit (`TOTAL`).  What a page sends in bursts (ICE candidates
while connecting, subscriptions when the chair turns a mosaic page, its view while a
window is resized) gets room for that; everything else, and above all what reaches
other people (hands, declines of an unmute request, chat, the chair's commands), gets
a rate no person reaches by hand.  A message over the limit is refused with
``rate-limited`` and counts as an error of the session, so a flood closes it (4400)
like any other stream of bad messages.  Pure: the caller gives the time.
"""

from __future__ import annotations

from collections import deque

#: the window of every limit (s)
WINDOW = 10.0
#: messages of one type per window, for types not in `LIMITS`
DEFAULT = 20
LIMITS = {
    "candidate": 200,
    "subscribe": 200,
    "unsubscribe": 200,
    "view": 100,
    "admit": 100,
    "refuse": 100,
    "ping": 40,
    "offer": 40,
    # (an answer to the offer the server waits on is not counted: messages.dispatch)
    "answer": 40,
    # each gathers new ICE candidates (sockets): a page asks once per network change
    "restart-ice": 4,
}
#: messages of all types per window
TOTAL = 500


class MessageRates:
    """The recent messages of one session, by type."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def refusal(self, kind: str, now: float) -> str | None:
        """None if a message of ``kind`` at ``now`` is within the limits (it is then
        counted), else why not."""
        limit = LIMITS.get(kind, DEFAULT)
        times = self._times.get(kind)
        if times is None:
            if len(self._times) >= 64:  # unknown types are refused anyway: keep it small
                self._times.clear()
            times = self._times[kind] = deque()
        for recent in (times, self._all):
            while recent and now - recent[0] >= WINDOW:
                recent.popleft()
        if len(times) >= limit:
            return f"at most {limit} '{kind[:40]}' messages in {WINDOW:.0f} s"
        if len(self._all) >= TOTAL:
            return f"at most {TOTAL} messages in {WINDOW:.0f} s"
        times.append(now)
        self._all.append(now)
        return None
