"""Secrets shown to a signed-in person (the points' join links): each showing is audited.

One JSON line in ``data/audit.log`` (conference/recording/audit.py), action ``links``:
who saw which meeting's links, through the page or the API (``via``), from where.
"""

from __future__ import annotations

from aiohttp import web

from conference.appkeys import SETTINGS
from conference.recording import audit
from conference.web.auth import CurrentUser, client_address

__all__ = ["log_links"]


def log_links(request: web.Request, user: CurrentUser, meeting: str, count: int, via: str) -> None:
    """One audit line: who saw which meeting's links (they are secrets)."""
    settings = request.app[SETTINGS]
    audit.append(
        settings.data_dir / audit.AUDIT_FILE,
        {
            "action": "links",
            "via": via,
            "user": user.id,
            "username": user.username,
            "role": user.role,
            "meeting": meeting,
            "points": count,
            "client": client_address(request),
        },
    )
