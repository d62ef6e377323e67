"""What a backup takes from an installation, and how a restore puts it back.

Files already present where a restore would write follow fixed rules, checked before
anything is written:

- keys (``secret.key``, ``recording.key`` and its ``.pub``): written where missing, kept
  where identical; a different key is refused unless ``--force`` (it would end every
  token issued, or sign new recordings with another key), then replaced;
- the self-signed certificate: written only when neither its certificate nor its key
  exists (a pair that belongs together);
- ``audit.log`` (and its rotated files), manifests and composition states: written
  only where missing; an existing one is never overwritten (a manifest on disk may be
  newer: ``minutes_final`` set after the backup).

Recordings paths come from the archive's checked names and must stay inside
``recordings_dir`` (a symlink leading out is refused).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conference import __version__
from conference.domain.db import database_url, redacted
from conference.recording.audit import AUDIT_FILE
from conference.recording.signing import KEY_FILE, public_key_path
from conference.recording.store import PathError, inside, manifests
from conference.settings import SECRET_FILE, Settings

from .archive import FORMAT, MEMBER, BackupError, Stager, read_archive, write_archive
from .database import dump_database, load_database, revisions

__all__ = ["BackupResult", "RestoreResult", "default_output", "make_backup", "restore_backup"]

COMPOSE_SUFFIX = ".compose.json"
TLS_FILES = ("self-signed.crt", "self-signed.key")


@dataclass
class BackupResult:
    output: Path
    size: int
    kind: str
    revision: str
    tables: dict[str, int]
    members: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class FileAction:
    """What a restore does with one member: ``write``, ``replace`` or ``keep``."""

    member: str
    target: Path
    action: str
    why: str = ""
    mode: int = 0o600


@dataclass
class RestoreResult:
    header: dict[str, Any]
    database: str
    revision: str
    tables: dict[str, int]
    files: list[FileAction]
    notes: list[str] = field(default_factory=list)


def default_output(now: datetime | None = None) -> Path:
    """``conference-backup-YYYYMMDD-HHMMSS.tar.gz`` in the current directory (local time)."""
    return Path(f"conference-backup-{(now or datetime.now()):%Y%m%d-%H%M%S}.tar.gz")


def _key_path(settings: Settings) -> Path:
    return settings.recording_key or settings.data_dir / KEY_FILE


def _recording_files(root: Path) -> list[tuple[Path, str]]:
    """(file, relative path) of every manifest and composition state under `root`."""
    found = list(manifests(root))
    if root.is_dir():
        found += root.glob(f"[0-9][0-9][0-9][0-9]/[0-9][0-9]/*/*{COMPOSE_SUFFIX}")
    return sorted((path, path.relative_to(root).as_posix()) for path in found)


def make_backup(
    settings: Settings,
    output: Path | None = None,
    after_table: Callable[[str, int], None] | None = None,
) -> BackupResult:
    """Write the backup archive of the installation `settings` describes to `output`
    (a new file; default: `default_output`)."""
    output = output or default_output()
    if output.exists() or output.is_symlink():
        raise BackupError(f"{output} already exists: a backup never overwrites a file")
    url = database_url(settings)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="conference-backup-") as temporary:
        rows_dir, files_dir = Path(temporary, "db"), Path(temporary, "files")
        rows_dir.mkdir()
        files_dir.mkdir()
        revision, files, counts = dump_database(url, rows_dir, after_table)
        stager = Stager(files_dir)
        for table, path in files.items():
            stager.adopt(path, f"database/{table}.jsonl")
        secret = settings.data_dir / SECRET_FILE
        where = "none"
        if secret.is_file():
            where = "file"
            stager.file(secret, "keys/secret.key")
        if settings.token_secret is not None and (
            where == "none" or secret.read_text().strip() != settings.token_secret
        ):
            where = "settings"
            notes.append(
                "the token secret comes from the settings (token_secret or "
                "CONFERENCE_TOKEN_SECRET) and is not in the archive: keep it with them"
            )
        key = _key_path(settings)
        for path, name, mode in (
            (key, "keys/recording.key", 0o600),
            (public_key_path(key), "keys/recording.key.pub", 0o644),
        ):
            if path.is_file():
                stager.file(path, name, mode)
        tls = settings.data_dir / "tls"
        if all((tls / name).is_file() for name in TLS_FILES):
            stager.file(tls / TLS_FILES[0], "keys/tls/self-signed.crt", 0o644)
            stager.file(tls / TLS_FILES[1], "keys/tls/self-signed.key")
        audit = settings.data_dir / AUDIT_FILE
        if audit.is_file():
            stager.lines(audit, "audit/audit.log")
        for rotated in sorted(settings.data_dir.glob(f"{AUDIT_FILE}?*")):  # by logrotate
            name = f"audit/{rotated.name}"
            if rotated.is_file() and not rotated.is_symlink() and MEMBER.fullmatch(name):
                stager.file(rotated, name)
        skipped = 0
        for path, relative in _recording_files(settings.recordings_dir):
            name = f"recordings/{relative}"
            if path.is_symlink() or not path.is_file() or not MEMBER.fullmatch(name):
                skipped += 1
                continue
            try:
                stager.file(path, name)
            except FileNotFoundError:  # pruned meanwhile
                continue
        if skipped:
            notes.append(f"{skipped} recording files with unexpected names or links were skipped")
        header = {
            "format": FORMAT,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "server_version": __version__,
            "host": socket.gethostname(),
            "schema_revision": revision,
            "database": {"kind": url.get_backend_name(), "tables": counts},
            "token_secret": where,
        }
        size = write_archive(output, header, stager.members)
    return BackupResult(
        output,
        size,
        url.get_backend_name(),
        revision,
        counts,
        [m.name for m in stager.members if not m.name.startswith("database/")],
        notes,
    )


# --- restore ---------------------------------------------------------------------------------


def _same(target: Path, staged: Path, text: bool = False) -> bool:
    old, new = target.read_bytes(), staged.read_bytes()
    return old.strip() == new.strip() if text else old == new


def _plan(
    settings: Settings, staged: dict[str, Path], force: bool
) -> tuple[list[FileAction], list[str]]:
    """What to do with each file member; `BackupError` for a conflict without --force."""
    actions: list[FileAction] = []
    notes: list[str] = []
    conflicts: list[str] = []
    key = _key_path(settings)
    keys = {
        "keys/secret.key": (settings.data_dir / SECRET_FILE, 0o600, True),
        "keys/recording.key": (key, 0o600, False),
        "keys/recording.key.pub": (public_key_path(key), 0o644, False),
    }
    for member, (target, mode, text) in keys.items():
        if member not in staged:
            continue
        if not target.exists():
            actions.append(FileAction(member, target, "write", mode=mode))
        elif _same(target, staged[member], text):
            actions.append(FileAction(member, target, "keep", "identical", mode))
        elif force:
            actions.append(FileAction(member, target, "replace", "differed (--force)", mode))
        else:
            conflicts.append(str(target))
    if conflicts:
        raise BackupError(
            f"{' and '.join(conflicts)} already exist{'s' if len(conflicts) == 1 else ''} "
            "and differ from the archive's: "
            "replacing a key ends the tokens or signatures made with it; move them away "
            "or add --force"
        )
    secret = settings.data_dir / SECRET_FILE
    configured = settings.token_secret is not None and (
        not secret.is_file() or secret.read_text().strip() != settings.token_secret
    )
    if configured and settings.token_secret is not None and "keys/secret.key" in staged:
        same = settings.token_secret.strip() == staged["keys/secret.key"].read_text().strip()
        notes.append(
            "token_secret is set in the settings: it signs tokens, not the restored "
            "secret.key"
            + ("" if same else " (and it differs from the archived one: old tokens are refused)")
        )
    tls = settings.data_dir / "tls"
    names = ("keys/tls/self-signed.crt", "keys/tls/self-signed.key")
    if all(name in staged for name in names):
        fresh = not any((tls / name).exists() for name in TLS_FILES)
        for name, file, mode in zip(names, TLS_FILES, (0o644, 0o600), strict=True):
            action = "write" if fresh else "keep"
            actions.append(FileAction(name, tls / file, action, "" if fresh else "present", mode))
    for member in sorted(name for name in staged if name.startswith("audit/")):
        target = settings.data_dir / member.removeprefix("audit/")
        if not target.exists():
            actions.append(FileAction(member, target, "write"))
            continue
        same = _same(target, staged[member])
        actions.append(FileAction(member, target, "keep", "identical" if same else "differs"))
        if not same:
            notes.append(
                f"{target} differs from the archive's and was kept; the archived one is "
                f"the member {member} (tar xzf ARCHIVE {member})"
            )
    root = settings.recordings_dir
    for member in sorted(name for name in staged if name.startswith("recordings/")):
        try:
            target = inside(root, root / member.removeprefix("recordings/"))
        except PathError:
            raise BackupError(
                f"archive member {member!r} would be written outside {root}"
            ) from None
        if target.exists():
            same = _same(target, staged[member])
            actions.append(
                FileAction(member, target, "keep", "identical" if same else "newer on disk")
            )
        else:
            actions.append(FileAction(member, target, "write", mode=0o644))
    return actions, notes


def _write(action: FileAction, source: Path, folder_mode: int) -> None:
    """Write `source` to the action's target atomically: a new file appears only whole."""
    target = action.target
    target.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.restore")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, action.mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(source.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        if action.action == "replace":
            os.replace(temporary, target)
            return
        try:
            os.link(temporary, target)
        except FileExistsError:
            action.action, action.why = "keep", "appeared meanwhile"
    finally:
        temporary.unlink(missing_ok=True)


def restore_backup(settings: Settings, archive: Path, force: bool = False) -> RestoreResult:
    """Restore `archive` into the installation `settings` describes."""
    url = database_url(settings)
    with tempfile.TemporaryDirectory(prefix="conference-restore-") as temporary:
        header, staged = read_archive(archive, Path(temporary))
        revision = header["schema_revision"]
        known = revisions()
        if revision not in known:
            raise BackupError(
                f"{archive}: its schema revision {revision} is newer than this version's "
                f"({known[-1]}): restore it with conference {header.get('server_version')} "
                "or newer"
            )
        tables = {
            name.removeprefix("database/").removesuffix(".jsonl"): path
            for name, path in staged.items()
            if name.startswith("database/")
        }
        listed = header["database"]["tables"]
        if set(tables) != set(listed):
            raise BackupError(f"{archive}: its tables do not match its backup.json")
        actions, notes = _plan(settings, staged, force)
        folder_mode = 0o750 if settings.group_access else 0o700
        if url.get_backend_name() == "sqlite" and settings.database_url is None:
            try:
                settings.data_dir.mkdir(mode=folder_mode, parents=True, exist_ok=True)
            except OSError as exc:
                raise BackupError(f"cannot create {settings.data_dir}: {exc.strerror}") from None
        counts = load_database(url, revision, tables, force)
        for action in actions:
            if action.action != "keep":
                _write(action, staged[action.member], folder_mode)
    if header.get("token_secret") == "settings":
        notes.append(
            "the source took its token secret from its settings: set the same token_secret "
            "here, or the tokens it issued are refused"
        )
    return RestoreResult(header, redacted(url), known[-1], counts, actions, notes)
