"""The manifest of one recording of a meeting: JSON, written atomically as it grows.

File: ``<recordings>/<YYYY>/<MM>/<meeting>/<start-utc>.manifest.json`` next to the
track files it lists (layout and fields: docs/OPERATIONS.md, "Recordings").
``state`` is ``recording`` while the recorder runs, ``complete`` after a clean
stop, ``interrupted`` when the server died first (set at the next server
start).  Complete and interrupted manifests carry every file's SHA-256 and
the server's Ed25519 signature (``signing``).

Every save writes a temporary file in the same directory, fsyncs it and
renames it over the manifest, so a crash leaves the previous or the new
version, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "MANIFEST_SUFFIX",
    "flush",
    "iso",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]

FORMAT = "conference-recording/1"
MANIFEST_SUFFIX = ".manifest.json"


def iso(when: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC with milliseconds (None stays None)."""
    if when is None:
        return None
    return (
        datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def parse_iso(value: object) -> datetime | None:
    """A manifest's time (ISO 8601, as :func:`iso` writes it; naive means UTC), or None
    for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def flush(path: Path) -> None:
    """fsync a file or a folder (after a rename in it), as far as the file system allows:
    a crash then leaves the whole file, never an empty one in its place."""
    try:
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError:
        pass  # a folder some file systems do not sync


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` to ``path`` atomically (temporary file, fsync, rename)."""
    data = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse a manifest; ValueError if it is not a recording manifest."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not a recording manifest ({FORMAT})")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
