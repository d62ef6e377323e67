"""The recordings JSON API (``/api/v1/recordings``), on :mod:`conference.recording.library`.

It also holds the two request-level checks the pages share: :func:`visible_recording`
(the recording if the user may see it) and :func:`log_access` (the audit log).

Registered on :data:`conference.web.api.API` (listed in ``API_MODULES``), so both operations
are in the OpenAPI document.  Access is that of the pages (see
:mod:`conference.web.pages.library`): a recording the token's user may not see is 404, like an
unknown id.  Reading one recording is written to the audit log (action ``api``).  Media
files are fetched from the ``url`` of each file with the browser session (the pages);
times are ISO 8601 UTC as in the manifest, plus ``local_start`` in Asia/Ho_Chi_Minh.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from conference.appkeys import SETTINGS
from conference.domain.permissions import CurrentUser, visible_unit_ids
from conference.recording import audit
from conference.recording.library import (
    LIBRARY_ROLES,
    Filters,
    MeetingInfo,
    Recording,
    Row,
    attendance,
    find,
    library,
    load_meetings,
    may_see,
    timeline,
)
from conference.web.api import API, ApiCall, ApiError, Query
from conference.web.auth import client_address, database

__all__ = ["audit_path", "log_access", "visible_recording"]

logger = logging.getLogger(__name__)

TAGS = ("recordings",)

_COMPOSITION = {
    "type": ["object", "null"],
    "description": "the composition job (null: not composed yet, or no composer)",
    "properties": {
        "state": {"type": "string"},
        "progress": {"type": ["number", "null"], "description": "percent, 0 to 100"},
        "output": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
        "previous": {
            "type": "boolean",
            "description": "an earlier composed MP4 is offered while this composition is queued"
            " or running, and kept after it failed",
        },
    },
}
SUMMARY = API.schema(
    "RecordingSummary",
    {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "opaque id (16 hex digits)"},
            "meeting": {"type": "string", "description": "meeting id of the manifest"},
            "meeting_id": {"type": ["integer", "null"], "description": "null: ad-hoc room"},
            "title": {"type": "string"},
            "unit": {"type": ["string", "null"]},
            "unit_name": {"type": ["string", "null"]},
            "chair": {"type": ["string", "null"]},
            "chair_name": {"type": ["string", "null"]},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "stopped_at": {"type": ["string", "null"], "format": "date-time"},
            "local_start": {"type": ["string", "null"], "format": "date-time"},
            "duration": {"type": ["number", "null"], "description": "seconds"},
            "state": {"enum": ["recording", "finalizing", "complete", "interrupted", "unknown"]},
            "tracks": {"type": "integer"},
            "composition": _COMPOSITION,
        },
        "required": ["id", "meeting", "title", "state", "composition"],
    },
)
FILE = API.schema(
    "RecordingFile",
    {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["composed", "video", "audio"]},
            "content_type": {"type": "string"},
            "size": {"type": "integer"},
            "label": {"type": "string"},
            "url": {"type": "string", "description": "GET with Range for seeking"},
            "download_url": {"type": "string"},
        },
        "required": ["name", "kind", "content_type", "size", "url"],
    },
)
DETAIL = API.schema(
    "Recording",
    {
        "type": "object",
        "properties": {
            "recording": SUMMARY,
            "files": {"type": "array", "items": FILE},
            "agenda": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}, "presenter": {"type": "string"}},
                },
            },
            "speakers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "identity": {"type": "string"},
                        "name": {"type": "string"},
                        "offset": {"type": "number", "description": "seconds from the start"},
                    },
                },
            },
            "attendance": {"type": "array", "items": {"type": "object"}},
            "signed": {"type": "boolean"},
            "minutes_final": {"type": "boolean"},
        },
        "required": ["recording", "files", "speakers", "attendance"],
    },
)
LIST = API.schema(
    "RecordingList",
    {
        "type": "object",
        "properties": {"recordings": {"type": "array", "items": SUMMARY}},
        "required": ["recordings"],
    },
)


# --- shared with the library pages ------------------------------------------------------


async def visible_recording(
    request: web.Request, user: CurrentUser, wanted: str
) -> tuple[Recording, MeetingInfo | None] | None:
    """The recording ``wanted`` if ``user`` may see it, else None (unknown or not allowed)."""
    root = request.app[SETTINGS].recordings_dir
    recording = await asyncio.get_running_loop().run_in_executor(None, find, root, wanted)
    if recording is None:
        return None
    number = recording.number

    def check(session: Session) -> tuple[bool, MeetingInfo | None]:
        info = load_meetings(session, [number]).get(number) if number is not None else None
        return may_see(user, info, visible_unit_ids(session, user)), info

    allowed, info = await database(request).run(check)
    return (recording, info) if allowed else None


def audit_path(request: web.Request) -> Path:
    return Path(request.app[SETTINGS].data_dir) / audit.AUDIT_FILE


def log_access(
    request: web.Request, user: CurrentUser, recording: Recording, action: str, **extra: Any
) -> None:
    """Append one audit record (see :mod:`conference.recording.audit`)."""
    record = {
        "action": action,
        "user": user.id,
        "username": user.username,
        "role": user.role,
        "recording": recording.id,
        "manifest": recording.relative,
        "meeting": recording.meeting,
        **extra,
        "client": client_address(request),
    }
    try:
        audit.append(audit_path(request), record)
    except OSError as exc:
        logger.error("library: cannot write the audit log: %r", exc)
        raise web.HTTPServiceUnavailable(text="audit log unavailable") from exc


def summary(recording: Recording, info: MeetingInfo | None) -> dict[str, Any]:
    row = Row(recording, info)
    return {
        "id": recording.id,
        "meeting": recording.meeting,
        "meeting_id": info.id if info else None,
        "title": row.title,
        "unit": info.unit_code if info else None,
        "unit_name": info.unit_name if info else None,
        "chair": info.chair_username if info else None,
        "chair_name": info.chair_name if info else None,
        "started_at": recording.manifest.get("started_at"),
        "stopped_at": recording.manifest.get("stopped_at"),
        "local_start": row.local_start.isoformat() if row.local_start else None,
        "duration": round(recording.duration, 3) if recording.duration is not None else None,
        "state": recording.state
        if recording.state in ("recording", "finalizing", "complete", "interrupted")
        else "unknown",
        "tracks": len(recording.manifest.get("tracks", [])),
        "composition": recording.composition(),
    }


def _day(call: ApiCall, name: str) -> str:
    value = str(call.query.get(name) or "")
    if value:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ApiError(
                422, "invalid", f"{name}: expected a date YYYY-MM-DD", field=name
            ) from None
    return value


@API.operation(
    "GET",
    "/recordings",
    summary="Recordings the user may see, newest first",
    tags=TAGS,
    roles=LIBRARY_ROLES,
    response=LIST,
    query=(
        Query("from", "first local date (YYYY-MM-DD), inclusive"),
        Query("to", "last local date (YYYY-MM-DD), inclusive"),
        Query("unit", "unit code (the unit and the units below it)"),
        Query("q", "text in the meeting title"),
        Query("chair", "text in the chair's name or username"),
    ),
    errors=(401, 403, 422),
)
async def list_recordings(call: ApiCall) -> dict[str, Any]:
    query = {k: v for k in ("unit", "q", "chair") if (v := call.query.get(k))}
    query |= {"from": _day(call, "from"), "to": _day(call, "to")}
    filters, _ = Filters.parse(query)
    root = call.request.app[SETTINGS].recordings_dir
    found = await call.db(lambda s: library(s, call.actor, root, filters))
    return {"recordings": [summary(row.recording, row.meeting) for row in found.rows]}


@API.operation(
    "GET",
    "/recordings/{recording_id}",
    summary="One recording: summary, files, composition progress, timeline, attendance",
    tags=TAGS,
    roles=LIBRARY_ROLES,
    response=DETAIL,
    errors=(401, 403, 404),
)
async def get_recording(call: ApiCall) -> dict[str, Any]:
    found = await visible_recording(call.request, call.actor, call.params["recording_id"])
    if found is None:
        raise ApiError(404, "not-found", "no such recording in your units")
    recording, info = found
    log_access(call.request, call.actor, recording, "api")
    composition = recording.composition()
    base = f"/recordings/{recording.id}/files/"
    body = summary(recording, info) | {"composition": composition}
    return {
        "recording": body,
        "files": [
            {
                "name": f.name,
                "kind": f.kind,
                "content_type": f.content_type,
                "size": f.size,
                "label": f.label,
                "url": base + f.name,
                "download_url": base + f.name + "?download=1",
            }
            for f in recording.files(composition)
        ],
        "agenda": [{"title": t, "presenter": p} for t, p in (info.agenda if info else ())],
        "speakers": [
            {k: s[k] for k in ("identity", "name", "offset")} for s in timeline(recording)
        ],
        "attendance": attendance(recording),
        "signed": "signature" in recording.manifest,
        "minutes_final": bool(recording.manifest.get("minutes_final")),
    }
