"""Background composition jobs: one at a time, in their own process, with a state file.

Each recording's job is described by ``<start-utc>.compose.json`` beside its
manifest, rewritten atomically (temporary file + rename)::

    {"state": "queued|running|done|failed", "progress": 0-100, "output": path or null,
     "error": text or null, "attempts": n, "updated": ISO time, "pid": worker pid}

In the server a daemon thread takes jobs from a queue and runs each as
``python -m conference.recording.jobs <manifest>`` (niced to 10, so the live
rooms keep their CPU); that process writes the progress itself, about once a
second.  Nothing is lost when the server stops: at the next start
:func:`resume_jobs` queues again every job left ``queued``, or ``running``
without its process (after ``MAX_ATTEMPTS`` starts it is marked failed).
A failed job keeps its error and is run again by :func:`retry` (or
``conference recordings compose DIR --retry``).

API (also used by the library pages): :func:`job_status`, :func:`enqueue`,
:func:`retry`, :func:`resume_jobs`, :func:`enqueue_sealed` (the recorder, when
a manifest is sealed complete) and :func:`run` (one job, in this process).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core import events
from .manifest import MANIFEST_SUFFIX, iso, read_manifest, write_manifest
from .store import manifests

__all__ = [
    "MAX_ATTEMPTS",
    "NICE",
    "enqueue",
    "enqueue_sealed",
    "job_status",
    "resume_jobs",
    "retry",
    "run",
    "state_path",
]

logger = logging.getLogger(__name__)

STATE_SUFFIX = ".compose.json"
MAX_ATTEMPTS = 3
NICE = 10
STATES = ("queued", "running", "done", "failed")

_queue: queue.Queue[Path] = queue.Queue()
_lock = threading.Lock()
_runner: threading.Thread | None = None
#: queued in this process and not started yet; and the job running now (a retry() while it
#: ends is queued again: the worker runs it after)
_pending: set[Path] = set()
_current: Path | None = None


def state_path(manifest_path: Path) -> Path:
    """``<start>.compose.json`` beside ``<start>.manifest.json``."""
    return manifest_path.with_name(manifest_path.name.removesuffix(MANIFEST_SUFFIX) + STATE_SUFFIX)


def _read(manifest_path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(manifest_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("state") in STATES else None


def _write(manifest_path: Path, **fields: Any) -> dict[str, Any]:
    state = _read(manifest_path) or {
        "state": "queued",
        "progress": 0,
        "output": None,
        "error": None,
        "attempts": 0,
    }
    state |= fields
    state["updated"] = iso(time.time())
    write_manifest(state_path(manifest_path), state)
    return state


def job_status(manifest_path: Path) -> dict[str, Any]:
    """``{"state", "progress", "output", "error", "attempts", "updated"}`` of a job.

    ``state`` is ``"none"`` when no job was ever queued for the recording.
    """
    state = _read(Path(manifest_path))
    if state is None:
        return {"state": "none", "progress": 0, "output": None, "error": None, "attempts": 0}
    return {
        "state": state["state"],
        "progress": int(state.get("progress") or 0),
        "output": state.get("output"),
        "error": state.get("error"),
        "attempts": int(state.get("attempts") or 0),
        "updated": state.get("updated"),
    }


def _alive(pid: object) -> bool:
    """Is ``pid`` a running composition process?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    composing = b"conference.recording.jobs" in cmdline or b"recordings\x00compose" in cmdline
    return composing or pid == os.getpid()


# -- queueing (in the server) -------------------------------------------------------------
def enqueue(manifest_path: Path) -> dict[str, Any]:
    """Queue a recording's composition (no-op when queued, running or done)."""
    path = Path(manifest_path).resolve()
    state = _read(path)
    if state is not None:
        if state["state"] == "done" or path in _pending or path == _current:
            return job_status(path)
        if state["state"] == "running" and _alive(state.get("pid")):
            return job_status(path)
        if state["state"] == "failed":
            return job_status(path)  # only retry() runs a failed job again
    _write(path, state="queued", progress=0, error=None, pid=None)
    _submit(path)
    return job_status(path)


def retry(manifest_path: Path) -> dict[str, Any]:
    """Queue a failed (or done) job again; a queued or running one stays as it is.

    Also the moment the state says done or failed while the worker still waits for that
    process to exit (the library's button is back then): queued after it, and run."""
    path = Path(manifest_path).resolve()
    state = _read(path)
    if state is None or state["state"] not in ("failed", "done"):
        return enqueue(path)
    _write(path, state="queued", progress=0, error=None, output=None, pid=None, attempts=0)
    if path not in _pending:
        _submit(path)
    return job_status(path)


def enqueue_sealed(root: Path, manifest: dict[str, Any]) -> None:
    """The recorder sealed ``manifest`` (under ``root``): queue it if complete."""
    try:
        if manifest.get("state") != "complete":
            return
        path = root / str(manifest["directory"]) / f"{manifest['recording']}{MANIFEST_SUFFIX}"
        enqueue(path)
    except Exception:  # never let composition break the recorder
        logger.exception("recordings: cannot queue the composition")


def resume_jobs(recordings_dir: Path, interrupted: Iterable[Path] = ()) -> list[Path]:
    """Queue again the jobs a previous run left queued or running (server start).

    ``interrupted``: the manifests just sealed ``interrupted`` (the recorder's
    ``configure``), queued too: what was recorded before a crash is composed.
    """
    try:
        return _resume(recordings_dir, interrupted)
    except OSError as exc:  # a full disk: the server starts all the same
        logger.error("recordings: compositions not queued again: %s", exc)
        return []


def _resume(recordings_dir: Path, interrupted: Iterable[Path]) -> list[Path]:
    resumed = []
    for path in interrupted:
        if _read(path) is None:
            enqueue(path)
            resumed.append(path)
    for path in manifests(recordings_dir):
        state = _read(path)
        if state is None or state["state"] not in ("queued", "running"):
            continue
        if path.resolve() in _pending:
            continue  # just queued above
        if state["state"] == "running" and _alive(state.get("pid")):
            continue
        if int(state.get("attempts") or 0) >= MAX_ATTEMPTS:
            _write(path, state="failed", error=f"gave up after {MAX_ATTEMPTS} attempts", pid=None)
            continue
        _write(path, state="queued", pid=None)
        _submit(path.resolve())
        resumed.append(path)
        logger.info("recordings: composition of %s queued again", path.name)
    return resumed


def _submit(path: Path) -> None:
    global _runner
    with _lock:
        _pending.add(path)
        _queue.put(path)
        if _runner is None or not _runner.is_alive():
            _runner = threading.Thread(target=_work, name="compose-jobs", daemon=True)
            _runner.start()


def _work() -> None:
    global _current
    while True:
        path = _queue.get()
        with _lock:
            _pending.discard(path)  # from here a retry() queues it again
            _current = path
        try:
            _run_process(path)
        except Exception:
            logger.exception("recordings: composition of %s failed to start", path.name)
        finally:
            with _lock:
                _current = None


def _run_process(path: Path) -> None:
    started = _read(path)
    if started is None or started["state"] != "queued":
        return
    command = [sys.executable, "-m", "conference.recording.jobs", str(path)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    code = process.wait()
    state = _read(path)
    # the process died before it could say so: its own state, or the one it never changed
    # (not the state of a retry() asked since: that one is queued to run next)
    if code != 0 and state is not None and (state == started or state.get("pid") == process.pid):
        state = _write(
            path, state="failed", error=f"composition process exited with {code}", pid=None
        )
    logger.info("recordings: composition of %s ended (%s)", path.name, (state or {}).get("state"))
    _announce(path, state)


def pending() -> int:
    """Compositions queued or running in this process (``/metrics``)."""
    with _lock:
        return len(_pending) + (_current is not None and _current not in _pending)


def _announce(path: Path, state: dict[str, Any] | None) -> None:
    """Count a composition's end (``/metrics``); a done one is ``recording.composed``
    (webhooks, conference/ops)."""
    result = (state or {}).get("state")
    events.count(f"compositions:{'done' if result == 'done' else 'failed'}")
    if result != "done" or state is None:
        return
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError):
        manifest = {}
    output = Path(str(state.get("output") or ""))
    events.emit(
        "recording.composed",
        {
            "meeting": manifest.get("meeting"),
            "recording": manifest.get("recording"),
            "directory": manifest.get("directory"),
            "file": output.name or None,
            "size": output.stat().st_size if output.is_file() else None,
        },
    )


# -- one job (in its own process) ---------------------------------------------------------
def run(manifest_path: Path, nice: int = NICE) -> dict[str, Any]:
    """Compose one recording here, writing the state file; return the final status.

    This runs in the composition's own process (:func:`_run_process`): the server, which
    only queues jobs and reads their state, never loads the composer (PyAV's codecs,
    numpy).
    """
    from .compose import CompositionError, compose

    path = Path(manifest_path).resolve()
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    previous = _read(path) or {}
    attempts = int(previous.get("attempts") or 0) + 1
    _write(path, state="running", progress=0, error=None, attempts=attempts, pid=os.getpid())
    last = [0.0]

    def progress(percent: float) -> None:
        if percent - last[0] >= 1 or percent >= 100:
            last[0] = percent
            _write(path, progress=int(percent))

    try:
        output = compose(path, progress=progress)
    except CompositionError as exc:
        logger.error("recordings: cannot compose %s: %s", path.name, exc)
        _write(path, state="failed", error=str(exc), pid=None)
    except Exception as exc:
        logger.exception("recordings: composing %s failed", path.name)
        _write(path, state="failed", error=f"{type(exc).__name__}: {exc}"[:500], pid=None)
    else:
        _write(path, state="done", progress=100, output=str(output), error=None, pid=None)
    return job_status(path)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if len(argv) != 1:
        print("usage: python -m conference.recording.jobs MANIFEST", file=sys.stderr)
        return 2
    status = run(Path(argv[0]))
    return 0 if status["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
