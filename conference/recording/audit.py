"""The recordings audit log: one JSON line per view or download of a recording.

File: ``<data_dir>/audit.log`` (mode 0600), opened with ``O_APPEND`` for every record and
written with one ``write`` call, so concurrent writers (threads, processes) never
interleave half lines and nothing earlier is ever rewritten.  Fields of a record:

``at`` (ISO 8601 UTC, milliseconds), ``action`` (``view`` a recording page, ``api`` its
JSON, ``play`` media fetched for the player, ``download`` media fetched as an attachment,
``compose`` a composition queued from the page),
``user`` (id), ``username``, ``role``, ``recording`` (the opaque id), ``manifest`` (path
relative to the recordings directory), ``meeting``, ``file`` (media only), ``range`` (the
``Range`` header, media only), ``first`` (media only: true for a request from byte 0, i.e.
one play or download; a player's later range requests are logged with ``false``),
``client`` (peer address) and ``status`` (the HTTP status answered).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .manifest import iso

__all__ = ["AUDIT_FILE", "append", "read"]

AUDIT_FILE = "audit.log"


def append(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` (``at`` added when missing) as one JSON line to ``path``."""
    line = {"at": iso(time.time())} | record
    data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of the log, oldest first (none when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)
