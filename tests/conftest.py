"""Shared fixtures: a real server process on 127.0.0.1, tokens, clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conference.sfu.bridge import configure_ice_hosts
from conference.tokens import create_token

# ICE in the test process (aiortc clients) uses loopback only.
configure_ice_hosts(["127.0.0.1"])

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + "x" * 40


@dataclass
class ServerProcess:
    url: str
    port: int
    data_dir: Path
    trap_file: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    secret: str = SECRET
    extra: dict[str, Any] = field(default_factory=dict)

    def token(
        self,
        meeting: str = "m1",
        identity: str = "p1",
        role: str = "point",
        name: str | None = None,
        ttl: timedelta = timedelta(hours=1),
        **kwargs: Any,
    ) -> str:
        return create_token(
            self.secret,
            meeting=meeting,
            identity=identity,
            name=name or f"UBND xã {identity}",
            role=role,
            ttl=ttl,
            **kwargs,
        )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    data_dir = tmp / "data"
    trap_file = tmp / "codec-trap.txt"
    log_file = tmp / "server.log"
    environ = dict(os.environ)
    environ.update(
        {
            "CONFERENCE_TOKEN_SECRET": SECRET,
            "CONFERENCE_CODEC_TRAP": str(trap_file),
            "CONFERENCE_RECORDINGS_DIR": str(tmp / "recordings"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    environ.update(env or {})
    command = [
        sys.executable,
        str(ROOT / "tests" / "codec_trap.py"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--tls",
        "off",
        "--ice-host",
        "127.0.0.1",
        *args,
    ]
    log = open(log_file, "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=tmp)
    deadline = time.monotonic() + 20
    port = None
    while time.monotonic() < deadline and port is None:
        if process.poll() is not None:
            raise RuntimeError("server exited:\n" + log_file.read_text())
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"listening"' in line:
                port = json.loads(line)["port"]
        time.sleep(0.05)
    if port is None:
        process.kill()
        raise RuntimeError("server did not start:\n" + log_file.read_text())
    return ServerProcess(
        url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=data_dir,
        trap_file=trap_file,
        log_file=log_file,
        process=process,
    )


def check_clean_exit(server: ServerProcess) -> None:
    code = server.stop()
    log = server.log()
    assert not server.trap_file.exists(), "a codec was created in the server:\n" + (
        server.trap_file.read_text()
    )
    assert "Traceback" not in log, log[-4000:]
    assert code == 0, f"server exit code {code}\n{log[-4000:]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path)
    try:
        yield proc
    finally:
        check_clean_exit(proc)
