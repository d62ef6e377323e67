"""Where the interface's files are, and its translation catalogue (Vietnamese first).

The web pages, the e-mails and the minutes' documents all read the same catalogue:
``web/static/i18n/*.json``, one file per area of the interface.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def web_dir() -> Path:
    """The folder with ``templates/`` and ``static/`` (see the module docstring)."""
    candidates = []
    if os.environ.get("CONFERENCE_WEB_DIR"):
        candidates.append(Path(os.environ["CONFERENCE_WEB_DIR"]))
    candidates.append(Path(__file__).resolve().parents[2] / "web")
    candidates.append(Path(sys.prefix) / "share" / "conference" / "web")
    for path in candidates:
        if (path / "templates").is_dir() and (path / "static").is_dir():
            return path
    raise FileNotFoundError("web files not found in: " + ", ".join(map(str, candidates)))


def load_catalogue(root: Path) -> dict[str, dict[str, str]]:
    """Merge ``static/i18n/*.json`` (one file per area of the interface) into one catalogue.

    A key defined in two files is an error: each string has one home.
    """
    catalogue: dict[str, dict[str, str]] = {}
    for path in sorted((root / "static" / "i18n").glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        for key, value in raw.items():
            if key.startswith("_"):
                continue
            if key in catalogue:
                raise ValueError(f"translation key {key!r} defined twice (again in {path.name})")
            catalogue[key] = value
    return catalogue
