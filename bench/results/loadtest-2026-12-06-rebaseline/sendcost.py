"""CPU of one ``sendto`` of a 1,100-byte datagram on loopback, in a tight loop or paced.

    taskset -c 0 python sendcost.py local 40         # 40 receiving sockets in this process
    taskset -c 0 python sendcost.py remote 40        # 40 sockets in a process on core 1
    RATE=10000 taskset -c 0 python sendcost.py remote 40   # paced: 10,000 datagrams/s

The sender's ``time.thread_time`` around each burst (one datagram to each socket), per
datagram.  Paced, the sender sleeps between bursts as a server at ~50 % of a core does,
and each burst starts on cold caches: the same call costs more (BENCHMARKS.md, "The
issue's code on the same host").
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

COUNT = 200_000
PAYLOAD = b"x" * 1100


def bound_sockets(count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sockets.append(sock)
    return sockets


def drain(sock: socket.socket) -> None:
    try:
        while True:
            sock.recv(2048)
    except BlockingIOError:
        pass


def receive(count: int) -> None:
    """The other process: ``count`` sockets read as an event loop does (epoll)."""
    sockets = bound_sockets(count)
    poller = select.epoll()
    by_fd = {}
    for sock in sockets:
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = sock
    print(" ".join(str(sock.getsockname()[1]) for sock in sockets), flush=True)
    while True:
        for fd, _ in poller.poll():
            drain(by_fd[fd])


def send(mode: str, count: int) -> None:
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local: list[socket.socket] = []
    child = None
    if mode == "local":
        local = bound_sockets(count)
        addresses = [sock.getsockname() for sock in local]
    else:
        command = ["taskset", "-c", "1", sys.executable, __file__, "receive", str(count)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        addresses = [("127.0.0.1", int(port)) for port in child.stdout.readline().split()]
    rate = float(os.environ.get("RATE", "0"))
    spent = 0.0
    sent = 0
    started = time.monotonic()
    while sent < COUNT:
        before = time.thread_time()
        for address in addresses:
            out.sendto(PAYLOAD, address)
        spent += time.thread_time() - before
        sent += len(addresses)
        for sock in local:
            drain(sock)
        if rate:
            pause = started + sent / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    print(f"{mode} sockets={count} rate={rate:.0f}/s: {spent / sent * 1e6:.2f} us CPU per sendto")
    if child is not None:
        child.kill()


if __name__ == "__main__":
    if sys.argv[1] == "receive":
        receive(int(sys.argv[2]))
    else:
        send(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
