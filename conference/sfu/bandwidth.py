"""The room's bandwidth loop: layers per subscriber, and layers nobody receives.

Every :data:`TICK` seconds, :class:`BandwidthManager`:

1. measures each layer's bitrate;
2. for each browser subscriber, feeds its :class:`~.allocator.DownlinkEstimate`
   (its latest REMB, the loss in its receiver reports), runs
   :func:`~.allocator.allocate` over its video subscriptions (what its page
   shows large first, then thumbnails, each capped by the view and by the
   point's profile), moves each subscription to its layer (on a keyframe) or
   pauses it, and tells the page which videos are paused (``video-paused``);
3. "dynacast": for each simulcast publication, the layers some subscription
   wants (or forwards, or the recorder records) stay on; a layer nobody has
   wanted for :data:`LAYER_OFF_AFTER` seconds is switched off at the
   publisher (``layers`` message: the page sets ``active=false`` on that
   encoding), and switched on again as soon as someone wants it.  The lowest
   layer always stays on, so that a new subscriber's first picture does not
   wait for an encoder to start.

Only subscribers that say how they show each video (the ``view`` message:
the room page) are allocated.  Others (Python clients, WHEP viewers, the
program feed) get the top layer the publisher sends, as before simulcast.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .allocator import DownlinkEstimate, VideoWant, allocate, cost_of, next_step

if TYPE_CHECKING:
    from .participant import Participant
    from .publication import Publication
    from .room import Room
    from .subscription import Subscription

logger = logging.getLogger(__name__)

TICK = 0.5
#: a probe's padding goes out every this many seconds
PROBE_STEP = 0.02
LAYER_OFF_AFTER = 3.0
#: a probe stops when the subscriber NACKs this many packets, and this share of
#: those forwarded since it began (a link with a little random loss still passes)
PROBE_NACKS = 2
PROBE_NACK_SHARE = 0.03
#: loss is judged over at least this many packets expected ...
LOSS_PACKETS = 30
#: ... or over this many seconds, whichever comes first
LOSS_WINDOW = 2.0
#: assumed bits/s of each layer before it has been measured, by layer count
NOMINAL_RATES = {
    1: [1_000_000.0],
    2: [250_000.0, 1_200_000.0],
    3: [150_000.0, 500_000.0, 1_400_000.0],
}
#: a point's bandwidth profile -> the highest layer index it receives (-1: no video)
PROFILE_CEILING = {"high": 2, "low": 1, "audio": -1}
#: how large the page shows a video -> the highest layer it needs (and its priority)
VIEW_SIZES = {"large": 2, "medium": 1, "small": 0}


def layer_rates(publication: Publication, now: float, peak: bool = True) -> list[float]:
    """Expected bits/s of each layer, increasing: its peak of the last seconds
    (see :attr:`~.publication.Layer.peak`; with ``peak`` false, its mean), but
    no less than the nominal rate for an upper layer that has not been sent for
    long (:meth:`~.publication.Layer.settled`): a layer dynacast just switched
    back on looks cheap while its encoder ramps up, and an upgrade priced so
    floods a link that cannot carry it.  The lowest layer (the only one of a
    screen share) is what it measures: it is never an upgrade, only kept or
    paused."""
    count = len(publication.layers)
    nominal = NOMINAL_RATES.get(count) or [1_000_000.0 * (i + 1) for i in range(count)]
    rates: list[float] = []
    for index, layer in enumerate(publication.layers):
        rate = layer.peak if peak else layer.bitrate
        if rate <= 0 or (peak and index > 0 and not layer.settled(now)):
            rate = max(rate, nominal[index])
        if rates:
            rate = max(rate, rates[-1] * 1.2)
        rates.append(rate)
    return rates


class SubscriberLink:
    """What the server knows of one subscriber's downlink and view."""

    def __init__(self) -> None:
        self.estimate = DownlinkEstimate()
        #: publication id -> how large the page shows it (``VIEW_SIZES``); a video
        #: the page did not mention is taken as large.  None until the client sent a
        #: ``view``: only such clients (the room page) are allocated
        self.sizes: dict[str, str] | None = None
        self.paused: set[str] = set()
        #: videos the allocation would pause: paused only on the second tick in a row
        self.pausing: set[str] = set()
        self.remb_seen = 0.0
        #: video packets reported lost and expected since the loss was last judged
        self.lost = 0
        self.expected = 0
        self.loss_judged = 0.0
        #: bits/s the server sends this subscriber (audio + allocated video)
        self.sending = 0.0
        #: bits/s of probe padding to send now
        self.padding = 0.0
        self.probe_task: asyncio.Task[None] | None = None
        #: the estimate's (congestions, probes, failed probes) when last logged
        self.logged = (0, 0, 0)


class BandwidthManager:
    """Runs the allocation and dynacast of one room (see the module doc)."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.links: dict[str, SubscriberLink] = {}
        #: publication id -> (active flags sent, time each layer was last wanted)
        self._layers: dict[str, tuple[list[bool], list[float]]] = {}
        self.on_layers: Callable[[Publication, list[bool]], None] | None = None

    def link(self, participant_id: str) -> SubscriberLink:
        link = self.links.get(participant_id)
        if link is None:
            link = self.links[participant_id] = SubscriberLink()
        return link

    def manages(self, participant_id: str) -> bool:
        """Whether this subscriber's layers are allocated (it sent a ``view``)."""
        link = self.links.get(participant_id)
        return link is not None and link.sizes is not None

    def set_view(self, participant: Participant, sizes: dict[str, str]) -> None:
        """The client's ``view``: from the first one on, its layers are allocated,
        and its videos start from the lowest layer, raised as the estimate allows
        (a weak link is never flooded with the top layer while it is measured)."""
        link = self.link(participant.id)
        first = link.sizes is None
        link.sizes = sizes
        if first:
            for subscription in participant.subscriptions.values():
                if subscription.kind == "video" and subscription.max_layer is None:
                    subscription.max_layer = 0
                    subscription.update_layer()

    def forget(self, participant_id: str) -> None:
        self.links.pop(participant_id, None)

    def publication_gone(self, publication_id: str) -> None:
        self._layers.pop(publication_id, None)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(TICK)
                try:
                    self.tick(time.monotonic())
                except Exception:  # the loop must outlive any one bad state
                    logger.exception("room %s: bandwidth tick failed", self.room.meeting_id)
        except asyncio.CancelledError:
            pass

    def tick(self, now: float) -> None:
        publications = [
            publication
            for participant in self.room.participants.values()
            for publication in participant.publications.values()
        ]
        for publication in publications:
            for layer in publication.layers:
                layer.measure(now)
            if publication.kind == "video":
                publication.note_slow_keyframes(now)
        for participant in list(self.room.participants.values()):
            link = self.links.get(participant.id)
            if link is not None and link.sizes is not None and participant.subscriptions:
                self._allocate(participant, link, now)
            else:  # the top layer, or the best one the publisher sends now
                for subscription in participant.subscriptions.values():
                    if subscription.kind == "video":
                        subscription.update_layer(now)
        self._dynacast(publications, now)

    # -- allocation ---------------------------------------------------------------
    @staticmethod
    def _feedback(participant: Participant, link: SubscriberLink, now: float) -> None:
        """Feed the subscriber's latest REMB, and its video loss, to its estimate.

        Loss is counted over the receiver reports' packets (lost / expected), and
        judged once :data:`LOSS_PACKETS` were expected or :data:`LOSS_WINDOW`
        seconds passed: one report's fraction over a handful of packets (a low
        layer sends ~15 a second) says 66 % for two packets lost of three.
        """
        estimate = link.estimate
        for subscription in participant.subscriptions.values():
            sender = subscription.sender
            if sender.remote_bitrate is not None and sender.remote_bitrate_time > link.remb_seen:
                link.remb_seen = sender.remote_bitrate_time
                estimate.on_remb(float(sender.remote_bitrate), now, link.sending)
            if subscription.kind == "video":
                link.lost += sender.report_lost
                link.expected += sender.report_expected
                sender.report_lost = sender.report_expected = 0
        if link.expected >= LOSS_PACKETS or now - link.loss_judged >= LOSS_WINDOW:
            loss = link.lost / link.expected if link.expected else 0.0
            estimate.on_loss(loss, link.sending, now)
            link.lost = link.expected = 0
            link.loss_judged = now

    def _allocate(self, participant: Participant, link: SubscriberLink, now: float) -> None:
        estimate = link.estimate
        sizes = link.sizes or {}
        self._feedback(participant, link, now)
        audio = 0.0
        videos: list[tuple[str, Subscription]] = []
        for key, subscription in participant.subscriptions.items():
            if subscription.kind == "audio":
                if subscription.source is not None:
                    rate = subscription.source.layers[0].bitrate
                    # RED: each packet carries the frame before it too
                    audio += 2 * rate if subscription.sender.red_block_pt is not None else rate
            elif subscription.source is not None or subscription.pending is not None:
                videos.append((key, subscription))
        ceiling = PROFILE_CEILING.get(participant.profile, 2)
        wants: list[VideoWant] = []
        for key, subscription in videos:
            publication = subscription.pending or subscription.source
            assert publication is not None
            top = len(publication.layers) - 1
            size = VIEW_SIZES.get(sizes.get(key, "large"), 2)
            max_layer = min(top, size, ceiling)
            current = None if subscription.suspended else subscription.max_layer
            if current is None and not subscription.suspended:
                current = top  # not allocated yet: it gets the top layer
            wants.append(
                VideoWant(
                    key,
                    size,
                    layer_rates(publication, now),
                    max_layer,
                    current,
                    layer_rates(publication, now, peak=False),
                )
            )
        chosen = allocate(max(estimate.value - audio, 0.0), wants)
        needed = next_step(chosen, wants)
        forwarded: dict[str, int | None] = {}
        for key, subscription in videos:
            layer = chosen.get(key)
            if layer is None and key not in link.paused and key not in link.pausing:
                if ceiling >= 0 and subscription.max_layer is not None:
                    link.pausing.add(key)  # one tick of grace: a pause costs a keyframe
                    layer = 0
            else:
                link.pausing.discard(key)
            paused = layer is None
            forwarded[key] = layer
            subscription.suspend(paused)
            if not paused:
                if layer != subscription.max_layer and subscription.max_layer is not None:
                    logger.info(
                        "participant %s: video %s layer %d -> %d (estimate %d kbit/s)",
                        participant.id,
                        key,
                        subscription.max_layer,
                        layer,
                        estimate.value / 1000,
                    )
                subscription.max_layer = layer
                subscription.update_layer(now)
            if paused != (key in link.paused):
                if paused:
                    link.paused.add(key)
                else:
                    link.paused.discard(key)
                logger.info(
                    "participant %s: video %s %s (estimate %d kbit/s, audio %d, loss %.0f %%)",
                    participant.id,
                    key,
                    "paused" if paused else "resumed",
                    estimate.value / 1000,
                    audio / 1000,
                    estimate.loss * 100,
                )
                if ceiling >= 0:  # an audio-only profile pauses on purpose: no notice
                    asyncio.ensure_future(
                        participant.send(
                            {
                                "type": "video-paused",
                                "publication": key,
                                "paused": paused,
                                "reason": "bandwidth",
                            }
                        )
                    )
        # what is sent now (a video in its grace tick included), then the probe
        link.sending = audio + cost_of(forwarded, wants)
        estimate.tick(now, None if needed is None else needed + audio, link.sending)
        link.padding = estimate.padding(link.sending)
        self._log_estimate(participant, link)
        if link.padding > 0 and (link.probe_task is None or link.probe_task.done()):
            link.probe_task = asyncio.ensure_future(self._probe(participant, link))

    @staticmethod
    def _log_estimate(participant: Participant, link: SubscriberLink) -> None:
        """Log congestion and probes since the last call (the probe task's too)."""
        estimate = link.estimate
        before = link.logged
        link.logged = (estimate.congestions, estimate.probes, estimate.probes_failed)
        if estimate.congestions > before[0] and estimate.probes_failed == before[2]:
            logger.info(
                "participant %s: congestion, estimate %d kbit/s (sending %d, loss %.0f %%)",
                participant.id,
                estimate.value / 1000,
                link.sending / 1000,
                estimate.loss * 100,
            )
        if estimate.probes_failed > before[2]:
            logger.info(
                "participant %s: probe failed (estimate stays %d kbit/s, loss %.0f %%)",
                participant.id,
                estimate.value / 1000,
                estimate.loss * 100,
            )
        if estimate.probes > before[1] and estimate.probe is not None:
            logger.info(
                "participant %s: probe to %d kbit/s (sending %d, estimate %d)",
                participant.id,
                estimate.probe[1] / 1000,
                link.sending / 1000,
                estimate.value / 1000,
            )

    async def _probe(self, participant: Participant, link: SubscriberLink) -> None:
        """Send the probe's padding evenly (every 20 ms) until it ends or fails.

        The subscriber's REMB and loss are read at every step, so congestion
        ends the probe within a few tens of milliseconds of being reported.
        """
        last = time.monotonic()
        owed = 0.0
        start = self._resends(participant)
        try:
            while not participant.closed and link.padding > 0:
                await asyncio.sleep(PROBE_STEP)
                now = time.monotonic()
                self._feedback(participant, link, now)
                forwarded, resent = self._resends(participant)
                resent -= start[1]
                if resent >= max(PROBE_NACKS, PROBE_NACK_SHARE * (forwarded - start[0])):
                    link.estimate.on_probe_loss(now)
                link.padding = link.estimate.padding(link.sending)
                # at most three steps' worth: a stalled loop does not burst
                owed = min(
                    owed + link.padding * (now - last) / 8, link.padding * 3 * PROBE_STEP / 8
                )
                last = now
                carriers = [
                    s
                    for s in participant.subscriptions.values()
                    if s.kind == "video" and s.source is not None and not s.suspended
                ]
                if not carriers:
                    owed = 0.0
                    continue
                if owed <= 0:
                    continue
                sent = 0
                for carrier in carriers:
                    sent += carrier.pad(int(owed) - sent)
                    if sent >= owed:
                        break
                # a packet is sent whole: what went beyond is owed back (the
                # padding keeps its rate); nothing to send (no history) owes nothing
                owed = owed - sent if sent else 0.0
        except Exception:  # a probe must never take the room down
            logger.exception("participant %s: bandwidth probe failed", participant.id)

    @staticmethod
    def _resends(participant: Participant) -> tuple[int, int]:
        """(packets forwarded, packets sent again on NACK) of a subscriber's videos."""
        forwarded = resent = 0
        for subscription in participant.subscriptions.values():
            if subscription.kind == "video":
                forwarded += subscription.packets_forwarded
                resent += subscription.retransmitted
        return forwarded, resent

    # -- dynacast -------------------------------------------------------------------
    def _dynacast(self, publications: list[Publication], now: float) -> None:
        wanted: dict[str, set[int]] = {}
        for participant in self.room.participants.values():
            for subscription in participant.subscriptions.values():
                if subscription.suspended:
                    continue
                for publication, layer in (
                    (subscription.source, subscription.layer),
                    (subscription.pending, subscription.pending_layer),
                ):
                    if publication is None or not publication.simulcast:
                        continue
                    layers = wanted.setdefault(publication.id, set())
                    if layer >= 0:
                        layers.add(layer)
                    top = len(publication.layers) - 1
                    if subscription.max_layer is None:
                        layers.add(top)
                    else:
                        layers.add(min(subscription.max_layer, top))
        for publication in publications:
            if not publication.simulcast:
                continue
            count = len(publication.layers)
            want = wanted.get(publication.id, set())
            want.add(0)
            if publication.taps:
                want.add(count - 1)
            state = self._layers.get(publication.id)
            if state is None:
                state = self._layers[publication.id] = ([True] * count, [now] * count)
            active, last_wanted = state
            changed = False
            for index in range(count):
                if index in want:
                    last_wanted[index] = now
                    if not active[index]:
                        active[index] = changed = True
                elif active[index] and now - last_wanted[index] >= LAYER_OFF_AFTER:
                    active[index] = False
                    changed = True
            if changed:
                logger.info(
                    "publication %s: layers %s",
                    publication.id,
                    " ".join(f"{i}:{'on' if on else 'off'}" for i, on in enumerate(active)),
                )
                if self.on_layers is not None:
                    self.on_layers(publication, list(active))

    def active_layers(self, publication_id: str) -> list[bool] | None:
        state = self._layers.get(publication_id)
        return list(state[0]) if state is not None else None
