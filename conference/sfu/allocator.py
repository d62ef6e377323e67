"""Per-subscriber bandwidth: the downlink estimate and the choice of layers.

A commune on rural 4G cannot receive every camera at full rate.  For each
subscriber the server keeps a :class:`DownlinkEstimate` of what its link
carries, and :func:`allocate` shares it out: audio first (it is measured and
taken off the top), then the videos the page shows large, then the
thumbnails.  Each video gets the lowest layer if it fits, in that order;
whatever is left upgrades them, large ones first, up to the highest layer
each may have (its view and the point's profile).  A video for which even the
lowest layer does not fit is paused (``None``): audio keeps flowing.

The estimate
------------
Chromium receiving the server's offer (abs-send-time and ``goog-remb``, no
transport-cc) runs libwebrtc's receive-side estimator and sends REMB.  That
estimator only decreases on congestion (over-use of the link: growing queue
delay), and only increases up to 1.5 times what it receives.  So REMB is a
reliable *congestion* signal but cannot show spare capacity above what is
being sent: a subscriber held on the lowest layer would stay there.

:class:`DownlinkEstimate` therefore keeps its own value:

* a REMB at least 10 % below the highest of the last 2 s, or receiver-report
  loss above 10 %, is congestion: the estimate drops to that REMB (or 85 % of
  what was being sent) and no increase is tried for a while;
* otherwise the estimate follows REMB upward;
* when the allocation is limited by the estimate, a **trial** raises the
  estimate to what the next step up costs, for :data:`TRIAL_SECONDS`; if no
  congestion shows meanwhile, the new value stays (the link carried it),
  otherwise the estimate falls back and the next trial waits twice as long
  (2 s up to :data:`MAX_BACKOFF`).  Trials move one step at a time, so the
  extra load on a weak link lasts a few seconds and audio is never dropped
  for it: audio is reserved before any video.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: the estimate before the subscriber has said anything (bits/s)
INITIAL_ESTIMATE = 800_000.0
#: a REMB this much below the recent maximum is congestion
REMB_DROP = 0.9
#: receiver-report loss above this share is congestion
LOSS_CONGESTION = 0.10
#: loss above this share holds any increase
LOSS_HOLD = 0.02
TRIAL_SECONDS = 3.0
MIN_BACKOFF = 2.0
MAX_BACKOFF = 8.0
#: after congestion, no trial for this long
QUIET_AFTER_CONGESTION = 3.0
#: never estimate below this (the lowest layer of a thumbnail plus audio)
FLOOR = 50_000.0


@dataclass
class VideoWant:
    """One video subscription as the allocator sees it."""

    key: str
    #: the higher, the earlier it is served (2: shown large, 1: medium, 0: thumbnail)
    priority: int
    #: expected bits/s of each layer, lowest first
    rates: list[float]
    #: the highest layer index this subscriber may receive
    max_layer: int


def allocate(budget: float, wants: list[VideoWant]) -> dict[str, int | None]:
    """The layer each video gets within ``budget`` bits/s (None: paused)."""
    order = sorted(wants, key=lambda want: -want.priority)  # stable: large first
    chosen: dict[str, int | None] = {}
    left = budget
    for want in order:
        cost = want.rates[0] if want.rates else 0.0
        if want.max_layer >= 0 and cost <= left:
            chosen[want.key] = 0
            left -= cost
        else:
            chosen[want.key] = None
    for want in order:
        layer = chosen[want.key]
        if layer is None:
            continue
        while layer < min(want.max_layer, len(want.rates) - 1):
            step = want.rates[layer + 1] - want.rates[layer]
            if step > left:
                break
            left -= step
            layer += 1
        chosen[want.key] = layer
    return chosen


def cost_of(allocation: dict[str, int | None], wants: list[VideoWant]) -> float:
    """What ``allocation`` sends, in bits/s."""
    total = 0.0
    for want in wants:
        layer = allocation.get(want.key)
        if layer is not None and want.rates:
            total += want.rates[layer]
    return total


def next_step(allocation: dict[str, int | None], wants: list[VideoWant]) -> float | None:
    """The video rate needed for the first improvement of ``allocation`` in
    priority order (a paused video resumed, then one layer up), or None when
    every video has all it may have."""
    base = cost_of(allocation, wants)
    order = sorted(wants, key=lambda want: -want.priority)
    for want in order:
        layer = allocation.get(want.key)
        if layer is None and want.max_layer >= 0 and want.rates:
            return base + want.rates[0]
    for want in order:
        layer = allocation.get(want.key)
        if layer is not None and layer < min(want.max_layer, len(want.rates) - 1):
            return base + want.rates[layer + 1] - want.rates[layer]
    return None


class DownlinkEstimate:
    """What one subscriber's link carries, in bits/s (see the module doc)."""

    def __init__(self, initial: float = INITIAL_ESTIMATE) -> None:
        self.value = initial
        self._rembs: deque[tuple[float, float]] = deque()  # (time, bits/s)
        self.congested_at: float | None = None
        self.congestions = 0
        self.loss = 0.0
        #: (end time, value before the trial) while a trial runs
        self.trial: tuple[float, float] | None = None
        self.trials = 0
        self.backoff = MIN_BACKOFF
        self.next_trial = 0.0

    def _congestion(self, now: float, value: float) -> None:
        self.congestions += 1
        self.congested_at = now
        if self.trial is not None:
            before = self.trial[1]
            self.trial = None
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            value = min(value, before)
        self.value = max(FLOOR, min(self.value, value))
        self.next_trial = max(self.next_trial, now + max(self.backoff, QUIET_AFTER_CONGESTION))

    def on_remb(self, bitrate: float, now: float) -> None:
        rembs = self._rembs
        while rembs and now - rembs[0][0] > 2.0:
            rembs.popleft()
        recent = max((value for _, value in rembs), default=None)
        rembs.append((now, bitrate))
        if recent is not None and bitrate < recent * REMB_DROP:
            self._congestion(now, bitrate)
        elif self.loss <= LOSS_HOLD and bitrate > self.value:
            self.value = bitrate

    def on_loss(self, fraction: float, sending: float, now: float) -> None:
        """Receiver-report loss (0..1) while sending ``sending`` bits/s."""
        self.loss = fraction
        if fraction > LOSS_CONGESTION:
            self._congestion(now, 0.85 * sending)

    def tick(self, now: float, needed: float | None) -> None:
        """End a trial that lasted, or start one if ``needed`` (the next step's
        total) exceeds the estimate and the link has been quiet."""
        if self.trial is not None:
            if now >= self.trial[0]:
                self.trial = None
                self.backoff = MIN_BACKOFF
                self.next_trial = now + 1.0
            return
        if needed is None or needed <= self.value or now < self.next_trial:
            return
        if self.loss > LOSS_HOLD:
            return
        if self.congested_at is not None and now - self.congested_at < QUIET_AFTER_CONGESTION:
            return
        self.trials += 1
        self.trial = (now + TRIAL_SECONDS, self.value)
        self.value = needed
