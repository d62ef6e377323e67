"""The backup archive: member names, the header, writing it and reading it back safely.

Reading never trusts the archive: every member's name must be one that a backup writes
(:data:`MEMBER` below: no absolute path, no ``..``, no hidden component, nothing outside
the listed places), every member must be a plain file (no link, no device, no
directory), and each one is copied into a private staging directory under a number,
never under its own name, and its size and SHA-256 checked against the header.  Only
when the whole archive passed is anything restored; a truncated or damaged archive is
refused as a whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FORMAT",
    "HEADER",
    "BackupError",
    "Staged",
    "check_name",
    "Stager",
    "read_archive",
    "write_archive",
]

FORMAT = "conference-backup/1"
FORMAT_PREFIX = "conference-backup/"
HEADER = "backup.json"
CHUNK = 1 << 20

_PART = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}"
#: every name a backup writes; anything else is refused
MEMBER = re.compile(
    r"backup\.json"
    r"|database/[a-z_][a-z0-9_]{0,62}\.jsonl"
    r"|keys/(?:secret\.key|recording\.key|recording\.key\.pub|tls/self-signed\.(?:crt|key))"
    r"|audit/audit\.log(?:[-.][A-Za-z0-9_-][A-Za-z0-9._-]{0,63})?"
    rf"|recordings/[0-9]{{4}}/[0-9]{{2}}/{_PART}/{_PART}\.(?:manifest|compose)\.json"
)


class BackupError(ValueError):
    """A backup or a restore refused; the message is one line for the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass
class Staged:
    """A member's content in the staging directory."""

    name: str
    path: Path
    size: int
    sha256: str
    mode: int = 0o600


def check_name(name: str) -> None:
    """`BackupError` unless `name` is a member a backup writes."""
    if MEMBER.fullmatch(name):
        return
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        why = "an absolute path"
    elif ".." in name.replace("\\", "/").split("/"):
        why = "a path with '..'"
    else:
        why = "not a file a backup writes"
    raise BackupError(f"archive member {name!r} is {why}: nothing was restored")


def _copy(source: IO[bytes], path: Path, limit: int | None = None) -> tuple[int, str]:
    """Copy `source` (at most `limit` bytes) to a new private file; (size, SHA-256)."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while limit is None or size < limit:
            chunk = source.read(CHUNK if limit is None else min(CHUNK, limit - size))
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class Stager:
    """Copies what goes into an archive into a private directory, under numbers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.members: list[Staged] = []

    def _next(self) -> Path:
        return self.directory / f"{len(self.members):06d}"

    def file(self, source: Path, name: str, mode: int = 0o600) -> Staged:
        """Copy the file `source` as the member `name`."""
        check_name(name)
        path = self._next()
        with open(source, "rb") as handle:
            size, sha = _copy(handle, path)
        return self._add(Staged(name, path, size, sha, mode))

    def lines(self, source: Path, name: str) -> Staged:
        """Like `file`, for a file appended to while it is read (the audit log): up to
        its last complete line."""
        check_name(name)
        path = self._next()
        with open(source, "rb") as handle:
            data = handle.read()
        data = data[: data.rfind(b"\n") + 1]
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(data)
        return self._add(Staged(name, path, len(data), hashlib.sha256(data).hexdigest()))

    def adopt(self, path: Path, name: str) -> Staged:
        """The file `path` (already private, never changed again) as the member `name`."""
        check_name(name)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return self._add(Staged(name, path, path.stat().st_size, digest.hexdigest()))

    def _add(self, member: Staged) -> Staged:
        self.members.append(member)
        return member


def write_archive(output: Path, header: dict[str, Any], members: list[Staged]) -> int:
    """Write `header` (with the members' sizes and hashes) and `members` to a new file
    `output` (0600, never an existing one); returns its size."""
    header = header | {"members": {m.name: {"size": m.size, "sha256": m.sha256} for m in members}}
    data = (json.dumps(header, ensure_ascii=False, indent=2) + "\n").encode()
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{output} already exists: a backup never overwrites a file") from None
    except OSError as exc:
        raise BackupError(f"cannot create {output}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                now = int(time.time())
                tar.addfile(_info(HEADER, len(data), 0o600, now), _BytesReader(data))
                for member in members:
                    with open(member.path, "rb") as handle:
                        tar.addfile(_info(member.name, member.size, member.mode, now), handle)
            raw.flush()
            os.fsync(raw.fileno())
        return output.stat().st_size
    except BaseException:
        output.unlink(missing_ok=True)
        raise


def _info(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._at + size
        chunk, self._at = self._data[self._at : end], min(end, len(self._data))
        return chunk


def _damaged(path: Path, exc: BaseException) -> BackupError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackupError(f"{path}: not a readable backup archive (truncated or damaged: {detail})")


def read_archive(path: Path, directory: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Check the archive `path` and copy its members into `directory` (empty, private).

    Returns (header, {member name: staged file}); `BackupError` for anything wrong."""
    staged: dict[str, Path] = {}
    found: dict[str, tuple[int, str]] = {}
    try:
        tar = tarfile.open(path, mode="r|gz")
    except FileNotFoundError:
        raise BackupError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BackupError(f"{path} is a directory, not a backup archive") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BackupError(f"{path}: not a backup archive ({exc})") from None
    try:
        with tar:
            for index, member in enumerate(tar):
                check_name(member.name)
                if not member.isreg():
                    raise BackupError(
                        f"archive member {member.name!r} is a link, a directory or a "
                        "device, not a plain file: nothing was restored"
                    )
                if member.name in found:
                    raise BackupError(f"archive member {member.name!r} appears twice")
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                target = directory / f"{index:06d}"
                found[member.name] = _copy(source, target, member.size)
                staged[member.name] = target
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _damaged(path, exc) from None
    header = _header(path, staged)
    listed = header["members"]
    for name in sorted(set(listed) | set(staged) - {HEADER}):
        if name not in staged:
            raise BackupError(f"{path}: member {name!r} is missing (truncated archive?)")
        if name not in listed:
            raise BackupError(f"{path}: member {name!r} is not listed in {HEADER}")
        entry = listed[name]
        if not isinstance(entry, dict) or (entry.get("size"), entry.get("sha256")) != found[name]:
            raise BackupError(f"{path}: member {name!r} is damaged (its checksum does not match)")
    del staged[HEADER]
    return header, staged


def _header(path: Path, staged: dict[str, Path]) -> dict[str, Any]:
    if HEADER not in staged:
        raise BackupError(f"{path}: not a backup archive (no {HEADER})")
    try:
        header = json.loads(staged[HEADER].read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BackupError(f"{path}: {HEADER} is not readable JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("format"), str):
        raise BackupError(f"{path}: not a backup archive ({HEADER} has no format)")
    form = header["format"]
    if form != FORMAT:
        if form.startswith(FORMAT_PREFIX):
            raise BackupError(
                f"{path}: archive format {form!r} was made by a newer version of conference "
                f"(this one reads {FORMAT})"
            )
        raise BackupError(f"{path}: unknown archive format {form!r} (expected {FORMAT})")
    database = header.get("database")
    checks = {
        "schema_revision": isinstance(header.get("schema_revision"), str),
        "database": isinstance(database, dict)
        and isinstance(database.get("kind"), str)
        and isinstance(database.get("tables"), dict),
        "members": isinstance(header.get("members"), dict),
    }
    for field, ok in checks.items():
        if not ok:
            raise BackupError(f"{path}: {HEADER} has no valid {field!r}")
    return header
