"""A local network of hosts on one machine, for the multi-node tests.

`Lan` makes a switch (a bridge inside a network namespace of its own) and plugs into
it, by veth pairs, the root namespace (where the test runs and where Redis and
PostgreSQL listen) and one namespace per host.  Everyone is on one /24
(10.251.S.0/24, S from the process ID): the root end is ``.1``, host ``n`` is
``.(n + 1)``.  Nothing global changes (no forwarding, no route in the root namespace
beyond the /24 itself); `close` deletes the namespaces, which takes their veths.

Redis and PostgreSQL listen on 127.0.0.1 only: `TcpForward` (asyncio, in the test's
loop) listens on the root end's address and connects each connection to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from typing import Any

IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, text=True)


def lan_available() -> str | None:
    """None when this machine can make a `Lan` (root, ip, bridges), else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists(IP):
        return "the ip command is missing"
    probe = f"lanprobe{os.getpid() % 10000}"
    try:
        _ip("netns", "add", probe)
        try:
            _ip("netns", "exec", probe, IP, "link", "add", "br0", "type", "bridge")
        finally:
            _ip("netns", "delete", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot make a bridge in a namespace: {exc.stderr.strip()}"
    return None


class Lan:
    """A switch, the root namespace and ``hosts`` namespaces on one /24."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"{os.getpid() % 200 + 20}"
        self.subnet = f"10.251.{self.tag}"
        self.switch = f"lan{self.tag}sw"
        self.names = [f"lan{self.tag}h{n}" for n in range(1, hosts + 1)]
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def root_address(self) -> str:
        return f"{self.subnet}.1"

    def address(self, host: int) -> str:
        """The address of host ``host`` (1-based)."""
        return f"{self.subnet}.{host + 1}"

    def command(self, host: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``host``'s namespace."""
        return [IP, "netns", "exec", self.names[host - 1], *argv]

    def _plug(self, end: str, inside: str | None, address: str) -> None:
        """A veth pair: ``end`` in ``inside`` (None: the root namespace) with ``address``,
        its peer on the switch's bridge."""
        peer = end + "b"
        _ip("link", "add", end, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.switch)
        _ip("netns", "exec", self.switch, IP, "link", "set", peer, "master", "br0", "up")
        if inside is None:
            _ip("addr", "add", f"{address}/24", "dev", end)
            _ip("link", "set", end, "up")
        else:
            _ip("link", "set", end, "netns", inside)
            _ip("netns", "exec", inside, IP, "addr", "add", f"{address}/24", "dev", end)
            _ip("netns", "exec", inside, IP, "link", "set", end, "up")

    def _build(self) -> None:
        for name in [self.switch, *self.names]:
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("netns", "exec", name, IP, "link", "set", "lo", "up")
        _ip("netns", "exec", self.switch, IP, "link", "add", "br0", "type", "bridge")
        _ip("netns", "exec", self.switch, IP, "link", "set", "br0", "up")
        self._plug(f"lan{self.tag}r", None, self.root_address)
        for n, name in enumerate(self.names, start=1):
            self._plug(f"lan{self.tag}e{n}", name, self.address(n))

    def close(self) -> None:
        for name in reversed(self._made):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "delete", name)
        self._made.clear()
        # the root end went with its peer on the switch; make sure
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "delete", f"lan{self.tag}r")


class TcpForward:
    """Listen on ``host``:``port`` and connect each connection to ``target``."""

    def __init__(self, host: str, port: int, target: tuple[str, int]) -> None:
        self.address = (host, port)
        self.target = target
        self.server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, *self.address)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        tasks = [
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)

    async def close(self) -> None:
        """Stop listening; the connections still open end with their peers (the nodes
        have stopped by then)."""
        if self.server is not None:
            self.server.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
