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
more than the layer's recent *peak* rate (an encoder swings with motion and
keyframes: a layer priced at its mean overflows a link that barely holds the
mean, and the subscriber freezes), and what it has is kept down to
:data:`KEEP_MARGIN` of its *mean* rate, so that a budget near a layer's rate
does not flip the layer (and ask for a keyframe) at every tick.

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
  the highest of the last 2 s and below the sending rate, or receiver-report
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

#: the estimate before the subscriber has said anything (bits/s): audio and the
#: lowest layer of a video or two, not more: a link is never given a layer it has
#: not shown it carries (probes raise the estimate within seconds on a good link)
INITIAL_ESTIMATE = 300_000.0
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
#: after a failed probe, congestion signals for this long are its own aftermath
#: (receiver reports and REMBs of the padding's moment arrive late): ignored
PROBE_SETTLE = 1.0
#: ... and a REMB lower than before, for this long: libwebrtc's estimate, cut by
#: the probe's queueing, climbs back only ~8 % a second
REMB_SETTLE = 3.0
#: a REMB lowers the estimate to no less than this share of what was being sent
#: (libwebrtc's own answer to over-use is 85 % of what arrived) ...
MAX_DECREASE = 0.85
#: ... and the estimate is lowered at most once in this many seconds
DECREASE_INTERVAL = 0.5
#: after congestion, no probe for this long
QUIET_AFTER_CONGESTION = 3.0
#: never estimate below this (the lowest layer of a thumbnail plus audio)
FLOOR = 50_000.0
#: an upgrade (or a resume) needs this much more than its cost
UPGRADE_MARGIN = 1.15
#: the lowest layer (pausing the video is the next step) is kept down to this share
#: of its cost: a pause loses the picture and costs a keyframe to come back; if
#: the link really cannot carry it, loss shows and brings the estimate lower
KEEP_LOWEST = 0.6
#: what a video has now is kept while the budget covers this share of its cost
#: (libwebrtc's REMB after congestion is 85 % of what arrived: what was sent fits)
KEEP_MARGIN = 0.8


@dataclass
class VideoWant:
    """One video subscription as the allocator sees it."""

    key: str
    #: the higher, the earlier it is served (2: shown large, 1: medium, 0: thumbnail)
    priority: int
    #: bits/s each layer may need (its recent peak), lowest first: what an upgrade
    #: (or a resume) must fit
    rates: list[float]
    #: the highest layer index this subscriber may receive
    max_layer: int
    #: the layer it receives now (None: paused or not started)
    current: int | None = None
    #: bits/s each layer sends on average (None: ``rates``): what keeping a layer
    #: costs, and what the allocation is expected to send
    means: list[float] | None = None

    def cost(self, layer: int) -> float:
        """What ``layer`` takes from the budget: its mean if the video has it (or a
        higher one) now, else its peak."""
        if self.current is not None and layer <= self.current and self.means:
            return self.means[layer]
        return self.rates[layer]

    def need(self, layer: int) -> float:
        """The budget ``layer`` needs: :data:`KEEP_MARGIN` of its mean to keep it,
        :data:`UPGRADE_MARGIN` above its peak to go up to it (or to resume)."""
        if self.current is not None and layer <= self.current:
            return self.cost(layer) * (KEEP_LOWEST if layer == 0 else KEEP_MARGIN)
        return self.rates[layer] * UPGRADE_MARGIN


def allocate(budget: float, wants: list[VideoWant]) -> dict[str, int | None]:
    """The layer each video gets within ``budget`` bits/s (None: paused)."""
    order = sorted(wants, key=lambda want: -want.priority)  # stable: large first
    chosen: dict[str, int | None] = {}
    left = budget
    for want in order:
        if want.rates and want.max_layer >= 0 and want.need(0) <= left:
            chosen[want.key] = 0
            left -= want.cost(0)
        else:
            chosen[want.key] = None
    for want in order:
        layer = chosen[want.key]
        if layer is None:
            continue
        while layer < min(want.max_layer, len(want.rates) - 1):
            if want.need(layer + 1) - want.cost(layer) > left:
                break
            left -= want.cost(layer + 1) - want.cost(layer)
            layer += 1
        chosen[want.key] = layer
    return chosen


def cost_of(allocation: dict[str, int | None], wants: list[VideoWant]) -> float:
    """What ``allocation`` is expected to send, in bits/s (the layers' means)."""
    total = 0.0
    for want in wants:
        layer = allocation.get(want.key)
        if layer is not None and want.rates:
            total += (want.means or want.rates)[layer]
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
            return base + want.rates[layer + 1] * UPGRADE_MARGIN - (want.means or want.rates)[layer]
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
        self.probe_failed_at = float("-inf")
        self.decreased_at = -DECREASE_INTERVAL
        self.backoff = MIN_BACKOFF
        self.next_probe = 0.0
        #: whether REMB has caught up with what is sent (see :meth:`on_remb`)
        self.remb_valid = False

    def _congestion(self, now: float, value: float, lowest: float = 0.0) -> None:
        """Congestion: the estimate drops to ``value`` (not below ``lowest``), at
        most once per :data:`DECREASE_INTERVAL`."""
        if self.probe is None and now - self.probe_failed_at < PROBE_SETTLE:
            return  # the failed probe's aftermath
        if self.probe is not None:
            # the probe's own padding overloaded the link: stop it; what was sent
            # before it still fits, so the estimate stays
            self.congestions += 1
            self.congested_at = now
            self.probe = None
            self.probes_failed += 1
            self.probe_failed_at = now
            self._rembs.clear()
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            self.next_probe = max(self.next_probe, now + self.backoff)
            return
        if now - self.decreased_at < DECREASE_INTERVAL:
            return
        self.congestions += 1
        self.congested_at = self.decreased_at = now
        self.value = max(FLOOR, min(self.value, max(value, lowest)))
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
        if self.probe is None and now - self.probe_failed_at < REMB_SETTLE:
            if bitrate < self.value:
                return  # the failed probe's aftermath: not even kept in the window
        rembs = self._rembs
        while rembs and now - rembs[0][0] > 2.0:
            rembs.popleft()
        recent = max((value for _, value in rembs), default=None)
        rembs.append((now, bitrate))
        carried = sending + self.padding(sending)
        if recent is not None and bitrate < recent * REMB_DROP and bitrate < carried:
            # below what is sent: libwebrtc's over-use answer (85 % of what
            # arrived).  A REMB that falls but stays above the sending rate is its
            # cap (1.5 times what arrives) following a lower rate, after a pause
            # or a move down: no sign of congestion
            # lowered to no less than MAX_DECREASE of what was sent: after a burst,
            # libwebrtc's estimate can collapse for a moment far below what the
            # link carries; a link that really fell keeps signalling (and losing)
            self._congestion(now, bitrate, carried * MAX_DECREASE)
        elif self.loss <= LOSS_HOLD and bitrate > self.value:
            self.value = bitrate

    def on_loss(self, fraction: float, sending: float, now: float) -> None:
        """The video loss (0..1) the subscriber reported since the last call,
        while sending ``sending`` bits/s.  Above :data:`LOSS_CONGESTION` the
        estimate drops to what was sent, less half the loss (as GCC's loss-based
        controller does)."""
        self.loss = fraction
        if fraction > LOSS_CONGESTION:
            # nothing allocated yet (the first tick): back off from the estimate itself
            carried = sending if sending > 0 else self.value
            self._congestion(now, carried * (1 - fraction / 2))

    def on_probe_loss(self, now: float) -> None:
        """The subscriber asks for packets again while a probe runs (NACKs come
        within a round trip, long before a receiver report or a REMB): the probe
        overloads the link; it stops at once."""
        if self.probe is not None:
            self._congestion(now, self.value)

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
