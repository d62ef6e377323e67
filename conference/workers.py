"""``conference serve --workers N``: N nodes of one server on one machine, one HTTPS port.

One Python process forwards media on one core.  With ``workers`` = N (``auto``: one
per core) ``conference serve`` becomes a small supervisor that starts N worker
processes.  Each worker is a full node of the cluster (conference/cluster/): its own
event loop, its own share of the UDP port range, its own relay port
(``relay_port`` + its index, when set), the node name ``NAME-1`` ... ``NAME-N``.  They
all listen on the same HTTPS port (``SO_REUSEPORT``: the kernel spreads the
connections over them), and a meeting whose points landed on several workers is
served by all of them together through Redis, exactly as by several machines.

What runs once, not N times:

* before any worker starts, the supervisor seals the recordings a previous run left
  unfinished (a worker that restarts later must not seal what the others record) and
  makes the self-signed certificate;
* the first worker resumes the compositions left queued and sends the invitation
  reminders.

A worker that dies (a crash, ``kill -9``) is started again, at once the first time
and after a growing pause (up to :data:`MAX_BACKOFF`) when it keeps dying within
:data:`RESTART_FAST` seconds of its start.  Its points reconnect (pages do, through
the same port) and land on a live worker; the others drop its points and
publications within ~5 s (the node's heartbeat lapses).  A worker that exits by
itself with status 0 (told to stop) is not started again; when none is left the
supervisor ends.  SIGTERM or SIGINT to the supervisor stops every worker cleanly
(rooms closed with ``server-shutdown``, recordings sealed); a supervisor killed outright
takes its workers with it (``PR_SET_PDEATHSIG``), and a port another server already
listens on is refused (``SO_REUSEPORT`` alone would share it).

The processes are forked from the supervisor (``multiprocessing``'s fork context):
the supervisor starts no event loop and no thread before, so each worker starts from
a clean, already imported interpreter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from .recording import recorder as recording
from .server import WorkerRole, configure_logging, run_server, ssl_context_for
from .settings import Settings

logger = logging.getLogger("conference.workers")

#: a worker that dies this soon after its start waits before the next start
RESTART_FAST = 10.0
#: ... at most this long (the pause doubles from 1 s)
MAX_BACKOFF = 30.0
#: every worker must listen this soon after its start
READY_TIMEOUT = 60.0
#: at stop, how long the workers have to close their rooms before they are killed
STOP_TIMEOUT = 20.0
#: prctl(2): the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1


def udp_shares(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """The UDP port range ``low``-``high`` cut into ``count`` equal shares, in order."""
    size = (high - low + 1) // count
    if size < 1:
        raise ValueError(f"UDP port range {low}-{high} is too small for {count} workers")
    return [(low + i * size, low + (i + 1) * size - 1) for i in range(count)]


def worker_settings(settings: Settings, index: int, port: int) -> Settings:
    """The settings of worker ``index`` (0-based) of ``settings.workers`` on ``port``."""
    base = settings.node_name or f"{socket.gethostname()}-{port}"
    changes: dict[str, Any] = {"port": port, "node_name": f"{base}-{index + 1}", "workers": 1}
    if settings.relay_port:
        changes["relay_port"] = settings.relay_port + index
    if settings.metrics_port is not None:  # Prometheus scrapes each worker on its own port
        changes["metrics_port"] = settings.metrics_port + index
    if settings.udp_port_min is not None and settings.udp_port_max is not None:
        low, high = udp_shares(settings.udp_port_min, settings.udp_port_max, settings.workers)[
            index
        ]
        changes["udp_port_min"], changes["udp_port_max"] = low, high
    return dataclasses.replace(settings, **changes)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host``:``port`` with SO_REUSEPORT: it holds
    the port (``port`` 0: a free one) for the workers, which bind it the same way."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:  # SO_REUSEPORT would let a second server share it: refuse a port in use
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:  # (SO_REUSEADDR: a restart finds its old connections in TIME_WAIT)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        finally:
            probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def check_redis(url: str) -> None:
    """One line (``ValueError``) when the workers' Redis cannot be reached."""
    import redis
    from redis.exceptions import RedisError

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except RedisError as exc:
        raise ValueError(f"redis_url: cannot reach Redis ({exc})") from None


@dataclasses.dataclass
class _Slot:
    """One worker's place: its current process and its restart pace."""

    index: int
    settings: Settings
    process: Any = None
    conn: Connection | None = None
    started_at: float = 0.0
    ready: bool = False
    backoff: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    done: bool = False  # exited by itself with status 0: not started again


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the supervisor dies (even by kill -9), so that
    no orphaned worker keeps serving the port on its own."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop is the only way
        return
    if os.getppid() == 1:  # the supervisor died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(settings: Settings, role: WorkerRole, conn: Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent()

    def ready(port: int) -> None:
        conn.send(("ready", port))

    role.ready = ready
    try:
        run_server(settings, role)
    except (ValueError, OSError) as exc:  # e.g. Redis gone between the check and the start
        print(f"conference: worker {settings.node_name}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


class Supervisor:
    """Starts the workers, starts again those that die, stops them all on a signal."""

    def __init__(self, settings: Settings, port: int, interrupted: list[Path]) -> None:
        self.settings = settings
        self.port = port
        self.interrupted = interrupted
        self.context = multiprocessing.get_context("fork")
        self.slots = [_Slot(i, worker_settings(settings, i, port)) for i in range(settings.workers)]
        self.stopping = False

    def start(self, slot: _Slot) -> None:
        parent, child = self.context.Pipe(duplex=False)
        role = WorkerRole(
            slot.index,
            len(self.slots),
            self.interrupted if slot.index == 0 and slot.restarts == 0 else [],
            restarted=slot.restarts > 0,
        )
        process = self.context.Process(
            target=_worker_main,
            args=(slot.settings, role, child),
            name=f"conference-{slot.settings.node_name}",
        )
        process.start()
        child.close()
        slot.process, slot.conn = process, parent
        slot.started_at, slot.ready, slot.restart_at = time.monotonic(), False, None

    def _poll_ready(self) -> None:
        for slot in self.slots:
            conn = slot.conn
            try:
                while conn is not None and conn.poll():
                    kind, _ = conn.recv()
                    if kind == "ready":
                        slot.ready = True
            except (EOFError, OSError):
                slot.conn = None
                if conn is not None:
                    conn.close()

    def _handles(self) -> list[Any]:
        handles: list[Any] = [s.process.sentinel for s in self.slots if s.process is not None]
        handles += [s.conn for s in self.slots if s.conn is not None]
        return handles

    def wait_ready(self) -> bool:
        """True once every worker listens; False if one exited first or took too long."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.stopping and time.monotonic() < deadline:
            self._poll_ready()
            if all(slot.ready for slot in self.slots):
                return True
            if any(s.process is not None and not s.process.is_alive() for s in self.slots):
                return False
            wait(self._handles(), timeout=0.5)
        return False

    def run(self) -> None:
        """Watch the workers until told to stop (or until none is left)."""
        while not self.stopping:
            wait(self._handles(), timeout=0.5)
            self._poll_ready()
            now = time.monotonic()
            for slot in self.slots:
                process = slot.process
                if process is not None and not process.is_alive():
                    self._exited(slot, now)
                if slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                    slot.restarts += 1
                    self.start(slot)
            if all(slot.done for slot in self.slots):
                return

    def _exited(self, slot: _Slot, now: float) -> None:
        process = slot.process
        code = process.exitcode
        process.join()
        slot.process = None
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        if self.stopping:
            return
        if code == 0:
            logger.info("worker %s stopped", slot.settings.node_name)
            slot.done = True
            return
        lived = now - slot.started_at
        slot.backoff = min(max(slot.backoff * 2, 1.0), MAX_BACKOFF) if lived < RESTART_FAST else 0
        slot.restart_at = now + slot.backoff
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        logger.error(
            "worker %s (pid %s) died (%s) after %.0f s; starting it again in %.0f s",
            slot.settings.node_name,
            process.pid,
            how,
            lived,
            slot.backoff,
        )

    def stop(self) -> None:
        """SIGTERM to every worker; those not gone after :data:`STOP_TIMEOUT` are killed."""
        self.stopping = True
        alive = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for process in alive:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in alive:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("worker pid %s did not stop in time: killed", process.pid)
                process.kill()
                process.join(5)


def supervise(settings: Settings) -> int:
    """``conference serve`` with ``workers`` > 1: run the workers until SIGTERM/SIGINT."""
    configure_logging(settings, "[supervisor] ")
    assert settings.redis_url is not None  # settings refuse workers > 1 without it
    check_redis(settings.redis_url)
    # sealed once, before any worker records (a worker never seals: see the module doc)
    interrupted = recording.configure_from(settings)
    context = ssl_context_for(settings)  # the self-signed certificate is made once, here
    held = reserve_port(settings.host, settings.port)
    port = held.getsockname()[1]
    supervisor = Supervisor(settings, port, interrupted)

    def stop(signum: int, frame: Any) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for slot in supervisor.slots:
            supervisor.start(slot)
        if not supervisor.wait_ready():
            if supervisor.stopping:
                return 0
            print("conference: a worker did not start (see above)", file=sys.stderr, flush=True)
            return 2
        scheme = "https" if context else "http"
        shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
        nodes = ", ".join(str(slot.settings.node_name) for slot in supervisor.slots)
        print(
            f"conference: listening on {scheme}://{shown}:{port} "
            f"({settings.workers} workers: {nodes})",
            flush=True,
        )
        print(
            json.dumps(
                {"event": "listening", "port": port, "scheme": scheme, "workers": settings.workers}
            ),
            flush=True,
        )
        supervisor.run()
    finally:
        if supervisor.stopping:
            print("conference: stopping", flush=True)
        supervisor.stop()
        held.close()
    return 0
