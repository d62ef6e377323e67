"""Run ``conference serve`` with the event loop's CPU time split by what it runs.

    python bench/loop_profile.py OUT.json serve --host 127.0.0.1 ...

SIGUSR1 starts counting, SIGUSR2 stops and writes OUT.json.  While counting, every
callback the loop runs (a readable socket's handler, a task's step, a timer) is
timed with ``time.thread_time`` and charged to a name: the handler's class and
method (``_BatchedDatagramTransport._read_ready``), a task's coroutine
(``task ForwardingSender._run_rtcp``) or the function; the selector's ``select``
and the garbage collector (``gc.callbacks``, by generation) are timed too, and
what remains of the thread's CPU time is the loop's own bookkeeping
(``_run_once``: timers heap, ready queue).  Counts come with each: datagrams per
read, events per ``select``, handles per loop turn.

Inside the UDP sockets' handler each datagram is timed too, by kind (RTP, RTCP,
STUN, DTLS; ``recvfrom`` apart), and ``LOOP_PROFILE_TIME`` names functions to
time on every call (``conference.sfu.publication:Publication.on_rtp,...``).

Unlike a tracing profiler this changes little of what it measures: two clock
reads (``clock_gettime``, ~0.3 µs each) per callback, per datagram and per call
of a named function, nothing else.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import selectors
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if not os.environ.get("PYTHONPATH"):  # else the tree it names (a "before" checkout)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class LoopAccount:
    def __init__(self) -> None:
        self.on = False
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.t0 = 0.0
        self.wall0 = 0.0
        self.gc_start = 0.0
        self.datagrams = 0
        self.reads = 0
        self.events = 0

    def start(self) -> None:
        self.cpu.clear()
        self.calls.clear()
        self.datagrams = self.reads = self.events = 0
        self.t0 = time.thread_time()
        self.wall0 = time.monotonic()
        self.on = True

    def report(self) -> dict[str, Any]:
        total = time.thread_time() - self.t0
        wall = time.monotonic() - self.wall0
        # the datagram, function and collector rows are parts of the callbacks' rows
        named = sum(
            v for k, v in self.cpu.items() if not k.startswith(("gc ", "datagram: ", "fn "))
        )
        rows = sorted(self.cpu.items(), key=lambda kv: -kv[1])
        return {
            "window_s": round(wall, 2),
            "thread_cpu_s": round(total, 3),
            "thread_cpu_pct": round(100 * total / wall, 1) if wall else None,
            "loop_bookkeeping_s": round(total - named, 3),
            "datagrams": self.datagrams,
            "reads": self.reads,
            "select_events": self.events,
            "rows": [
                {
                    "name": k,
                    "cpu_s": round(v, 4),
                    "share_pct": round(100 * v / total, 2) if total else None,
                    "calls": self.calls[k],
                    "us_per_call": round(1e6 * v / self.calls[k], 1) if self.calls[k] else None,
                }
                for k, v in rows
            ],
        }


ACCOUNT = LoopAccount()


def _name(callback: Any) -> str:
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return f"task {getattr(coro, '__qualname__', type(coro).__name__)}"
    if owner is not None and not isinstance(owner, type(sys)):
        return f"{type(owner).__name__}.{getattr(callback, '__name__', '?')}"
    if isinstance(callback, asyncio.Handle):
        return "handle"
    return getattr(callback, "__qualname__", None) or type(callback).__name__


def _wrap(owner: Any, attr: str, key: str, account: LoopAccount, clock: Any) -> None:
    function = getattr(owner, attr)
    depth = [0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        if not account.on or depth[0]:
            return function(*args, **kwargs)
        depth[0] += 1
        start = clock()
        try:
            return function(*args, **kwargs)
        finally:
            account.cpu[key] += clock() - start
            account.calls[key] += 1
            depth[0] -= 1

    setattr(owner, attr, timed)


def install(out: str) -> None:
    account = ACCOUNT
    clock = time.thread_time
    run = asyncio.events.Handle._run

    def timed_run(self: asyncio.Handle) -> None:
        if not account.on:
            run(self)
            return
        start = clock()
        run(self)
        key = _name(self._callback)  # type: ignore[attr-defined]
        account.cpu[key] += clock() - start
        account.calls[key] += 1

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]

    select = selectors.EpollSelector.select

    def timed_select(self: Any, timeout: float | None = None) -> Any:
        if not account.on:
            return select(self, timeout)
        start = clock()
        ready = select(self, timeout)
        account.cpu["selector.select"] += clock() - start
        account.calls["selector.select"] += 1
        account.events += len(ready)
        return ready

    selectors.EpollSelector.select = timed_select  # type: ignore[method-assign]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if not account.on:
            return
        if phase == "start":
            account.gc_start = clock()
        else:
            key = f"gc generation {info['generation']}"
            account.cpu[key] += clock() - account.gc_start
            account.calls[key] += 1

    gc.callbacks.append(on_gc)

    from conference.sfu import udp

    transport = getattr(udp, "_BatchedDatagramTransport", None)
    if transport is not None:
        read_ready = transport._read_ready

        def timed_read_ready(self: Any) -> None:
            """udp.py's batched read, each datagram's handling timed by its kind."""
            if not account.on:
                read_ready(self)
                return
            account.reads += 1
            buffer = self._loop.datagram_buffer
            cpu = account.cpu
            calls = account.calls
            for _ in range(udp.READ_BATCH):
                if self._conn_lost:
                    return
                start = clock()
                try:
                    size, addr = self._sock.recvfrom_into(buffer)
                    data = bytes(buffer[:size])
                except (BlockingIOError, InterruptedError):
                    cpu["datagram: recvfrom (EAGAIN)"] += clock() - start
                    calls["datagram: recvfrom (EAGAIN)"] += 1
                    return
                except OSError as exc:
                    self._protocol.error_received(exc)
                    return
                middle = clock()
                account.datagrams += 1
                self._protocol.datagram_received(data, addr)
                end = clock()
                first = data[0] if data else 0
                if 127 < first < 192:
                    kind = "RTCP" if len(data) > 1 and 191 < data[1] < 209 else "RTP"
                elif first < 4:
                    kind = "STUN"
                elif 19 < first < 64:
                    kind = "DTLS"
                else:
                    kind = "other"
                cpu["datagram: recvfrom"] += middle - start
                calls["datagram: recvfrom"] += 1
                cpu[f"datagram: handle {kind}"] += end - middle
                calls[f"datagram: handle {kind}"] += 1

        transport._read_ready = timed_read_ready

    # LOOP_PROFILE_TIME="module:Class.method,module:function": CPU time of each call
    # (inclusive), as extra rows "fn NAME" (the datagram rows above include them)
    for spec in filter(None, os.environ.get("LOOP_PROFILE_TIME", "").split(",")):
        module_name, _, qualname = spec.partition(":")
        module = importlib.import_module(module_name)
        *path, attr = qualname.split(".")
        owner: Any = module
        for part in path:
            owner = getattr(owner, part)
        _wrap(owner, attr, f"fn {qualname}", account, clock)

    def start(*_: object) -> None:
        account.start()

    def stop(*_: object) -> None:
        account.on = False
        Path(out).write_text(json.dumps(account.report(), indent=1))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> int:
    install(sys.argv[1])
    from conference.cli import main as cli_main

    args = sys.argv[2:]
    if args and args[0] == "conference":
        args = args[1:]
    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
