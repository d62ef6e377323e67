"""``conference recordings list|verify|prune|compose|status``: recordings from the shell.

``verify`` exits 1 when a signature or a file hash does not match (2 for usage
errors, like every command); ``prune`` never deletes a recording whose
minutes are not final (see :func:`conference.recording.store.prune`).
``compose`` composes a meeting's MP4 in the foreground (niced, with the same
state file as the server's background jobs: ``jobs``); ``status`` lists every
recording's composition state.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..settings import Settings
from .manifest import MANIFEST_SUFFIX
from .signing import KEY_FILE, load_public_key, public_key_path
from .store import inside, list_recordings, manifests, prune, verify_directory

__all__ = ["COMMANDS", "EXIT_MISMATCH", "add_commands", "run"]

COMMANDS = ("recordings",)
EXIT_MISMATCH = 1


def add_commands(commands: Any, settings_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = commands.add_parser("recordings", help="list, verify or prune recordings")
    sub = parser.add_subparsers(dest="recordings_command", metavar="COMMAND", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        settings_flags(command)
        command.add_argument("--recordings-dir", metavar="DIR", help="the recordings directory")

    listing = sub.add_parser("list", help="list recordings (state, tracks, minutes final)")
    common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")

    verify = sub.add_parser("verify", help="check a meeting's signature and file hashes")
    common(verify)
    verify.add_argument("directory", metavar="MEETING_DIR", help="e.g. recordings/2026/11/m1")
    verify.add_argument(
        "--public-key",
        metavar="FILE",
        help="the server's public key (default: <data-dir>/recording.key.pub if present)",
    )

    pruning = sub.add_parser("prune", help="delete old recordings whose minutes are final")
    common(pruning)
    pruning.add_argument(
        "--older-than-days",
        type=int,
        metavar="N",
        help="age limit (default: the recording_retention_days setting)",
    )
    pruning.add_argument("--dry-run", action="store_true", help="only show what would go")

    composing = sub.add_parser("compose", help="compose a meeting's MP4 now (foreground)")
    common(composing)
    composing.add_argument("directory", metavar="MEETING_DIR", help="e.g. recordings/2026/11/m1")
    composing.add_argument(
        "--retry", action="store_true", help="compose again even if failed or done before"
    )

    status = sub.add_parser("status", help="composition state of every recording")
    common(status)
    status.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    root = settings.recordings_dir
    if args.recordings_command == "list":
        found = list_recordings(root)
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=2))
        for item in [] if args.json else found:
            if "error" in item:
                print(f"{item['manifest']}: {item['error']}")
                continue
            final = "minutes final" if item["minutes_final"] else "minutes not final"
            print(
                f"{item['manifest']}  {item['state']}  {item['started_at']}  "
                f"{item['tracks']} tracks  {final}"
            )
        return 0
    if args.recordings_command == "verify":
        return _verify(args, settings)
    if args.recordings_command == "compose":
        return _compose(Path(args.directory), args.retry)
    if args.recordings_command == "status":
        return _status(root, args.json)
    days = args.older_than_days
    if days is None:
        days = settings.recording_retention_days
    if days < 0:
        raise ValueError("--older-than-days must be 0 or more")
    actions = prune(root, days, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    deleted = 0
    for action in actions:
        where = action.manifest.parent
        if action.delete:
            deleted += 1
            print(f"{verb}: {where} ({action.manifest.name}, {len(action.files)} files)")
        else:
            print(f"kept: {where} ({action.manifest.name}): {action.reason}")
    print(f"{deleted} recording(s) {verb}, {len(actions) - deleted} kept (older than {days} days)")
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    directory = Path(args.directory)
    if args.public_key:
        key_file = Path(args.public_key)
    else:
        key_file = public_key_path(settings.recording_key or settings.data_dir / KEY_FILE)
    trusted = None
    if key_file.exists():
        trusted = load_public_key(key_file)
    elif args.public_key:
        raise ValueError(f"public key {key_file} does not exist")
    else:
        print(f"note: no server key at {key_file}: checking with the key inside the manifest")
    ok, problems = verify_directory(directory, trusted)
    for line in ok:
        print(f"ok: {line}")
    for line in problems:
        print(f"FAILED: {line}")
    if problems:
        print(f"{directory}: verification FAILED ({len(problems)} problem(s))")
        return EXIT_MISMATCH
    print(f"{directory}: verified")
    return 0


def _compose(directory: Path, again: bool) -> int:
    from .jobs import job_status  # PyAV and numpy only when needed
    from .jobs import run as run_job

    if not directory.is_dir():
        raise ValueError(f"{directory}: no such directory")
    paths = sorted(directory.glob(f"*{MANIFEST_SUFFIX}"))
    if not paths:
        raise ValueError(f"{directory}: no recording manifest here")
    failed = 0
    for path in paths:
        inside(directory, path)
        status = job_status(path)
        if status["state"] == "done" and not again:
            print(f"{path.name}: already composed: {status['output']} (--retry to redo)")
            continue
        if status["state"] == "failed" and not again:
            print(f"{path.name}: failed before: {status['error']} (--retry to try again)")
            failed += 1
            continue
        if status["state"] == "running" and not again:
            print(f"{path.name}: being composed now ({status['progress']} %)")
            continue
        print(f"{path.name}: composing ...", flush=True)
        status = run_job(path)
        if status["state"] == "done":
            print(f"{path.name}: done: {status['output']}")
        else:
            print(f"{path.name}: FAILED: {status['error']}")
            failed += 1
    return EXIT_MISMATCH if failed else 0


def _status(root: Path, as_json: bool) -> int:
    from .jobs import job_status

    found = []
    for path in manifests(root):
        found.append({"manifest": str(path.relative_to(root))} | job_status(path))
    if as_json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
        return 0
    for item in found:
        line = f"{item['manifest']}  {item['state']}  {item['progress']} %"
        if item["output"]:
            line += f"  {item['output']}"
        if item["error"]:
            line += f"  error: {item['error']}"
        print(line)
    if not found:
        print(f"no recordings under {root}")
    return 0
