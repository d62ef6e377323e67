"""The aiohttp application and the ``conference serve`` process."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import signal
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiortc import RTCIceServer

from conference.web.api import setup_api
from conference.web.auth import SESSIONS_REVOKED, setup_auth
from conference.web.connections import (
    ConnectionLimits,
    GuardedSite,
    RateLimitedLog,
    body_deadline,
    connection_budget,
    install_accept_error_log,
    raise_open_file_limit,
)
from conference.web.headers import install_security_headers
from conference.web.pages.admin import setup_admin
from conference.web.pages.library import setup_library
from conference.web.pages.links import setup_links
from conference.web.pages.meetings import setup_meetings
from conference.web.pages.minutes import setup_minutes
from conference.web.pages.rsvp import setup_rsvp
from conference.web.site import error_page, setup_web

from . import __version__
from .appkeys import (
    BRIEFINGS,
    CLUSTER,
    DATABASE,
    ICE_SERVERS,
    ICE_SERVERS_JSON,
    LIVE_ELSEWHERE,
    MEETING_POLICY,
    REVOKED,
    ROOMS,
    SETTINGS,
    WEBSOCKETS,
)
from .core.errors import AccessError
from .domain.db import DatabaseUnavailable
from .domain.lifecycle import MeetingLifecycle
from .domain.reminders import background as reminder_task
from .ops import serve_metrics_port, setup_ops
from .realtime.briefing import Briefing, Briefings
from .realtime.lobby import LOBBY, setup_lobby
from .realtime.signaling import websocket_handler
from .realtime.upkeep import setup_upkeep
from .realtime.whip import session_delete, session_patch, whep_post, whip_post
from .recording import jobs as compose_jobs
from .recording import recorder as recording
from .settings import Settings
from .sfu.bridge import configure_ice_hosts, system_dtls
from .sfu.participant import Participant
from .sfu.room import Room, RoomRegistry
from .sfu.udp import loop_factory
from .tokens import RevocationList

logger = logging.getLogger("conference")

#: at shutdown, how long the WebSocket handlers have to close their sockets with the reason
SHUTDOWN_CLOSE_WAIT = 2.0


@dataclass
class WorkerRole:
    """This process is worker ``index`` of ``count`` (``conference serve --workers``,
    conference/workers.py): it shares the HTTPS port with the others (SO_REUSEPORT),
    leaves the interrupted recordings to the supervisor, and only the first worker
    runs the server-wide duties (compositions left queued, invitation reminders)."""

    index: int
    count: int
    #: the manifests the supervisor sealed as interrupted at start (for the first worker)
    interrupted: list[Path] = field(default_factory=list)
    #: called with the port once this worker listens
    ready: Callable[[int], None] | None = None
    #: started again after it died (the server-wide duties of a start are not redone)
    restarted: bool = False

    @property
    def primary(self) -> bool:
        return self.index == 0


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error is a JSON message; no traceback reaches a client."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            body = {"error": exc.reason.lower().replace(" ", "-"), "message": exc.reason}
            return web.json_response(body, status=exc.status, headers=_keep_headers(exc))
        raise
    except asyncio.CancelledError:
        raise
    except ConnectionResetError as exc:  # aiohttp's ClientConnectionResetError among them
        # The client went away mid-request (e.g. a WebSocket pong on a closing socket):
        # nothing to answer and nothing wrong with the server.
        logger.info("%s %s: the client went away (%s)", request.method, request.path, exc)
        return web.Response(status=499)
    except DatabaseUnavailable as exc:  # locked, unreachable, too slow, its file gone
        _DATABASE_LOG.note("database", f"{request.method} {request.path}: {exc}")
        return unavailable(request)
    except Exception:
        logger.exception("internal error on %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal", "message": "internal server error"}, status=500
        )


#: one line per failure, at most one every 10 s (a locked database fails every request)
_DATABASE_LOG = RateLimitedLog(logger, 10.0, level=logging.ERROR)
#: seconds a client is asked to wait when the database is unavailable
RETRY_AFTER = 5


def unavailable(request: web.Request) -> web.Response:
    """503 with Retry-After: the error page for a browser's page, JSON for the rest."""
    headers = {"Retry-After": str(RETRY_AFTER)}
    wants_page = request.method in ("GET", "POST") and not request.path.startswith("/api/")
    if wants_page and "text/html" in request.headers.get("Accept", ""):
        error = AccessError("unavailable", "the database is unavailable", 503)
        response = error_page(request, error)
        response.headers.update(headers)
        return response
    body = {"error": "unavailable", "message": "the database is busy or unavailable; try again"}
    return web.json_response(body, status=503, headers=headers)


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}


async def health(request: web.Request) -> web.Response:
    """``ok``, or ``degraded`` with one line per problem (``problems``): the server
    serves meetings either way (a monitor alerts on ``degraded``, a load balancer
    keeps sending on HTTP 200)."""
    rooms = request.app[ROOMS].rooms
    recordings = recording.health()
    problems: list[str] = list(recordings.pop("problems", []))
    database = request.app[DATABASE].problem() if DATABASE in request.app else None
    if database is not None:
        problems.insert(0, database)
    return web.json_response(
        {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "version": __version__,
            "rooms": len(rooms),
            "participants": sum(len(r.participants) for r in rooms.values()),
            "recordings": recordings,
        }
        | ({"node": request.app[CLUSTER].name} if CLUSTER in request.app else {})
    )


def ice_servers(settings: Settings) -> tuple[list[RTCIceServer], list[dict[str, Any]]]:
    servers: list[RTCIceServer] = []
    as_json: list[dict[str, Any]] = []
    for entry in settings.ice_servers:
        urls = entry["urls"]
        urls = [urls] if isinstance(urls, str) else list(urls)
        servers.append(
            RTCIceServer(
                urls=urls, username=entry.get("username"), credential=entry.get("credential")
            )
        )
        item: dict[str, Any] = {"urls": urls}
        for key in ("username", "credential"):
            if entry.get(key):
                item[key] = entry[key]
        as_json.append(item)
    return servers, as_json


def setup_control_plane(app: web.Application) -> None:
    """Sign-in (web/auth.py), the organisation and meeting pages, the JSON API, in order."""
    setup_auth(app)
    setup_admin(app)
    setup_meetings(app)
    setup_links(app)  # /meetings/{id}/links: the points' links without e-mail
    setup_minutes(app)
    setup_library(app)
    setup_api(app)


def create_app(settings: Settings, primary: bool = True) -> web.Application:
    """Build the application; ``settings.token_secret`` must be set.  ``primary``: it runs
    the server-wide duties (false for the other workers of ``serve --workers``)."""
    if not settings.token_secret:
        raise ValueError("settings.token_secret is not set (call ensure_data_dir first)")
    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    # first of the middlewares after the errors': every body read is under it
    app.middlewares.append(body_deadline(settings.body_timeout))
    install_security_headers(app, settings)
    app[ROOMS] = RoomRegistry(
        settings.max_rooms,
        settings.max_participants_per_room,
        public_ip=settings.public_ip,
        connect_timeout=settings.connect_timeout,
        media_timeout=settings.media_timeout,
    )
    revoked = RevocationList()
    app[REVOKED] = revoked

    def revoke(participant: Participant) -> None:
        if participant.who.token_id and participant.who.expires_at:
            expires = datetime.fromtimestamp(participant.who.expires_at, UTC)
            revoked.revoke(participant.who.token_id, expires)

    app[BRIEFINGS] = Briefings(app[ROOMS])  # the chair's rules on every room
    app[BRIEFINGS].on_removed = revoke
    if Briefings.recording_failed not in recording.failure_listeners:  # a full disk
        recording.failure_listeners.append(Briefings.recording_failed)
    app[ICE_SERVERS], app[ICE_SERVERS_JSON] = ice_servers(settings)
    app[WEBSOCKETS] = weakref.WeakSet()
    setup_web(app)
    setup_rsvp(app)  # /m/{meeting}/rsvp: invitation answers (conference/web/pages/rsvp.py)
    setup_control_plane(app)  # sign-in, admin pages, JSON API
    # scheduled meetings: admission, lobby, start/end, attendance (ad-hoc rooms as before)
    lifecycle = MeetingLifecycle(app[DATABASE], settings)
    app[MEETING_POLICY] = lifecycle
    lobby = setup_lobby(app, lifecycle)
    app[BRIEFINGS].on_created = lobby.briefing_created
    upkeep = setup_upkeep(app)  # rooms of meetings ended elsewhere; meetings nobody ended
    if upkeep is not None:
        lobby.on_meetings_changed = upkeep.soon
    app.router.add_get("/healthz", health)
    app.router.add_get("/ws/meetings/{meeting_id}", _tracked(websocket_handler))
    app.router.add_post("/whip/{meeting_id}", whip_post)
    app.router.add_delete("/whip/{meeting_id}/{participant_id}", session_delete)
    app.router.add_patch("/whip/{meeting_id}/{participant_id}", session_patch)
    app.router.add_post("/whep/{meeting_id}", whep_post)
    app.router.add_post("/whep/{meeting_id}/{participant_id}", whep_post)
    app.router.add_delete("/whep/{meeting_id}/{participant_id}", session_delete)
    app.router.add_patch("/whep/{meeting_id}/{participant_id}", session_patch)
    app.on_shutdown.append(_shutdown)
    setup_ops(app)  # /metrics, webhooks (conference/ops)
    if primary:  # invitation reminders (when SMTP is configured)
        app.cleanup_ctx.append(reminder_task)
    if settings.redis_url:
        join_cluster(app, settings)
    return app


def join_cluster(app: web.Application, settings: Settings) -> None:
    """Serve meetings together with the other nodes on ``settings.redis_url``."""
    from .cluster import Cluster  # only a node of several loads the Redis client

    assert settings.redis_url is not None and settings.token_secret is not None
    name = settings.node_name or f"{socket.gethostname()}-{settings.port}"
    cluster = Cluster(
        settings.redis_url,
        name,
        settings.token_secret,
        settings.relay_host,
        settings.relay_port,
        settings.cluster_name,
    )
    app[CLUSTER] = cluster
    app[LIVE_ELSEWHERE] = cluster.live_elsewhere
    registry = app[ROOMS]
    briefing_created = registry.on_created

    def created(room: Room) -> None:
        if briefing_created is not None:
            briefing_created(room)
        briefing = room.events
        if isinstance(briefing, Briefing):  # the chair's briefing reaches the other nodes
            briefing.share = functools.partial(cluster.send_event, room.meeting_id)
        cluster.attach(room)

    def peer_event(room: Room, event: dict[str, Any]) -> None:
        briefing = room.events
        if isinstance(briefing, Briefing):
            asyncio.ensure_future(briefing.peer_event(event))

    def carry_on(room: Room, recorded: dict[str, str]) -> None:
        briefing = room.events
        if isinstance(briefing, Briefing):
            briefing.carry_on_recording(recorded)

    registry.on_created = created
    cluster.on_event = peer_event
    # a recording outlives its node: another node of the meeting carries it on
    cluster.recording_of = recording.current
    cluster.on_recording_orphaned = carry_on
    # the lobby's waiting participants and the chair's decisions reach every node
    lobby = app[LOBBY]
    lobby.share = cluster
    cluster.on_lobby = lobby.shared
    # a token revoked on one node (a removed point, a signed-out browser) is refused on all
    lists = {"meeting": app[REVOKED], "session": app[SESSIONS_REVOKED]}
    for kind, revoked in lists.items():
        revoked.on_revoke = functools.partial(_share_revocation, cluster, kind)

    def learned(kind: str, token_id: str, expires: float) -> None:
        if kind in lists:
            lists[kind].learn(token_id, datetime.fromtimestamp(expires, UTC))

    cluster.on_revoked = learned

    async def membership(app: web.Application) -> AsyncIterator[None]:
        await cluster.start()
        yield
        await cluster.stop()

    app.cleanup_ctx.append(membership)


def _share_revocation(cluster: Any, kind: str, token_id: str, expires_at: datetime) -> None:
    cluster.revoke(kind, token_id, expires_at.timestamp())


def _tracked(handler: Any) -> Any:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            request.app[WEBSOCKETS].add(task)
        return await handler(request)

    return wrapper


async def _shutdown(app: web.Application) -> None:
    logger.info("shutting down: closing rooms")
    registry: RoomRegistry = app[ROOMS]
    if CLUSTER in app:  # the meetings' other nodes carry this node's recordings on
        await app[CLUSTER].hand_over_recordings()
    await recording.shutdown()  # seal the manifests before the rooms close
    await registry.close("server-shutdown")
    # the sessions' handlers close their sockets with the reason (1001 server-shutdown);
    # those the client does not answer, and those still in the lobby, are cancelled
    tasks = [task for task in app[WEBSOCKETS] if not task.done()]
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_CLOSE_WAIT)
    for task in tasks:
        task.cancel()


def ssl_context_for(settings: Settings) -> ssl.SSLContext | None:
    from .tls import self_signed_certificate, ssl_context

    if settings.tls == "off":
        return None
    if settings.tls == "self-signed":
        hosts = [h for h in [settings.public_ip, *settings.ice_hosts] if h]
        cert, key = self_signed_certificate(settings.data_dir, hosts)
        return ssl_context(cert, key)
    assert settings.tls_cert is not None and settings.tls_key is not None
    return ssl_context(settings.tls_cert, settings.tls_key)


def watch_certificate(
    settings: Settings, context: ssl.SSLContext | None
) -> asyncio.Task[None] | None:
    """``tls = "files"``: reload the certificate when its files change (conference/tls.py)."""
    from .tls import CertificateReloader

    if context is None or settings.tls != "files":
        return None
    assert settings.tls_cert is not None and settings.tls_key is not None
    reloader = CertificateReloader(context, settings.tls_cert, settings.tls_key)
    return asyncio.ensure_future(reloader.run())


SELF_SIGNED_NOTICE = (
    "conference: TLS uses a self-signed certificate ({path}): every browser warns, and "
    "many encoders refuse it. It is for trying the server out; for real meetings give it "
    'a certificate the communes\' browsers trust (tls = "files", see docs/OPERATIONS.md, TLS)'
)


#: the garbage collector's third threshold (full passes per middle-generation passes)
FULL_COLLECTION_EVERY = 100


def settle_heap() -> None:
    """Keep what start-up made out of the garbage collector's full passes.

    A full (generation 2) collection walks every tracked object and stops the
    event loop, so all media, while it runs.  Modules, classes, functions and
    templates loaded at start-up (~150,000 objects) live as long as the
    process; after ``gc.freeze()`` full collections skip them (measured at 40
    points: docs/BENCHMARKS.md).
    """
    gc.collect()
    gc.freeze()
    # a full pass every hundred middle-generation passes instead of ten: in a 40-point
    # briefing one took ~50 ms of CPU (every media packet waits) every ~10 s, ~1 % of a
    # core; the young passes cost the same whatever their threshold (what they walk
    # is what the packets leave: see docs/BENCHMARKS.md, issue 13 item 4)
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The caps on client connections, the total one below the open-file limit (raised
    to the hard limit first); logged."""
    open_files = raise_open_file_limit()
    budget = connection_budget(open_files, settings.max_rooms * settings.max_participants_per_room)
    total = settings.max_connections or budget
    if total > budget:
        logger.warning(
            "max_connections = %d leaves too few of the %d open files for media and files: "
            "%d instead (raise LimitNOFILE)",
            total,
            open_files,
            budget,
        )
        total = budget
    per_address = settings.max_connections_per_address
    exempt = ", ".join(settings.max_connections_exempt) or "none"
    logger.info(
        "connections: at most %d in all (open-file limit %d), %s per address (exempt: %s); "
        "request head within %d s, body within %d s",
        total,
        open_files,
        per_address or "any number",
        exempt,
        settings.header_timeout,
        settings.body_timeout,
    )
    return ConnectionLimits(total, per_address, settings.max_connections_exempt)


async def serve(settings: Settings, role: WorkerRole | None = None) -> None:
    """Run until SIGTERM or SIGINT, then close every room cleanly."""
    install_accept_error_log(asyncio.get_running_loop(), RateLimitedLog(logger))
    configure_ice_hosts(settings.ice_hosts)
    if settings.whip_system_dtls and (openssl := system_dtls()) is not None:
        logger.info("DTLS of WHIP encoders on the system's %s (FFmpeg's P-224 accepted)", openssl)
    interrupted = recording.configure_from(settings, seal=role is None)
    if role is None or (role.primary and not role.restarted):  # compositions to (re)do
        compose_jobs.resume_jobs(settings.recordings_dir, role.interrupted if role else interrupted)
    app = create_app(settings, primary=role is None or role.primary)
    context = ssl_context_for(settings)
    # keepalive_timeout: a request head must arrive this long after the connection
    # opens or after the previous response (conference/web/connections.py)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=5.0,
        keepalive_timeout=settings.header_timeout,
    )
    await runner.setup()
    site = GuardedSite(
        runner,
        settings.host,
        settings.port,
        limits=connection_limits(settings),
        ssl_context=context,
        handshake_timeout=settings.header_timeout,
        reuse_port=role is not None,
    )
    await site.start()
    metrics_site = await serve_metrics_port(app, settings.host)  # metrics_port, if set
    port = settings.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    scheme = "https" if context else "http"
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    settle_heap()
    if role is not None:  # the supervisor says when every worker listens
        if role.ready is not None:
            role.ready(port)
    else:
        if settings.tls == "self-signed":
            path = settings.data_dir / "tls" / "self-signed.crt"
            print(SELF_SIGNED_NOTICE.format(path=path), flush=True)
        print(f"conference: listening on {scheme}://{shown}:{port}", flush=True)
        print(json.dumps({"event": "listening", "port": port, "scheme": scheme}), flush=True)
    reloading = watch_certificate(settings, context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("conference: stopping", flush=True)
    if reloading is not None:
        reloading.cancel()
    if metrics_site is not None:
        await metrics_site.cleanup()
    await runner.cleanup()


def configure_logging(settings: Settings, tag: str = "") -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server_log.filters):
        server_log.addFilter(MalformedRequests())


class MalformedRequests(logging.Filter):
    """A malformed HTTP request (a scanner, a TLS hello on the plain port) is the
    client's fault: aiohttp logs it as an error with a traceback; here it becomes one
    line at DEBUG (the client got its 400 either way)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc.message or exc.code}"
        record.args, record.exc_info, record.exc_text = (), None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def run_server(settings: Settings, role: WorkerRole | None = None) -> None:
    if role is None:
        configure_logging(settings)
    else:  # a worker's lines say which node wrote them
        configure_logging(settings, f"[{settings.node_name}] ")
    port_range = None
    if settings.udp_port_min is not None and settings.udp_port_max is not None:
        port_range = (settings.udp_port_min, settings.udp_port_max)
    with asyncio.Runner(loop_factory=lambda: loop_factory(port_range)) as runner:
        runner.run(serve(settings, role))
