"""The coordinator: starts workers, runs the phases, samples the server, reports.

Phases of a run (wall-clock times are shared with the workers):

1. **prepare**: check the server answers ``/healthz``, encode the clips if the
   cache lacks them, start the workers (``--processes``; one runs in this
   process when there is only one) and wait until they are ready;
2. **join**: the chair joins at ``t0``, the points from ``t0 + 1 s`` at
   ``--ramp`` per second; each reports ``joined`` (its first decodable frame of
   the chair's video, or of the program feed) or ``failed``;
3. **measure**: one second after the last join, every stream is marked and
   the server's CPU time is sampled; the floor starts moving (``floor_period``);
   after ``--duration`` seconds the server is sampled again and the workers
   report;
4. **leave**: every participant leaves; workers exit.

The server process is measured through ``/proc``: ``--server-pid``, or the
process listening on the URL's port when the URL names this machine.

Points on weak links (``--weak``, :mod:`.weak`) run one per worker process,
each inside its own rate-limited network namespace; this coordinator runs
their relays and TCP forwarders (so the strong participants never share its
process), and the report gets a section per link (see :mod:`.report`).

Size: over 600 lines: the phases of one run share the run's clock and state; a load-test
tool, never imported by the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import multiprocessing
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

import aiohttp

from ... import __version__
from ..linkemu import PROFILES, LinkEmuError
from .plan import Config, FloorSchedule, Seat
from .procstat import (
    CpuSample,
    UdpDropMeter,
    cpu_sample,
    cpu_sample_all,
    find_listening_pid,
    find_listening_pids,
    is_local_host,
    machine_busy_seconds,
    machine_info,
    memory_kib,
    udp_receive_errors,
)
from .report import build_report
from .weak import WeakSite, assign_weak, weak_camera_kbps
from .worker import CHAIR_HEAD_START, LocalChannel, PipeChannel, WorkerPlan, process_entry

__all__ = ["LoadTestError", "run_loadtest"]

SETTLE = 1.0  # seconds between the last join and the measurement window
READY_TIMEOUT = 120.0  # clip encoding on first use can take a while
TIMELINE_STEP = 10.0  # seconds between the server samples kept for the report (soak runs)


class LoadTestError(Exception):
    """The load test could not run (server unreachable, workers failed...)."""


@dataclass
class _State:
    """What the coordinator knows while the test runs (also drives the progress bar)."""

    total: int
    phase: str = "starting"
    joined: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    packets: dict[int, int] = field(default_factory=dict)  # worker -> packets so far
    window_start: float | None = None
    window_seconds: float = 0.0
    server_cpu_pct: float | None = None
    pps: float = 0.0
    drop_meter: UdpDropMeter | None = None  # sampled every second during the window
    # (seconds into the window, server CPU % over the last interval, server RSS MB)
    timeline: list[tuple[float, float | None, float | None]] = field(default_factory=list)

    @property
    def settled(self) -> int:
        return len(self.joined) + len(self.failed)


class _Progress:
    """A one-line plain-text progress bar on a terminal, a line every 10 s otherwise."""

    def __init__(self, state: _State, stream: TextIO, enabled: bool) -> None:
        self.state = state
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self._last_line = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.ensure_future(self._run())

    def _line(self) -> str:
        s = self.state
        if s.window_start is not None and s.window_seconds > 0:
            done = min(1.0, max(0.0, (time.time() - s.window_start) / s.window_seconds))
            label = f"measuring {done * s.window_seconds:4.0f}/{s.window_seconds:.0f} s"
        else:
            done = s.settled / s.total if s.total else 0.0
            label = f"{s.phase} {s.settled}/{s.total}"
        width = 24
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        cpu = "n/a" if s.server_cpu_pct is None else f"{s.server_cpu_pct:.0f} %"
        failed = f" failed {len(s.failed)}" if s.failed else ""
        return (
            f"[{bar}] {label}  joined {len(s.joined)}/{s.total}{failed}"
            f"  recv {s.pps:,.0f} pkt/s  server CPU {cpu}"
        )

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.5)
                if self.tty:
                    self.stream.write("\r" + self._line() + "\x1b[K")
                    self.stream.flush()
                elif time.monotonic() - self._last_line >= 10:
                    self._last_line = time.monotonic()
                    print(self._line(), file=self.stream, flush=True)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.tty:
            self.stream.write("\r" + self._line() + "\x1b[K\n")
            self.stream.flush()


class _NamespacedProcess:
    """A worker process inside a weak point's network namespace (``ip netns exec``).

    multiprocessing cannot start a process in another namespace, so this one is
    a plain subprocess given one end of a socket pair (a
    ``multiprocessing.connection.Connection`` on both sides, as with a pipe);
    the plan is its first message.  ``ip netns exec`` execs the command, so the
    process ID is the Python worker's.  Offers what :class:`_Worker` uses of a
    ``multiprocessing.Process``.
    """

    def __init__(self, site: WeakSite, plan: WorkerPlan) -> None:
        ours, theirs = socket.socketpair()
        source = str(Path(__file__).resolve().parents[2])  # the folder holding `conference`
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        code = "from conference.tools.loadtest.worker import namespaced_entry; namespaced_entry()"
        argv = site.command([sys.executable, "-c", code, str(theirs.fileno())])
        try:
            self.popen = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env=env)
        finally:
            theirs.close()
        self.pid = self.popen.pid
        self.connection = multiprocessing.connection.Connection(ours.detach())
        self.connection.send(plan)

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        self.popen.terminate()


class _Worker:
    """The coordinator's handle on one worker (a process, or a task in this process).

    With a ``site`` the worker hosts that weak point, in its namespace, and
    this handle answers its requests for relays.
    """

    def __init__(
        self, plan: WorkerPlan, state: _State, in_process: bool, site: WeakSite | None = None
    ) -> None:
        self.plan = plan
        self.state = state
        self.site = site
        self.process: multiprocessing.process.BaseProcess | _NamespacedProcess | None = None
        self.task: asyncio.Task[None] | None = None
        self.pid: int | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._relay_tasks: set[asyncio.Task[None]] = set()
        if site is not None:
            self.process = _NamespacedProcess(site, plan)
            self.pid = self.process.pid
            self.channel: LocalChannel | PipeChannel = PipeChannel(self.process.connection)
        elif in_process:
            from .worker import run_worker

            mine, theirs = LocalChannel.pair()
            self.channel = mine
            self.task = asyncio.ensure_future(run_worker(plan, theirs))
            self.pid = os.getpid()
        else:
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            self.process = context.Process(
                target=process_entry, args=(child, plan), daemon=True, name="loadtest-worker"
            )
            self.process.start()
            child.close()
            self.pid = self.process.pid
            self.channel = PipeChannel(parent)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.channel.recv()
            event = message.get("event")
            if event == "joined":
                self.state.joined.add(int(message["index"]))
            elif event == "failed":
                self.state.failed[int(message["index"])] = str(message.get("error"))
            elif event == "progress":
                self.state.packets[self.plan.number] = int(message["packets"])
            elif event == "relay":
                task = asyncio.ensure_future(self._relay(message))
                self._relay_tasks.add(task)
                task.add_done_callback(self._relay_tasks.discard)
            else:
                await self.replies.put(message)
                if event in ("closed", "eof"):
                    return

    async def _relay(self, message: dict[str, Any]) -> None:
        """Answer a weak point's request for a relay to one of the server's candidates."""
        answer: dict[str, Any] = {
            "cmd": "relay",
            "id": message.get("id"),
            "index": message.get("index"),
        }
        try:
            if self.site is None:
                raise RuntimeError("this worker is not on a weak link")
            host, port = message["target"]
            answer["address"] = list(await self.site.relay(str(host), int(port)))
        except Exception as exc:  # the point drops that candidate; the report shows the failure
            answer["error"] = f"{type(exc).__name__}: {exc}"
        self.send(answer)

    async def reply(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and not self.process.is_alive():
                raise LoadTestError(f"worker {self.plan.number} exited ({self.process.exitcode})")
            try:
                message = await asyncio.wait_for(self.replies.get(), 1.0)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise LoadTestError(
                        f"worker {self.plan.number}: no '{event}' within {timeout:g} s"
                    ) from None
                continue
            if message.get("event") == event:
                return message
            if message.get("event") == "eof":
                raise LoadTestError(f"worker {self.plan.number} went away")

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(message)

    async def stop(self) -> None:
        self.send({"cmd": "close"})
        try:
            await self.reply("closed", 30)
        except LoadTestError:
            pass
        self.reader.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if self.process is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.process.join, 10)
            if self.process.is_alive():
                self.process.terminate()


def _split(seats: list[Seat], processes: int, scenario: str) -> list[list[Seat]]:
    """Spread the seats over ``processes`` workers by the streams they handle.

    A briefing point sends 2 streams and receives 4 (chair + speaker); the chair
    receives 2 per point, so in a large briefing it weighs as much as a third of
    the points.  The chair goes to worker 0, each point to the least loaded
    worker.
    """
    points = len(seats) - 1
    chair_weight = 1.0 + (
        points / 3
        if scenario == "briefing"
        else min(points, 25) / 3
        if scenario == "province"
        else 0.0
    )
    if scenario == "grid":
        chair_weight = 1.0
    shares: list[list[Seat]] = [[] for _ in range(processes)]
    loads = [0.0] * processes
    for seat in seats:
        if seat.is_chair:
            number = 0
            loads[0] += chair_weight
        else:
            number = min(range(processes), key=lambda n: (loads[n], n))
            loads[number] += 1.0
        shares[number].append(seat)
    return [share for share in shares if share]


async def _check_server(config: Config) -> dict[str, Any]:
    url = config.url.rstrip("/") + "/healthz"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                url, ssl=not config.insecure, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                if response.status != 200:
                    raise LoadTestError(f"{url} answered HTTP {response.status}")
                data: dict[str, Any] = await response.json()
                return data
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LoadTestError(f"cannot reach the server at {url}: {exc}") from exc


def _server_pids(config: Config) -> list[int]:
    """The server's processes: ``--server-pid``, or every process listening at the URL's
    port on this machine (the workers of ``serve --workers``)."""
    if config.server_pid is not None:
        return [config.server_pid]
    parsed = urlparse(config.url)
    if not is_local_host(parsed.hostname):
        return []
    return find_listening_pids(parsed.port or (443 if parsed.scheme == "https" else 80))


def _local_pid(url: str) -> int | None:
    """The process listening at ``url`` when it is on this machine (and ours to read)."""
    parsed = urlparse(url)
    if not is_local_host(parsed.hostname):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return find_listening_pid(port)


def _cpu_pct(start: CpuSample | None, end: CpuSample | None, wall: float) -> dict[str, Any]:
    if start is None or end is None or wall <= 0:
        return {"cpu_pct": None, "cpu_user_pct": None, "cpu_sys_pct": None}
    return {
        "cpu_pct": round((end.total - start.total) / wall * 100, 1),
        "cpu_user_pct": round((end.user - start.user) / wall * 100, 1),
        "cpu_sys_pct": round((end.system - start.system) / wall * 100, 1),
    }


def _mb(pids: list[int]) -> dict[str, float] | None:
    """RSS and peak RSS of ``pids`` together, in MB."""
    memories = [memory_kib(pid) for pid in pids]
    if not memories or any(memory is None for memory in memories):
        return None
    return {
        k: round(sum(m[k] for m in memories if m is not None) / 1024, 1) for k in ("rss", "peak")
    }


async def run_loadtest(
    config: Config, seats: list[Seat], *, progress: TextIO | None = None
) -> dict[str, Any]:
    """Run one load test; returns the report (see :func:`report.build_report`)."""
    stream = progress if progress is not None else sys.stderr
    health = await _check_server(config)
    server_pids = _server_pids(config)
    if cpu_sample_all(server_pids) is None:
        server_pids = []  # not ours to read (another user's process)
    server_pid = server_pids[0] if server_pids else None
    state = _State(total=len(seats))
    bar = _Progress(state, stream, config.progress)
    bar.start()
    state.phase = "preparing"
    from .media import prepare_media

    chosen = assign_weak(config.points, config.weak)
    weak = {seat.index: chosen[seat.index] for seat in seats if seat.index in chosen}
    if weak:
        from ..linkemu import available

        reason = await asyncio.to_thread(available)
        if reason is not None:
            bar.stop()
            raise LoadTestError(f"--weak needs network namespaces with tbf: {reason}")
    # every scenario has a publisher: encode the clips once, before the workers look for them
    bitrates = {config.bitrate} | {
        weak_camera_kbps(config.bitrate, PROFILES[name]) for name in weak.values()
    }
    for bitrate in sorted(bitrates):
        await asyncio.get_running_loop().run_in_executor(
            None, prepare_media, config.video, config.resolution, bitrate, config.fps
        )
    strong = [seat for seat in seats if seat.index not in weak]
    shares = _split(strong, min(config.processes, len(strong)), config.scenario)
    # a weak point's relays run here: then no participant does
    in_process = len(shares) == 1 and not weak
    if in_process and config.ice_hosts:
        from ...sfu.bridge import configure_ice_hosts

        configure_ice_hosts(config.ice_hosts)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    rss_before = _mb(server_pids)
    participants_before = health.get("participants")
    sampler: asyncio.Task[None] | None = None
    workers: list[_Worker] = []
    sites: dict[int, WeakSite] = {}
    try:
        for number, share in enumerate(shares):
            plan = WorkerPlan(number, config, share, config.points, seats[0].identity)
            workers.append(_Worker(plan, state, in_process))
        for seat in seats:
            if seat.index in weak:
                site = await _open_site(config, seat, weak[seat.index])
                sites[seat.index] = site
                plan = WorkerPlan(
                    len(workers),
                    _weak_config(config, site),
                    [seat],
                    config.points,
                    seats[0].identity,
                    weak=site.profile.name,
                )
                workers.append(_Worker(plan, state, False, site))
        for worker in workers:
            await worker.reply("ready", READY_TIMEOUT)
        state.phase = "joining"
        t0 = time.time() + 0.5
        for worker in workers:
            worker.send({"cmd": "start", "t0": t0})
        last_offset = CHAIR_HEAD_START + max(0, config.points - 1) / config.ramp
        deadline = t0 + last_offset + config.join_timeout + 5
        sampler = asyncio.ensure_future(_sample_while_running(state, server_pids))
        while state.settled < state.total and time.time() < deadline:
            await asyncio.sleep(0.1)
        # the workers' one full garbage collection stalls what they receive: before
        # the window, then SETTLE for the backlog to drain
        for worker in workers:
            worker.send({"cmd": "settle"})
        for worker in workers:
            await worker.reply("settled", READY_TIMEOUT)
        window_start = time.time() + SETTLE
        await asyncio.sleep(max(0.0, window_start - time.time()))
        health_now = await _check_server(config)
        state.phase = "measuring"
        state.window_start = window_start
        state.window_seconds = config.duration
        pids = [w.pid for w in workers if w.pid is not None]
        own = sorted(set(pids + [os.getpid()]))
        server_cpu0 = cpu_sample_all(server_pids)
        worker_cpu0 = {pid: cpu_sample(pid) for pid in server_pids}
        node_pids = {url: _local_pid(url) for url in config.nodes}
        node_cpu0 = {url: cpu_sample(pid) if pid else None for url, pid in node_pids.items()}
        gen_cpu0 = {pid: cpu_sample(pid) for pid in own}
        busy0 = machine_busy_seconds()
        udp0 = udp_receive_errors()
        drop_meter = UdpDropMeter(own + server_pids)
        drop_meter.mark()
        state.drop_meter = drop_meter
        rss_window_start = _mb(server_pids)
        await asyncio.gather(*(site.mark() for site in sites.values()))
        wall0 = time.monotonic()
        for worker in workers:
            worker.send({"cmd": "mark", "floor_start": window_start})
        await asyncio.sleep(config.duration)
        wall = time.monotonic() - wall0
        server_cpu1 = cpu_sample_all(server_pids)
        worker_cpu1 = {pid: cpu_sample(pid) for pid in server_pids}
        node_cpu1 = {url: cpu_sample(pid) if pid else None for url, pid in node_pids.items()}
        gen_cpu1 = {pid: cpu_sample(pid) for pid in own}
        busy1 = machine_busy_seconds()
        udp1 = udp_receive_errors()
        drops = drop_meter.totals()
        rss_end = _mb(server_pids)
        link_stats = dict(
            zip(
                sites,
                await asyncio.gather(*(site.stats(wall) for site in sites.values())),
                strict=True,
            )
        )
        state.phase = "reporting"
        for worker in workers:
            worker.send({"cmd": "report"})
        replies = [await worker.reply("report", 60) for worker in workers]
    finally:
        if sampler is not None:
            sampler.cancel()
        bar.stop()
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
        for site in sites.values():
            await site.close()

    seat_reports = sorted((s for r in replies for s in r["seats"]), key=lambda s: s["index"])
    for seat_report in seat_reports:
        seat_report["link"] = weak.get(seat_report["index"])
        if seat_report["index"] in link_stats:
            seat_report["link_stats"] = link_stats[seat_report["index"]]
    server_cpu = _cpu_pct(server_cpu0, server_cpu1, wall)
    generator_cpu = 0.0
    for pid in own:
        a, b = gen_cpu0.get(pid), gen_cpu1.get(pid)
        if a is not None and b is not None:
            generator_cpu += (b.total - a.total) / wall * 100
    machine_busy = (busy1 - busy0) / wall * 100 if busy0 is not None and busy1 else None
    participants = health_now.get("participants")
    if isinstance(participants, int) and isinstance(participants_before, int):
        participants -= participants_before
    server: dict[str, Any] = {
        "pid": server_pid,
        "url": config.url,
        "version": health.get("version"),
        **server_cpu,
        "participants": participants,
        "rss_mb_before": rss_before["rss"] if rss_before else None,
        "rss_mb_window_start": rss_window_start["rss"] if rss_window_start else None,
        "rss_mb_end": rss_end["rss"] if rss_end else None,
        "rss_mb_peak": rss_end.get("peak") if rss_end else None,
        # datagrams the kernel dropped at the server's sockets (full receive buffers)
        "udp_drops": (sum(drops.get(pid) or 0 for pid in server_pids) if server_pids else None),
        "timeline": state.timeline,
    }
    if len(server_pids) > 1:  # serve --workers: each worker's share
        server["workers"] = [
            {"pid": pid} | _cpu_pct(worker_cpu0[pid], worker_cpu1[pid], wall) for pid in server_pids
        ]
    if config.nodes:  # the other nodes of the meeting (--node): their CPU in the window
        server["nodes"] = [
            {"url": url, "pid": node_pids[url]} | _cpu_pct(node_cpu0[url], node_cpu1[url], wall)
            for url in config.nodes
        ]
    nodes_cpu = sum(node.get("cpu_pct") or 0.0 for node in server.get("nodes", []))
    lags = [r["lag"] for r in replies]
    # what the generator's points handled in the window: RTP received (each stream's
    # packets) and sent (lean publishers only): its CPU per packet
    received = sum(st["packets"] for seat in seat_reports for st in seat["streams"])
    sent = [seat.get("packets_sent") for seat in seat_reports]
    handled = received + sum(n for n in sent if n is not None)
    generator = {
        "processes": len(workers),
        "pids": own,
        "cpu_pct": round(generator_cpu, 1),
        "packets_received_per_s": round(received / wall),
        "packets_sent_per_s": round(sum(n for n in sent if n is not None) / wall)
        if any(n is not None for n in sent)
        else None,
        "cpu_us_per_packet": round(generator_cpu * 1e4 / (handled / wall), 2)
        if handled and any(n is not None for n in sent)
        else None,
        # of the RTP packets the points' receivers took in, the share read from headers
        "headers_read_pct": round(
            100
            * sum(seat.get("headers_read") or 0 for seat in seat_reports)
            / max(1, sum(seat.get("receiver_packets") or 0 for seat in seat_reports)),
            1,
        ),
        "lag_p99_ms": max((lag["p99_ms"] or 0.0 for lag in lags), default=None),
        "lag_max_ms": max((lag["max_ms"] or 0.0 for lag in lags), default=None),
        "machine_busy_pct": None if machine_busy is None else round(machine_busy, 1),
        "udp_drops": sum(drops.get(pid, 0) for pid in own),
        "udp_receive_buffer_drops_machine": None if udp0 is None or udp1 is None else udp1 - udp0,
        "others_pct": None
        if machine_busy is None or server_cpu["cpu_pct"] is None
        else round(machine_busy - server_cpu["cpu_pct"] - nodes_cpu - generator_cpu, 1),
    }
    identities = {seat.index: seat.identity for seat in seats}
    schedule = FloorSchedule(
        0 if config.scenario == "webinar" else config.points, config.floor, window_start
    )
    floor_changes = [
        (at, identities[holder]) for at, holder in schedule.changes(window_start + config.duration)
    ]
    config_dict = config.to_dict() | {"version": __version__}
    config_dict.pop("json_path", None)
    report = build_report(
        config=config_dict,
        seats=seat_reports,
        window={"start": window_start, "seconds": round(wall, 3), "date": started},
        server=server,
        generator=generator,
        floor_changes=floor_changes,
        machine=machine_info(),
    )
    return report


async def _open_site(config: Config, seat: Seat, profile: str) -> WeakSite:
    """Open the weak link of ``seat``: namespace, rate limits, forwarder to the server."""
    parsed = urlparse(config.url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    site = WeakSite(
        seat.index,
        seat.identity,
        PROFILES[profile],
        (host, port),
        allow_remote=not is_local_host(host),  # a remote server: its candidates are remote
    )
    try:
        await site.open()
    except BaseException as exc:
        await site.close()
        if isinstance(exc, (LinkEmuError, OSError)):
            raise LoadTestError(f"{seat.identity}: cannot set up its weak link: {exc}") from exc
        raise
    return site


def _weak_config(config: Config, site: WeakSite) -> Config:
    """The configuration a weak point's worker runs with (see :mod:`.weak`)."""
    return dataclasses.replace(
        config,
        url=site.url(urlparse(config.url).scheme),
        ice_hosts=[site.address],
        bitrate_kbps=weak_camera_kbps(config.bitrate, site.profile),
        processes=1,
        weak=[],
    )


async def _sample_while_running(state: _State, server_pids: list[int]) -> None:
    """Update the progress bar once a second; keep a server timeline every 10 s of the window."""
    last_packets = 0
    last_cpu = cpu_sample_all(server_pids)
    last = time.monotonic()
    mark_cpu, mark_at = last_cpu, last
    try:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            packets = sum(state.packets.values())
            state.pps = (packets - last_packets) / (now - last)
            last_packets = packets
            cpu = cpu_sample_all(server_pids)
            if cpu is not None and last_cpu is not None:
                state.server_cpu_pct = (cpu.total - last_cpu.total) / (now - last) * 100
            last_cpu = cpu
            last = now
            if state.drop_meter is not None:
                state.drop_meter.sample()
            if state.window_start is None:
                mark_cpu, mark_at = cpu, now
            elif now - mark_at >= TIMELINE_STEP:
                pct = None
                if cpu is not None and mark_cpu is not None:
                    pct = round((cpu.total - mark_cpu.total) / (now - mark_at) * 100, 1)
                memory = _mb(server_pids)
                state.timeline.append(
                    (
                        round(time.time() - state.window_start, 1),
                        pct,
                        memory["rss"] if memory else None,
                    )
                )
                mark_cpu, mark_at = cpu, now
    except asyncio.CancelledError:
        pass
