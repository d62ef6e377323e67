"""Process and machine accounting from ``/proc`` (Linux), without dependencies.

The load tester reports the server's *own* CPU time (utime + stime of all its
threads, ``/proc/<pid>/stat``) and memory (``VmRSS``/``VmHWM`` from
``/proc/<pid>/status``), and finds the server process of a local URL by the
port it listens on (``/proc/net/tcp*`` socket inode -> ``/proc/<pid>/fd``).
Every function returns ``None`` (or an empty result) where ``/proc`` is not
available or the process is not ours to inspect, so reports can say "n/a".
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CpuSample",
    "UdpDropMeter",
    "cpu_sample",
    "cpu_sample_all",
    "find_listening_pid",
    "find_listening_pids",
    "is_local_host",
    "machine_busy_seconds",
    "machine_info",
    "memory_kib",
    "udp_drops_by_pid",
    "udp_error_counters",
    "udp_receive_errors",
]

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds a process has used so far (all threads)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


def cpu_sample(pid: int) -> CpuSample | None:
    """utime and stime of ``pid`` in seconds, or None if it cannot be read."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and ')': split after the last ')'
    fields = data[data.rindex(b")") + 2 :].split()
    return CpuSample(int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)


def memory_kib(pid: int) -> dict[str, int] | None:
    """``{"rss": VmRSS, "peak": VmHWM}`` of ``pid`` in KiB, or None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values["rss" if name == "VmRSS" else "peak"] = int(rest.split()[0])
    return values if "rss" in values else None


def machine_busy_seconds() -> float | None:
    """CPU seconds used by everything on the machine (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def udp_error_counters() -> dict[str, int]:
    """Machine-wide UDP buffer overflows so far (/proc/net/snmp): ``RcvbufErrors``,
    ``SndbufErrors``; empty if they cannot be read."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return {}
    udp = [line for line in lines if line and line[0] == "Udp:"]
    if len(udp) < 2:
        return {}
    table = dict(zip(udp[0][1:], udp[1][1:], strict=False))
    return {k: int(table[k]) for k in ("RcvbufErrors", "SndbufErrors") if k in table}


def udp_receive_errors() -> int | None:
    """Datagrams the kernel dropped for full receive buffers, machine-wide (/proc/net/snmp)."""
    return udp_error_counters().get("RcvbufErrors")


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python version and load average now, for reports."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def _udp_drops_by_inode(proc: str = "/proc") -> dict[str, int]:
    """``{socket inode: drops}`` of the UDP sockets in the network namespace of
    ``proc`` (``/proc``: ours; ``/proc/PID``: that process's)."""
    drops: dict[str, int] = {}
    for table in (f"{proc}/net/udp", f"{proc}/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 13:
                drops[parts[9]] = int(parts[12])
    return drops


def udp_drops_by_pid(pids: list[int]) -> dict[int, dict[str, int]]:
    """Per process, ``{socket inode: datagrams dropped so far}`` of its open UDP sockets.

    Sockets come and go: :class:`UdpDropMeter` follows them over time.
    """
    by_namespace: dict[str, dict[str, int]] = {}
    result: dict[int, dict[str, int]] = {}
    for pid in pids:
        # a weak point's worker runs in a network namespace of its own
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            namespace = ""
        by_inode = by_namespace.get(namespace)
        if by_inode is None:
            by_inode = by_namespace[namespace] = _udp_drops_by_inode(f"/proc/{pid}")
        sockets: dict[str, int] = {}
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                inode = target[8:-1] if target.startswith("socket:[") else None
                if inode is not None and inode in by_inode:
                    sockets[inode] = by_inode[inode]
        except OSError:
            continue
        result[pid] = sockets
    return result


class UdpDropMeter:
    """Datagrams dropped at the UDP sockets of some processes, sampled repeatedly.

    Sockets open and close during a test (a failed connection takes its drop
    counter with it), so :meth:`sample` is called often and remembers the
    highest count seen per socket; :meth:`mark` starts the window.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)
        self._seen: dict[int, dict[str, int]] = {pid: {} for pid in self.pids}
        self._base: dict[int, dict[str, int]] = {pid: {} for pid in self.pids}

    def sample(self) -> None:
        for pid, sockets in udp_drops_by_pid(self.pids).items():
            seen = self._seen[pid]
            for inode, drops in sockets.items():
                if drops > seen.get(inode, 0):
                    seen[inode] = drops
                else:
                    seen.setdefault(inode, drops)

    def mark(self) -> None:
        self.sample()
        self._base = {pid: dict(seen) for pid, seen in self._seen.items()}

    def totals(self) -> dict[int, int]:
        """Drops per process since :meth:`mark` (sockets opened later count fully)."""
        self.sample()
        return {
            pid: sum(max(0, n - self._base[pid].get(inode, 0)) for inode, n in seen.items())
            for pid, seen in self._seen.items()
        }


def is_local_host(host: str | None) -> bool:
    """True for the loopback names the load tester treats as "this machine"."""
    return (host or "").lower() in LOCAL_HOSTS


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A = LISTEN
                continue
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                inodes.add(parts[9])
    return inodes


def find_listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine, if we may see it."""
    pids = find_listening_pids(port)
    return pids[0] if pids else None


def find_listening_pids(port: int) -> list[int]:
    """Every process listening on TCP ``port`` here (the workers of ``serve --workers``
    share it), lowest pid first."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.readlink(fd) in wanted:
                        found.append(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return sorted(found)


def cpu_sample_all(pids: list[int]) -> CpuSample | None:
    """The CPU seconds of ``pids`` together (None if one cannot be read)."""
    samples = [cpu_sample(pid) for pid in pids]
    if not samples or any(sample is None for sample in samples):
        return None
    return CpuSample(
        sum(s.user for s in samples if s is not None),
        sum(s.system for s in samples if s is not None),
    )
