"""Helpers shared by the benchmarks: server processes, CPU accounting, RTP parsing.

Nothing here touches the network except the subprocesses it starts, which
listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from conference.tools.loadtest.procstat import (
    cpu_sample,
    machine_busy_seconds,
    machine_info,
    udp_error_counters,
)
from conference.tools.loadtest.report import percentile

__all__ = [
    "CLIP",
    "ROOT",
    "SECRET",
    "CpuMeter",
    "ServerProcess",
    "cpu_seconds",
    "cpu_split",
    "machine",
    "machine_busy",
    "payload_key",
    "percentile",
    "rtp_payload",
    "ssrc_of",
    "start_conference_server",
    "start_process",
    "udp_errors",
]

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-" + "x" * 40

# The clip every benchmark uses: 1280x720, 30 fps, ~1.5 Mbps VP8 + 32 kbps Opus.
CLIP = {"width": 1280, "height": 720, "fps": 30, "seconds": 10.0, "bitrate": 1_500_000}


# -- CPU accounting (the load tester's /proc readers) ----------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user seconds, system seconds) of process ``pid``."""
    sample = cpu_sample(pid)
    if sample is None:
        raise ProcessLookupError(f"cannot read /proc/{pid}/stat")
    return sample.user, sample.system


class CpuMeter:
    """CPU time of a set of processes over a wall-clock window."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)
        self.start_cpu: dict[int, float] = {}
        self.start_wall = 0.0

    def start(self) -> None:
        self.start_wall = time.monotonic()
        self.start_cpu = {pid: cpu_seconds(pid) for pid in self.pids}

    def stop(self) -> tuple[float, dict[int, float]]:
        """(wall seconds, {pid: % of one core})."""
        wall = time.monotonic() - self.start_wall
        usage = {pid: (cpu_seconds(pid) - self.start_cpu[pid]) / wall * 100 for pid in self.pids}
        return wall, usage


def machine_busy() -> float:
    """CPU seconds used by everything on the machine (all cores), from /proc/stat."""
    return machine_busy_seconds() or 0.0


def udp_errors() -> dict[str, int]:
    """System-wide UDP receive/send buffer overflow counters (/proc/net/snmp)."""
    counters = udp_error_counters()
    return {k: counters.get(k, 0) for k in ("RcvbufErrors", "SndbufErrors")}


machine = machine_info


# -- RTP --------------------------------------------------------------------------------
def rtp_payload(data: bytes) -> bytes | None:
    """The payload of a serialized RTP packet (None for RTCP or malformed input)."""
    if len(data) < 12 or (data[0] >> 6) != 2:
        return None
    if 192 <= data[1] <= 223:  # RTCP packet types 192-223 share the port (RFC 5761)
        return None
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
    end = len(data)
    if data[0] & 0x20:
        end -= data[-1]
    if offset > end:
        return None
    return data[offset:end]


def payload_key(payload: bytes) -> int:
    """A process-independent key of a payload (``hash()`` is salted per process)."""
    return (len(payload) << 32) | zlib.crc32(payload)


def ssrc_of(data: bytes) -> int:
    return int.from_bytes(data[8:12], "big")


# -- server processes -------------------------------------------------------------------
@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_process(
    command: list[str],
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> ServerProcess:
    """Start ``command``; wait for its ``{"event": "listening", "port": N}`` line."""
    environ = dict(os.environ)
    environ["PYTHONUNBUFFERED"] = "1"
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    environ.update(env or {})
    log = open(log_file, "wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=cwd or ROOT
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited:\n" + log_file.read_text(errors="replace"))
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"listening"' in line:
                return ServerProcess(process, int(json.loads(line)["port"]), log_file)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not start:\n" + log_file.read_text(errors="replace"))


def start_conference_server(
    tmp: Path, extra: list[str] | None = None, wrapper: list[str] | None = None
) -> ServerProcess:
    """``python -m conference serve`` on 127.0.0.1 (``wrapper``: e.g. cProfile args)."""
    command = [
        sys.executable,
        *(wrapper or ["-m"]),
        "conference",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--tls",
        "off",
        "--ice-host",
        "127.0.0.1",
        "--data-dir",
        str(tmp / "data"),
        *(extra or []),
    ]
    env = {
        "CONFERENCE_TOKEN_SECRET": SECRET,
        "CONFERENCE_RECORDINGS_DIR": str(tmp / "recordings"),
        "CONFERENCE_LOG_LEVEL": "warning",
    }
    return start_process(command, tmp / "server.log", env=env, cwd=tmp)
