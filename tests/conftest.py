"""Shared fixtures: a real server process on 127.0.0.1, tokens, clients."""

from __future__ import annotations

import ast
import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest


def _cache_bytecode() -> None:
    """Keep compiled modules in a cache outside the tree when PYTHONDONTWRITEBYTECODE is set.

    With it set (as on the shared test machine) every process of the suite compiles from
    source: each xdist worker rewrites the asserts of all ~100 test modules (pytest caches
    rewritten modules only where it may write bytecode: ~5 s of CPU per worker) and each of
    the ~300 server and CLI subprocesses compiles the ``conference`` package again.  Here
    bytecode goes to a cache directory under the temp dir (``sys.pycache_prefix``), never
    into the source tree, for this process and, through the environment, for the workers
    and subprocesses it starts.  A changed source is recompiled (its pyc records mtime and
    size), as in any ``__pycache__``.
    """
    if not sys.dont_write_bytecode:
        return
    cache = Path(tempfile.gettempdir()) / f"conference-tests-pycache-{os.getuid()}"
    sys.pycache_prefix = str(cache)
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_cache_bytecode()

from conference.sfu.bridge import configure_ice_hosts  # noqa: E402 - after _cache_bytecode
from conference.tokens import create_token  # noqa: E402

from .codec_trap import cheap_password_hashing  # noqa: E402

# ICE in the test process (aiortc clients) uses loopback only.
configure_ice_hosts(["127.0.0.1"])

#: conference.domain.accounts' own hasher; the tests hash with the cheapest parameters
PRODUCTION_HASHER = cheap_password_hashing()

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + "x" * 40


#: media tests (Chromium, or marked slow) running at once beside the light ones
MEDIA_SLOTS = 2


@contextmanager
def machine_share(alone: bool, media: bool) -> Iterator[None]:
    """Share this 2-core machine between the xdist workers' tests.

    The suite runs on several workers (pyproject.toml): most tests wait on real time.
    Every test holds a shared lock; a test marked ``quiet`` measures frame rates, bit
    rates or simulcast layers that a loaded machine would change (Chromium drops its
    top layer when short of CPU), so it holds the lock exclusively: it waits until the
    other workers' tests end and keeps them waiting while it runs (a turnstile gives it
    priority over new tests).  A media test (Chromium pages, marked ``media`` or ``slow``) also
    takes one of `MEDIA_SLOTS` slots: two of them starve each other of CPU, not of a
    light test.  Outside xdist (``-n 0``) there is nothing to share.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        yield
        return
    base = Path(tempfile.gettempdir()) / f"conference-tests-{run}"
    with contextlib.ExitStack() as held:
        turnstile = held.enter_context(open(f"{base}.turnstile", "a"))
        lock = held.enter_context(open(f"{base}.lock", "a"))
        if media and not alone:
            held.enter_context(_media_slot(base))
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


@contextmanager
def _media_slot(base: Path) -> Iterator[None]:
    slots = [open(f"{base}.media{n}", "a") for n in range(MEDIA_SLOTS)]
    try:
        while True:
            for slot in slots:
                try:
                    fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    yield
                finally:
                    fcntl.flock(slot, fcntl.LOCK_UN)
                return
            time.sleep(0.1)
    finally:
        for slot in slots:
            slot.close()


def _quiet(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("quiet") is not None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``quiet`` first (otherwise in their order): xdist hands the first
    items to one worker, which runs them one after another, holding the machine from the
    first to the last (`pytest_runtest_protocol`), while the other workers have nothing
    running.  Spread over the run, each of them waited for the other workers' tests to end
    (up to ~25 s each with the workers idling meanwhile)."""
    items.sort(key=lambda item: not _quiet(item))
    for item in items:
        if REAL_TIME_RERUNS and _real_time(item) and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=REAL_TIME_RERUNS))


#: runs more of a real-time test that failed (pytest-rerunfailures): it passes only if a
#: whole run passes, and its failed run is listed in the summary ("R", pyproject's -rR);
#: CONFERENCE_TEST_RERUNS=0 runs each once (looking for a flaky test's cause)
REAL_TIME_RERUNS = int(os.environ.get("CONFERENCE_TEST_RERUNS", "1"))


def _real_time(item: pytest.Item) -> bool:
    """A test that depends on real time on a shared machine: media between processes
    (a server process with aiortc peers, Chromium pages) or a measured rate.  On CI's
    two shared cores one of them failed in most full runs (a frame late, a page's ICE
    check missed), each time a different one and never when run again: such a test
    runs once more before it counts as failed.  A test that fails twice still fails
    the suite; every other test runs once."""
    fixtures = getattr(item, "fixturenames", ())
    return (
        "server" in fixtures
        or "browser" in fixtures
        or any(
            item.get_closest_marker(name) is not None
            for name in ("media", "slow", "quiet", "timing")
        )
    )


#: the exclusive share of a worker's consecutive ``quiet`` tests, kept between them
_alone: contextlib.ExitStack | None = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    global _alone
    if _quiet(item):
        if _alone is None:
            _alone = contextlib.ExitStack()
            _alone.enter_context(machine_share(alone=True, media=False))
        try:
            return (yield)
        finally:
            if not _quiet(nextitem):
                _alone.close()
                _alone = None
    media = (
        item.get_closest_marker("media") is not None
        or item.get_closest_marker("slow") is not None
        or "browser" in getattr(item, "fixturenames", ())
    )
    with machine_share(alone=False, media=media):
        return (yield)


_migrated_sqlite: Path | None = None


def parse_python(text: str) -> ast.Module:
    """``ast.parse``, tried again on CPython 3.11's spurious "AST constructor recursion
    depth mismatch" SystemError (seen once in a full run, on a file that parses fine)."""
    for _ in range(2):
        with contextlib.suppress(SystemError):
            return ast.parse(text)
    return ast.parse(text)


def migrated_sqlite(path: Path) -> None:
    """Put at ``path`` a SQLite database migrated to the head revision: a copy of one this
    process migrated once (Alembic costs 0.3-1 s a database; the migrations themselves run
    on empty databases in tests/domain/test_storage.py)."""
    global _migrated_sqlite
    if _migrated_sqlite is None:
        from sqlalchemy.engine import URL

        from conference.domain import db

        folder = Path(tempfile.mkdtemp(prefix="conference-tests-migrated-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "conference.db"
        db.upgrade(URL.create("sqlite", database=str(template)))
        assert [p.name for p in folder.iterdir()] == [template.name], "journal left open"
        _migrated_sqlite = template
    shutil.copyfile(_migrated_sqlite, path)


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
            # recording refuses to start below 2 GB free by default: the tests' recordings
            # are small, and a shared test machine may have less (full-disk tests set it)
            "CONFERENCE_RECORDING_MIN_FREE_MB": "64",
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
