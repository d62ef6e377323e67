"""``/metrics``: this server process in Prometheus's text format (prometheus-client).

Everything is read when Prometheus scrapes, never counted per packet (the media plane's
per-packet path stays as docs/BENCHMARKS.md measured it): the rooms, participants and
publications of the room registry; the packet and byte counters that the forwarding
receivers and senders keep anyway (conference/sfu/bridge.py); the loss in their
reception statistics and in the subscribers' receiver reports, and the NACKs (both
counted per RTCP message); the bandwidth estimates of the rooms' allocators; the
recorder's and the composition jobs' state; the cheap counters of ``core.events``
(database failures, mails, compositions, recordings sealed); the webhooks' queue; on a
node of several, the media its relay endpoint sent other nodes (``RelayEndpoint.sent``,
two additions per relayed packet: the one count kept per packet here).

Media counters of a participant that left are kept (`MediaTally.retire`, from the
room's ``left`` notice), so that a ``_total`` only grows while the process lives; a
restarted process starts again from 0 (Prometheus's ``rate()`` handles that).

Access (`refusal`): ``Authorization: Bearer`` ``metrics_token``, or a client address
of ``metrics_allow`` (127.0.0.1 and ::1 by default).  Each process answers for itself:
with ``conference serve --workers N`` a scrape of the shared HTTPS port reaches
whichever worker the kernel picks, so ``metrics_port`` gives each worker a port of its
own (``metrics_port`` + N - 1) for Prometheus to scrape them all (`serve_metrics_port`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from .. import __version__
from ..appkeys import CLUSTER, ROOMS, SETTINGS
from ..core import events
from ..recording import jobs
from ..recording import recorder as recording
from ..settings import Settings
from ..sfu.bridge import ForwardingReceiver, ForwardingSender
from ..sfu.participant import Participant
from ..sfu.relay import RelayEndpoint
from ..sfu.room import RoomRegistry
from .webhooks import Webhooks

__all__ = [
    "METRICS",
    "LoopLag",
    "MediaTally",
    "Metrics",
    "metrics_handler",
    "refusal",
    "serve_metrics_port",
]

logger = logging.getLogger(__name__)

#: seconds between two wake-ups of the event-loop lag probe
LAG_INTERVAL = 0.25
#: ``conference_event_loop_lag_max_seconds`` is the worst lag of this many last seconds
LAG_WINDOW = 10.0
#: the ``node`` label of a process without a node name
NODE = socket.gethostname()
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: the media counters: name (``conference_NAME_total``) -> help
MEDIA_COUNTERS = {
    "received_packets": "RTP packets received from publishers (RTX included)",
    "received_bytes": "RTP octets received from publishers (payload and 12-octet header)",
    "forwarded_packets": "RTP packets sent to subscribers (retransmissions and probes included)",
    "forwarded_bytes": "RTP payload octets sent to subscribers",
    "duplicate_packets": "Retransmissions of packets already received, not forwarded",
    "upstream_expected_packets": "Media packets expected from publishers (sequence numbers)",
    "upstream_lost_packets": "Media packets from publishers that never arrived",
    "downstream_expected_packets": "Packets subscribers expected, from their receiver reports",
    "downstream_lost_packets": "Packets subscribers reported lost in their receiver reports",
    "nacks_sent": "NACK messages sent to publishers (lost packets asked again)",
    "nacks_received": "NACK messages received from subscribers",
}


def participant_media(participant: Participant, into: dict[str, int]) -> dict[str, list[float]]:
    """Add ``participant``'s media counters to ``into``; its estimates: ``uplink`` (the
    server's REMB estimate of what it sends, bits/s) and ``rtt`` (seconds)."""
    uplink = 0.0
    rtt: float | None = None
    for pc in (participant.publisher_pc, participant.subscriber_pc):
        if pc is None:
            continue
        for transceiver in pc.getTransceivers():
            receiver = transceiver.receiver
            if isinstance(receiver, ForwardingReceiver) and receiver.packets_received:
                into["received_packets"] += receiver.packets_received
                into["received_bytes"] += receiver.bytes_received
                into["duplicate_packets"] += receiver.duplicates
                into["nacks_sent"] += receiver.nacks_sent
                expected, lost = receiver.media_loss()
                into["upstream_expected_packets"] += expected
                into["upstream_lost_packets"] += max(lost, 0)
                if receiver.estimated_bitrate:
                    uplink += receiver.estimated_bitrate
            sender = transceiver.sender
            if isinstance(sender, ForwardingSender) and sender.packets_sent:
                into["forwarded_packets"] += sender.packets_sent
                into["forwarded_bytes"] += sender.bytes_sent
                into["downstream_expected_packets"] += sender.expected_total
                into["downstream_lost_packets"] += sender.lost_total
                into["nacks_received"] += sender.nacks_received
                if sender.rtt is not None:
                    rtt = sender.rtt if rtt is None else min(rtt, sender.rtt)
    return {"uplink": [uplink] if uplink else [], "rtt": [rtt] if rtt is not None else []}


@dataclass
class MediaTally:
    """The media counters of the participants gone (`retire`), and the highest total
    shown of each counter (the loss of a live stream shrinks when a late packet comes:
    a counter shown never goes down)."""

    retired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MEDIA_COUNTERS, 0))
    shown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MEDIA_COUNTERS, 0))

    def retire(self, participant: Participant) -> None:
        participant_media(participant, self.retired)

    def totals(self, live: dict[str, int]) -> dict[str, int]:
        for name in MEDIA_COUNTERS:
            self.shown[name] = max(self.shown[name], self.retired[name] + live[name])
        return dict(self.shown)


class LoopLag:
    """How late the event loop wakes from a :data:`LAG_INTERVAL` sleep: the time every
    packet and request waits behind the work before it (a garbage collection, a long
    callback).  Four wake-ups a second; each observed in ``histogram``."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.recent: deque[tuple[float, float]] = deque()  # (monotonic time, lag)

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL)
            now = time.monotonic()
            lag = max(0.0, now - before - LAG_INTERVAL)
            self.histogram.observe(lag)
            self.recent.append((now, lag))
            while self.recent and now - self.recent[0][0] > LAG_WINDOW:
                self.recent.popleft()

    def worst(self) -> float | None:
        """The worst lag of the last :data:`LAG_WINDOW` seconds."""
        return max((lag for _, lag in self.recent), default=None)


def _stats(family: GaugeMetricFamily, values: list[float]) -> GaugeMetricFamily:
    if values:
        family.add_metric(["min"], min(values))
        family.add_metric(["median"], statistics.median(values))
        family.add_metric(["max"], max(values))
    return family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


class ServerCollector(Collector):
    """Everything but the process's own metrics, read at each scrape (module doc)."""

    def __init__(self, app: web.Application, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        app, metrics = self.app, self.metrics
        settings = app[SETTINGS]
        node = settings.node_name or (app[CLUSTER].name if CLUSTER in app else NODE)
        info = GaugeMetricFamily(
            "conference_info", "This server process (always 1)", labels=["version", "node"]
        )
        info.add_metric([__version__, node], 1)
        yield info
        yield from self._media(app[ROOMS], metrics.tally)
        lag = GaugeMetricFamily(
            "conference_event_loop_lag_max_seconds",
            f"Worst event-loop lag of the last {LAG_WINDOW:g} s",
        )
        worst = metrics.lag.worst()
        if worst is not None:
            lag.add_metric([], worst)
        yield lag
        if CLUSTER in app:
            yield from self._relay(app[CLUSTER].relay)
        yield from self._recordings()
        yield from self._counted()
        webhooks = metrics.webhooks
        if webhooks is not None:
            yield _gauge(
                "conference_webhook_queue",
                "Webhook deliveries waiting or in flight",
                webhooks.queued,
            )
            outcome = CounterMetricFamily(
                "conference_webhook_deliveries",
                "Webhook deliveries: delivered, given up after the last try, dropped "
                "from a full queue",
                labels=["result"],
            )
            outcome.add_metric(["delivered"], webhooks.delivered)
            outcome.add_metric(["given_up"], webhooks.given_up)
            outcome.add_metric(["dropped"], webhooks.dropped)
            yield outcome
            yield _counter(
                "conference_webhook_retries",
                "Failed webhook tries to be made again",
                webhooks.retried,
            )

    @staticmethod
    def _media(registry: RoomRegistry, tally: MediaTally) -> Iterable[Metric]:
        rooms = [room for room in registry.rooms.values() if not room.closed]
        participants = GaugeMetricFamily(
            "conference_participants",
            "Participants in this process's rooms, by transport",
            labels=["transport"],
        )
        publications = GaugeMetricFamily(
            "conference_publications",
            "Tracks published in this process's rooms, by kind",
            labels=["kind"],
        )
        by_transport = {"websocket": 0, "whip": 0, "whep": 0}
        by_kind = {"audio": 0, "video": 0}
        subscriptions = relayed = 0
        ingress = 0.0
        live = dict.fromkeys(MEDIA_COUNTERS, 0)
        uplinks: list[float] = []
        rtts: list[float] = []
        downlinks: list[float] = []
        for room in rooms:
            relayed += len(room.remote)
            for participant in list(room.participants.values()):
                by_transport[participant.transport] = by_transport.get(participant.transport, 0) + 1
                subscriptions += len(participant.subscriptions)
                for publication in participant.publications.values():
                    by_kind[publication.kind] = by_kind.get(publication.kind, 0) + 1
                    ingress += sum(layer.bitrate for layer in publication.layers)
                estimates = participant_media(participant, live)
                uplinks += estimates["uplink"]
                rtts += estimates["rtt"]
            for link in room.bandwidth.links.values():
                if link.sizes is not None:  # allocated: the room page's subscribers
                    downlinks.append(link.estimate.value)
        yield _gauge("conference_rooms", "Open rooms (meetings live here)", len(rooms))
        for transport, count in by_transport.items():
            participants.add_metric([transport], count)
        yield participants
        for kind, count in by_kind.items():
            publications.add_metric([kind], count)
        yield publications
        yield _gauge(
            "conference_relayed_publications",
            "Publications of other nodes' participants, relayed here",
            relayed,
        )
        yield _gauge("conference_subscriptions", "Tracks forwarded to subscribers", subscriptions)
        for name, value in tally.totals(live).items():
            yield _counter(f"conference_{name}", MEDIA_COUNTERS[name], value)
        yield _gauge(
            "conference_ingress_bitrate_bps",
            "Bits/s received from the publishers (measured by the rooms twice a second)",
            ingress,
        )
        yield _stats(
            GaugeMetricFamily(
                "conference_downlink_estimate_bps",
                "Estimated downlink of the room pages' subscribers (min, median, max)",
                labels=["stat"],
            ),
            downlinks,
        )
        yield _stats(
            GaugeMetricFamily(
                "conference_uplink_estimate_bps",
                "The server's REMB estimate of publishers' uplinks, for those without "
                "transport-cc (min, median, max)",
                labels=["stat"],
            ),
            uplinks,
        )
        yield _stats(
            GaugeMetricFamily(
                "conference_subscriber_rtt_seconds",
                "Round-trip time to subscribers, from their receiver reports (min, median, max)",
                labels=["stat"],
            ),
            rtts,
        )

    @staticmethod
    def _relay(endpoint: RelayEndpoint) -> Iterable[Metric]:
        """What this node's relay endpoint sent other nodes (conference/sfu/relay.py)."""
        packets = CounterMetricFamily(
            "conference_relay_sent_packets",
            "Media datagrams sent to other nodes (relay streams, retransmissions included), "
            "by kind and the importing node's mode (full: it records them)",
            labels=["kind", "mode"],
        )
        octets = CounterMetricFamily(
            "conference_relay_sent_bytes",
            "Octets of the media datagrams sent to other nodes (UDP payload)",
            labels=["kind", "mode"],
        )
        for (kind, mode), (count, size) in endpoint.sent.items():
            packets.add_metric([kind, mode], count)
            octets.add_metric([kind, mode], size)
        yield packets
        yield octets
        yield _counter(
            "conference_relay_withheld_packets",
            "Microphone packets the audio gate held back, not sent to nodes in gated mode "
            "(once per such node)",
            endpoint.withheld,
        )

    @staticmethod
    def _recordings() -> Iterable[Metric]:
        health = recording.health()
        yield _gauge(
            "conference_recordings_active",
            "Recordings running in this process",
            float(health.get("recording", 0)),
        )
        yield _gauge(
            "conference_recordings_unsealed",
            "Stopped recordings whose manifest the disk has refused to seal so far",
            float(len(health.get("unsealed", []))),
        )
        free = health.get("free_mb")
        disk = GaugeMetricFamily(
            "conference_recordings_free_bytes", "Free space where recordings are written"
        )
        if free is not None:
            disk.add_metric([], float(free) * 1024 * 1024)
        yield disk
        yield _gauge(
            "conference_composition_jobs_pending",
            "Compositions (MP4) queued or running in this process",
            float(jobs.pending()),
        )

    @staticmethod
    def _counted() -> Iterable[Metric]:
        counted = events.snapshot()
        sealed = CounterMetricFamily(
            "conference_recordings_sealed",
            "Recording manifests sealed, by state (complete, interrupted)",
            labels=["state"],
        )
        for state in ("complete", "interrupted"):
            sealed.add_metric([state], counted.get(f"recordings_sealed:{state}", 0))
        yield sealed
        yield _counter(
            "conference_recording_failures",
            "Recordings that stopped by themselves (a full disk)",
            counted.get("recording_failures", 0),
        )
        compositions = CounterMetricFamily(
            "conference_compositions", "Compositions ended, by result", labels=["result"]
        )
        for result in ("done", "failed"):
            compositions.add_metric([result], counted.get(f"compositions:{result}", 0))
        yield compositions
        yield _counter(
            "conference_database_errors",
            "Database calls that failed (locked, unreachable, too slow: HTTP 503)",
            counted.get("database_errors", 0),
        )
        yield _counter("conference_mails_sent", "E-mails sent", counted.get("mail_sent", 0))
        yield _counter(
            "conference_mail_errors",
            "E-mails the SMTP server refused or could not be given",
            counted.get("mail_errors", 0),
        )


@dataclass
class Metrics:
    """The registry of one server process's ``/metrics``, and what it reads."""

    registry: CollectorRegistry
    tally: MediaTally
    lag: LoopLag
    webhooks: Webhooks | None = None


METRICS = web.AppKey("metrics", Metrics)


def setup_metrics(app: web.Application) -> Metrics:
    """``/metrics`` on the app, the lag probe while it runs; the `Metrics`."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    histogram = Histogram(
        "conference_event_loop_lag_seconds",
        f"How late the event loop wakes from a {LAG_INTERVAL:g} s sleep",
        buckets=LAG_BUCKETS,
        registry=registry,
    )
    metrics = Metrics(registry, MediaTally(), LoopLag(histogram))
    registry.register(ServerCollector(app, metrics))
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)

    async def probing(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.ensure_future(metrics.lag.run())
        yield
        task.cancel()

    app.cleanup_ctx.append(probing)
    return metrics


def _address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address((host or "").split("%", 1)[0])
    except ValueError:
        return None  # a Unix socket: no address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def refusal(request: web.Request, settings: Settings) -> web.Response | None:
    """Why ``request`` may not read the metrics (a JSON 401 or 403), or None."""
    sent = request.headers.get("Authorization", "")
    token = settings.metrics_token
    if sent:
        scheme, _, value = sent.partition(" ")
        if (
            token
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode(), token.encode())
        ):
            return None
        return web.json_response(
            {"error": "unauthorized", "message": "wrong metrics token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    address = _address(request.remote)
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.metrics_allow]
    if address is not None and any(address in network for network in networks):
        return None
    if token:
        return web.json_response(
            {"error": "unauthorized", "message": "the metrics need a token (Bearer)"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return web.json_response(
        {"error": "forbidden", "message": "this address may not read the metrics"}, status=403
    )


async def metrics_handler(request: web.Request) -> web.Response:
    return _answer(request, request.app)


def _answer(request: web.Request, app: web.Application) -> web.Response:
    refused = refusal(request, app[SETTINGS])
    if refused is not None:
        return refused
    body = generate_latest(app[METRICS].registry)
    return web.Response(
        body=body,
        headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"},
    )


async def serve_metrics_port(app: web.Application, host: str) -> web.AppRunner | None:
    """With ``metrics_port``: ``/metrics`` of ``app`` on that port too (plain HTTP, the
    same access rules); the runner to clean up at the stop, or None."""
    settings = app[SETTINGS]
    if settings.metrics_port is None:
        return None

    async def handler(request: web.Request) -> web.Response:
        return _answer(request, app)

    side = web.Application()
    side.router.add_get("/metrics", handler)
    runner = web.AppRunner(side, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, settings.metrics_port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ValueError(
            f"cannot listen on {host}:{settings.metrics_port} (metrics_port): {exc.strerror}"
        ) from None
    logger.info("metrics on http://%s:%d/metrics", host, settings.metrics_port)
    return runner
