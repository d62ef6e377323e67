"""A load-test worker: runs a share of the simulated participants in one event loop.

The coordinator (:mod:`conference.tools.loadtest.runner`) and its workers exchange
small dicts over a :class:`Channel`: in the same process (``--processes 1``)
through asyncio queues, otherwise through a ``multiprocessing`` pipe with a
reader thread on each side.  A worker:

1. loads the media and says ``ready``;
2. on ``start`` (a wall-clock time ``t0``) joins each of its seats at
   ``t0 + offset`` (the chair first, then the points at ``--ramp`` per second,
   interleaved across workers), reporting ``joined`` or ``failed`` for each;
3. sends ``progress`` (packets and bytes received so far) every second and
   keeps the floor: the seat that holds it sends speech, the others room noise;
4. on ``settle`` (every seat joined) takes what exists out of the garbage
   collector's full passes and answers ``settled``;
5. on ``mark`` (the measurement window starts, with the floor schedule) marks
   every stream; on ``report`` answers with every seat's report; on ``close``
   leaves and answers ``closed``.

A worker for a point on a weak link (:mod:`.weak`) hosts that one point, runs
inside the point's network namespace (started by :func:`namespaced_entry`
through ``ip netns exec``, its channel a socket pair) and asks the coordinator
for relays (``relay`` events, answered by ``relay`` commands).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing.connection
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ...sfu.bridge import configure_ice_hosts
from .eventloop import LoadTestEventLoop
from .media import MediaSet, prepare_media
from .plan import Config, FloorSchedule, Seat
from .sim import SimulatedSeat
from .weak import RelayRequester

__all__ = [
    "Channel",
    "LocalChannel",
    "PipeChannel",
    "WorkerPlan",
    "namespaced_entry",
    "process_entry",
    "run_worker",
]

logger = logging.getLogger(__name__)

#: an event-loop stall longer than this is logged (seconds)
STALL = 1.0

Message = dict[str, Any]
CHAIR_HEAD_START = 1.0  # seconds between the chair's join and the first point's


class Channel(Protocol):
    """One side of the coordinator <-> worker link."""

    def send(self, message: Message) -> None: ...

    async def recv(self) -> Message: ...


class LocalChannel:
    """In-process channel: :meth:`pair` gives the two connected ends."""

    def __init__(self, inbox: asyncio.Queue[Message], outbox: asyncio.Queue[Message]) -> None:
        self._inbox = inbox
        self._outbox = outbox

    @classmethod
    def pair(cls) -> tuple[LocalChannel, LocalChannel]:
        a: asyncio.Queue[Message] = asyncio.Queue()
        b: asyncio.Queue[Message] = asyncio.Queue()
        return cls(a, b), cls(b, a)

    def send(self, message: Message) -> None:
        self._outbox.put_nowait(message)

    async def recv(self) -> Message:
        return await self._inbox.get()


class PipeChannel:
    """A ``multiprocessing`` connection read by a thread into an asyncio queue."""

    def __init__(self, connection: multiprocessing.connection.Connection) -> None:
        self._connection = connection
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._lock = threading.Lock()
        loop = asyncio.get_running_loop()

        def read() -> None:
            while True:
                try:
                    message = connection.recv()
                except (EOFError, OSError):
                    message = {"event": "eof", "cmd": "close"}
                loop.call_soon_threadsafe(self._queue.put_nowait, message)
                if message.get("event") == "eof":
                    return

        threading.Thread(target=read, name="loadtest-channel", daemon=True).start()

    def send(self, message: Message) -> None:
        with self._lock:
            try:
                self._connection.send(message)
            except (BrokenPipeError, OSError):
                pass

    async def recv(self) -> Message:
        return await self._queue.get()


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker runs (pickled to worker processes)."""

    number: int
    config: Config
    seats: list[Seat]
    points: int  # points in the whole test (for the floor schedule)
    chair_identity: str  # the chair may run in another worker
    #: the link profile of this worker's one seat, which is on a weak link (:mod:`.weak`)
    weak: str | None = None

    def offset(self, seat: Seat) -> float:
        """Seconds after ``t0`` at which ``seat`` joins."""
        if seat.is_chair:
            return 0.0
        return CHAIR_HEAD_START + (seat.index - 1) / self.config.ramp


class _LagMonitor:
    """How late the event loop wakes from a 20 ms sleep: this process's own queueing."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.measuring = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            late = time.monotonic() - before - 0.02
            if self.measuring:
                self.samples.append(late * 1000)
            if late > STALL:
                # long enough to miss WebSocket heartbeats (the server waits 5 s for a pong)
                logger.warning("load-test process %d stalled for %.1f s", os.getpid(), late)

    def summary(self) -> dict[str, float | None]:
        values = sorted(self.samples)
        if not values:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "p50_ms": round(values[len(values) // 2], 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            "max_ms": round(values[-1], 1),
        }

    def stop(self) -> None:
        self._task.cancel()


async def run_worker(plan: WorkerPlan, channel: Channel, configure_ice: bool = True) -> None:
    """Run the seats of ``plan`` as the coordinator commands (see the module doc)."""
    config = plan.config
    if configure_ice and config.ice_hosts:
        configure_ice_hosts(config.ice_hosts)
    publishes = any(seat.role != "viewer" for seat in plan.seats)
    media: MediaSet | None = None
    if publishes:
        media = await asyncio.get_running_loop().run_in_executor(
            None,
            prepare_media,
            config.video,
            config.resolution,
            config.bitrate,
            config.fps,
        )
    requesters: dict[int, RelayRequester] = {}
    if plan.weak is not None:
        requesters = {seat.index: RelayRequester(channel.send, seat.index) for seat in plan.seats}
    seats = [
        SimulatedSeat(
            seat,
            config.scenario,
            plan.chair_identity,
            process=plan.number,
            relay=requesters.get(seat.index),
            lean=config.lean,
            muted=config.muted,
        )
        for seat in plan.seats
    ]
    channel.send({"event": "ready", "worker": plan.number, "pid": os.getpid()})
    floor = FloorSchedule(0 if config.scenario == "webinar" else plan.points, config.floor)
    tasks: list[asyncio.Task[Any]] = []
    lag = _LagMonitor()

    async def join(simulated: SimulatedSeat, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        try:
            url = config.url_of(
                simulated.seat.index, simulated.seat.identity == plan.chair_identity
            )
            await simulated.join(url, config.meeting, media, config.insecure, config.join_timeout)
        except Exception as exc:
            simulated.error = f"{type(exc).__name__}: {exc}"[:300]
            channel.send(
                {"event": "failed", "index": simulated.seat.index, "error": simulated.error}
            )
            return
        channel.send({"event": "joined", "index": simulated.seat.index})

    async def keep_floor() -> None:
        while True:
            holder = floor.holder(time.time())
            for simulated in seats:
                simulated.set_floor(holder)
            await asyncio.sleep(0.05)

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            packets = sum(s.packets for seat in seats for s in seat.streams)
            received = sum(s.bytes for seat in seats for s in seat.streams)
            channel.send({"event": "progress", "packets": packets, "bytes": received})

    try:
        while True:
            message = await channel.recv()
            command = message.get("cmd")
            if command == "start":
                t0 = float(message["t0"])
                for simulated in seats:
                    at = t0 + plan.offset(simulated.seat)
                    tasks.append(asyncio.ensure_future(join(simulated, at)))
                tasks.append(asyncio.ensure_future(keep_floor()))
                tasks.append(asyncio.ensure_future(progress()))
            elif command == "settle":
                # every seat joined: what they made lives to the end, so keep it out of
                # the garbage collector's full passes (each walked it all, stalling the
                # loop, as the server's settle_heap explains).  This one full pass
                # stalls every stream this worker receives (0.6-0.8 s with 100 points
                # in one process): it happens before the window, never inside it.
                gc.collect()
                gc.freeze()
                channel.send({"event": "settled", "worker": plan.number})
            elif command == "mark":
                floor = FloorSchedule(floor.points, floor.period, float(message["floor_start"]))
                now = time.monotonic()
                for simulated in seats:
                    simulated.mark(now)
                lag.samples.clear()
                lag.measuring = True
            elif command == "report":
                lag.measuring = False
                now = time.monotonic()
                channel.send(
                    {
                        "event": "report",
                        "worker": plan.number,
                        "pid": os.getpid(),
                        "lag": lag.summary(),
                        "seats": [simulated.report(now) for simulated in seats],
                    }
                )
            elif command == "relay":
                requester = requesters.get(int(message.get("index", -1)))
                if requester is not None:
                    requester.resolve(message)
            elif command == "close":
                break
    finally:
        lag.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in seats), return_exceptions=True)
        channel.send({"event": "closed", "worker": plan.number})


def process_entry(connection: multiprocessing.connection.Connection, plan: WorkerPlan) -> None:
    """``multiprocessing`` target: run one worker in its own process."""
    logging.basicConfig(level=logging.ERROR)
    # a simulated participant's own failures (an offer it could not answer) must show
    logging.getLogger("conference").setLevel(logging.WARNING)
    ice = logging.getLogger("aioice.ice")  # of aioice's news, only "Consent to send expired"
    ice.setLevel(logging.INFO)
    ice.addFilter(lambda record: "Consent" in record.getMessage())

    async def main() -> None:
        await run_worker(plan, PipeChannel(connection))

    try:
        with asyncio.Runner(loop_factory=LoadTestEventLoop) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        pass


def namespaced_entry() -> None:
    """Entry of a worker started inside a network namespace (``ip netns exec``).

    ``python -c "...; namespaced_entry()" FD``: FD is this end of a socket pair
    to the coordinator, whose first message is the :class:`WorkerPlan`.
    """
    connection = multiprocessing.connection.Connection(int(sys.argv[1]))
    plan = connection.recv()
    process_entry(connection, plan)
