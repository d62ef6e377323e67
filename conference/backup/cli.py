"""``conference backup [--output FILE]`` and ``conference restore FILE [--force]``.

Refusals are `BackupError` (a `ValueError`): conference/cli.py prints them as one line
``conference: error: ...`` with exit code 2.  The database layer is imported only when
one of these commands runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conference.settings import Settings

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = ("backup", "restore")


def add_commands(commands: Any, settings_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add backup and restore to `commands` (an argparse subparsers object)."""
    backup = commands.add_parser(
        "backup", help="write the database, keys and recording manifests to one archive"
    )
    backup.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="the archive to create (default: conference-backup-YYYYMMDD-HHMMSS.tar.gz in "
        "the current directory); an existing file is never overwritten",
    )
    settings_flags(backup)
    backup.add_argument("--recordings-dir", metavar="DIR", help="the recordings directory")

    restore = commands.add_parser(
        "restore", help="restore a backup archive into an empty installation"
    )
    restore.add_argument("file", metavar="FILE", help="an archive made by conference backup")
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace a database that is not empty and keys that differ from the archive's",
    )
    settings_flags(restore)
    restore.add_argument("--recordings-dir", metavar="DIR", help="the recordings directory")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of COMMANDS; returns the exit code."""
    if args.command == "backup":
        return _backup(args, settings)
    return _restore(args, settings)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"  # pragma: no cover


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from .service import make_backup

    result = make_backup(settings, Path(args.output) if args.output else None)
    rows = sum(result.tables.values())
    recordings = [m for m in result.members if m.startswith("recordings/")]
    others = [m.split("/", 1)[1] for m in result.members if not m.startswith("recordings/")]
    print(f"backup written to {result.output} ({_size(result.size)})")
    print(
        f"  database: {result.kind}, schema revision {result.revision}, "
        f"{len(result.tables)} tables, {rows} row{'' if rows == 1 else 's'}"
    )
    print(f"  files: {', '.join(others) or 'none'}")
    manifests = sum(m.endswith(".manifest.json") for m in recordings)
    print(
        f"  recordings: {manifests} manifests, {len(recordings) - manifests} composition "
        f"states (the media files are not in the archive: copy {settings.recordings_dir}/ "
        "with rsync)"
    )
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from .service import restore_backup

    result = restore_backup(settings, Path(args.file), force=args.force)
    header = result.header
    print(
        f"restored {args.file} (made {header.get('created_at')} by conference "
        f"{header.get('server_version')} from {header['database']['kind']}, schema "
        f"revision {header['schema_revision']})"
    )
    print(f"database {result.database}, now at schema revision {result.revision}:")
    for table, count in result.tables.items():
        if count:
            print(f"  {table}: {count} row{'' if count == 1 else 's'}")
    empty = sum(not count for count in result.tables.values())
    if empty:
        print(f"  ({empty} other tables empty)")
    written = sum(a.action != "keep" for a in result.files)
    print(f"files: {written} written, {len(result.files) - written} kept")
    for action in result.files:
        if not action.member.startswith("recordings/") or action.why == "newer on disk":
            why = f" ({action.why})" if action.why else ""
            print(f"  {action.action:8} {action.target}{why}")
    for note in result.notes:
        print(f"note: {note}")
    print(
        "next: copy the media files beside the manifests (rsync -a BACKUP/recordings/ "
        f"{settings.recordings_dir}/), then start the server"
    )
    return 0
