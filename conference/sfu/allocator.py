"""Per-subscriber bandwidth: the downlink estimate and the choice of layers.

A commune on rural 4G cannot receive every camera at full rate.  For each
subscriber the server keeps a :class:`DownlinkEstimate` of what its link
carries, and :func:`allocate` shares it out: audio first (it is measured and
taken off the top), then the videos the page shows large, then the
thumbnails.  Each video gets the lowest layer if it fits, in that order;
whatever is left upgrades them, large ones first, up to the highest layer
each may have (its view and the point's profile).  A video for which even the
lowest layer does not fit is paused (``None``): audio keeps flowing.  Going
above what a video receives now (or resuming it) needs :data:`UPGRADE_MARGIN`
more than it costs, and what it has is kept down to :data:`KEEP_MARGIN` of its
cost, so that a budget near a layer's rate does not flip the layer (and ask
for a keyframe) at every tick.

The estimate
------------
Chromium receiving the server's offer (abs-send-time and ``goog-remb``, no
transport-cc) runs libwebrtc's receive-side estimator and sends REMB.  That
estimator only decreases on congestion (over-use of the link: growing queue
delay), and only increases up to 1.5 times what it receives, by about 8 % a
second.  So REMB is a reliable *congestion* signal but cannot show spare
capacity above what is being sent: a subscriber held on the lowest layer
would stay there.

:class:`DownlinkEstimate` therefore keeps its own value:

* once REMB has caught up with what is sent (it starts low and climbs ~8 %
  a second: see :meth:`DownlinkEstimate.on_remb`), a REMB at least 10 % below
  the highest of the last 2 s, or receiver-report
  loss above 10 % (the worst report since the last tick), is congestion: the
  estimate drops to that REMB (or 85 % of what was being sent) and no probe is
  tried for :data:`QUIET_AFTER_CONGESTION` seconds;
* otherwise the estimate follows REMB upward;
* when the allocation is limited by the estimate, a **probe** sends padding
  (retransmissions of recent packets, which the receiver discards but its
  estimator counts) on top of the media, up to a target at most
  :data:`PROBE_GROWTH` times the current rate, for :data:`PROBE_SECONDS`.  The
  layers do not change meanwhile, so a failed probe costs the subscriber a
  moment of queueing, not a picture it cannot receive.  If no congestion shows,
  the estimate becomes the target (the link carried it) and the allocation
  moves up; otherwise the probe stops at once (the estimate stays what it was:
  the padding caused the congestion), and the next one waits twice as long (2 s
  up to :data:`MAX_BACKOFF`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: the estimate before the subscriber has said anything (bits/s): one large video
#: at the middle layer and audio
INITIAL_ESTIMATE = 600_000.0
#: a REMB this much below the recent maximum is congestion
REMB_DROP = 0.9
#: receiver-report loss above this share is congestion
LOSS_CONGESTION = 0.10
#: loss above this share holds any increase
LOSS_HOLD = 0.02
#: a probe lasts this long (seconds) unless congestion stops it
PROBE_SECONDS = 1.5
#: a probe's target is at most this many times the current estimate or sending rate
PROBE_GROWTH = 1.8
MIN_BACKOFF = 2.0
MAX_BACKOFF = 6.0
#: after congestion, no probe for this long
QUIET_AFTER_CONGESTION = 3.0
#: never estimate below this (the lowest layer of a thumbnail plus audio)
FLOOR = 50_000.0
#: an upgrade (or a resume) needs this much more than its cost
UPGRADE_MARGIN = 1.15
#: what a video has now is kept while the budget covers this share of its cost
#: (libwebrtc's REMB after congestion is 85 % of what arrived: what was sent fits)
KEEP_MARGIN = 0.8


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
    #: the layer it receives now (None: paused or not started)
    current: int | None = None


def _margin(want: VideoWant, layer: int) -> float:
    """:data:`UPGRADE_MARGIN` above what ``want`` has now, :data:`KEEP_MARGIN` up to it."""
    return UPGRADE_MARGIN if want.current is None or layer > want.current else KEEP_MARGIN


def allocate(budget: float, wants: list[VideoWant]) -> dict[str, int | None]:
    """The layer each video gets within ``budget`` bits/s (None: paused)."""
    order = sorted(wants, key=lambda want: -want.priority)  # stable: large first
    chosen: dict[str, int | None] = {}
    left = budget
    for want in order:
        cost = want.rates[0] * _margin(want, 0) if want.rates else 0.0
        if want.max_layer >= 0 and cost <= left:
            chosen[want.key] = 0
            left -= want.rates[0] if want.rates else 0.0
        else:
            chosen[want.key] = None
    for want in order:
        layer = chosen[want.key]
        if layer is None:
            continue
        while layer < min(want.max_layer, len(want.rates) - 1):
            step = want.rates[layer + 1] - want.rates[layer]
            if want.rates[layer + 1] * _margin(want, layer + 1) - want.rates[layer] > left:
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
    priority order (a paused video resumed, then one layer up), margin
    included, or None when every video has all it may have."""
    base = cost_of(allocation, wants)
    order = sorted(wants, key=lambda want: -want.priority)
    for want in order:
        layer = allocation.get(want.key)
        if layer is None and want.max_layer >= 0 and want.rates:
            return base + want.rates[0] * UPGRADE_MARGIN
    for want in order:
        layer = allocation.get(want.key)
        if layer is not None and layer < min(want.max_layer, len(want.rates) - 1):
            return base + want.rates[layer + 1] * UPGRADE_MARGIN - want.rates[layer]
    return None


class DownlinkEstimate:
    """What one subscriber's link carries, in bits/s (see the module doc)."""

    def __init__(self, initial: float = INITIAL_ESTIMATE) -> None:
        self.value = initial
        self._rembs: deque[tuple[float, float]] = deque()  # (time, bits/s)
        self.congested_at: float | None = None
        self.congestions = 0
        self.loss = 0.0
        #: (end time, target bits/s) while a probe runs
        self.probe: tuple[float, float] | None = None
        self.probes = 0
        self.probes_failed = 0
        self.backoff = MIN_BACKOFF
        self.next_probe = 0.0
        #: whether REMB has caught up with what is sent (see :meth:`on_remb`)
        self.remb_valid = False

    def _congestion(self, now: float, value: float) -> None:
        self.congestions += 1
        self.congested_at = now
        if self.probe is not None:
            # the probe's own padding overloaded the link: stop it; what was sent
            # before it still fits, so the estimate stays
            self.probe = None
            self.probes_failed += 1
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            self.next_probe = max(self.next_probe, now + self.backoff)
            return
        self.value = max(FLOOR, min(self.value, value))
        self.next_probe = max(self.next_probe, now + max(self.backoff, QUIET_AFTER_CONGESTION))

    def on_remb(self, bitrate: float, now: float, sending: float = 0.0) -> None:
        """A REMB from the subscriber while sending ``sending`` bits/s.

        libwebrtc starts its receive-side estimate from the first second's
        incoming rate (often audio alone) and raises it by ~8 % a second: for
        its first 10-20 s a REMB far below what is sent says nothing of the
        link.  REMB counts only once it has reached 80 % of the sending rate;
        until then loss alone tells congestion.
        """
        if not self.remb_valid:
            if sending <= 0 or bitrate < 0.8 * sending:
                return
            self.remb_valid = True
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
        """The worst receiver-report loss (0..1) since the last call, while
        sending ``sending`` bits/s."""
        self.loss = fraction
        if fraction > LOSS_CONGESTION:
            # nothing allocated yet (the first tick): back off from the estimate itself
            self._congestion(now, 0.85 * (sending if sending > 0 else self.value))

    def padding(self, sending: float) -> float:
        """Bits/s of padding to send now on top of ``sending`` (0: no probe)."""
        if self.probe is None:
            return 0.0
        return max(0.0, self.probe[1] - sending)

    def tick(self, now: float, needed: float | None, sending: float) -> None:
        """End a probe that lasted (success), or start one if ``needed`` (the
        next step's total) exceeds the estimate and the link has been quiet."""
        if self.probe is not None:
            if now >= self.probe[0]:
                self.value = max(self.value, self.probe[1])
                self.probe = None
                self.backoff = MIN_BACKOFF
                self.next_probe = now + 0.5
            return
        if needed is None or needed <= self.value or now < self.next_probe:
            return
        if self.loss > LOSS_HOLD:
            return
        if self.congested_at is not None and now - self.congested_at < QUIET_AFTER_CONGESTION:
            return
        target = min(needed, max(self.value, sending) * PROBE_GROWTH)
        if target <= self.value:
            return
        self.probes += 1
        self.probe = (now + PROBE_SECONDS, target)
