"""The minutes JSON API: ``/api/v1/meetings/{meeting_id}/minutes`` (and ``/final``, ``.docx``).

Registered on :data:`conference.web.api.API` (listed in ``API_MODULES``).  Rules in
:mod:`conference.minutes`: a meeting outside the user's scope is 404, an operator 403; the
first GET generates the draft.  ``PUT`` takes the ``version`` from the last read and any of
the text fields and ``attendance`` (rows by point ``code``); an older version is 409
``stale``, an edit of a final minutes 409 ``final``, nothing written.  ``POST .../final``
(secretary or admin) makes the minutes read-only and marks the meeting's recordings
``minutes_final`` (409 ``recording-active`` while it is being recorded).
"""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web

from conference.domain.minutes import (
    ROW_FIELDS,
    TEXT_FIELDS,
    MinutesResult,
    finalize_and_mark,
    open_minutes,
    refresh_minutes,
    save_minutes,
)
from conference.domain.permissions import MINUTES_EDIT_ROLES, MINUTES_FINAL_ROLES
from conference.web.api import API, ApiCall
from conference.web.auth import database
from conference.web.minutes_export import docx_response, recordings_root

__all__: list[str] = []

T = TypeVar("T")
TAGS = ("minutes",)

MINUTES = API.schema(
    "Minutes",
    {
        "type": "object",
        "properties": {
            "meeting_id": {"type": "integer"},
            "version": {"type": "integer", "description": "send it back with PUT and /final"},
            "state": {"type": "string", "enum": ["draft", "final"]},
            "content": {
                "type": "object",
                "description": "the document: header lines, times, agenda (with recording "
                "links), attendance rows, speaking turns, content and conclusions",
            },
            "secretary": {"type": ["string", "null"]},
            "finalized_at": {"type": ["string", "null"], "format": "date-time"},
            "finalized_by": {"type": ["string", "null"]},
            "updated_at": {"type": "string", "format": "date-time"},
            "can_edit": {"type": "boolean"},
            "can_finalize": {"type": "boolean"},
        },
        "required": ["meeting_id", "version", "state", "content"],
    },
)
_ROW = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "minLength": 1, "maxLength": 128},
        **{name: {"type": "string", "maxLength": limit} for name, limit in ROW_FIELDS.items()},
    },
    "required": ["code"],
    "additionalProperties": False,
}
MINUTES_CHANGE = API.schema(
    "MinutesChange",
    {
        "type": "object",
        "properties": {
            "version": {"type": "integer"},
            **{name: {"type": "string", "maxLength": limit} for name, limit in TEXT_FIELDS.items()},
            "attendance": {"type": "array", "items": _ROW, "maxItems": 1000},
        },
        "required": ["version"],
        "additionalProperties": False,
    },
)
MINUTES_VERSION = API.schema(
    "MinutesVersion",
    {
        "type": "object",
        "properties": {"version": {"type": "integer"}},
        "required": ["version"],
        "additionalProperties": False,
    },
)


async def _load(call: ApiCall) -> MinutesResult:
    root = recordings_root(call.request)
    meeting_id = call.params["meeting_id"]
    return await open_minutes(database(call.request), call.actor, meeting_id, root)


@API.operation(
    "GET",
    "/meetings/{meeting_id}/minutes",
    summary="The meeting's minutes (the draft is generated on the first read)",
    roles=MINUTES_EDIT_ROLES,
    response=MINUTES,
    tags=TAGS,
    errors=(404,),
)
async def minutes_get(call: ApiCall) -> Any:
    return (await _load(call)).to_dict()


@API.operation(
    "PUT",
    "/meetings/{meeting_id}/minutes",
    summary="Change the draft minutes (text fields, attendance times and notes)",
    roles=MINUTES_EDIT_ROLES,
    request=MINUTES_CHANGE,
    response=MINUTES,
    tags=TAGS,
    errors=(404, 409),
    description="`version` from the last read: another version is 409 `stale` and nothing "
    "is written; final minutes are 409 `final`.",
)
async def minutes_put(call: ApiCall) -> Any:
    body = dict(call.body)
    version = body.pop("version")
    meeting_id = call.params["meeting_id"]
    result = await call.db(lambda s: save_minutes(s, call.actor, meeting_id, version, body))
    return result.to_dict()


@API.operation(
    "POST",
    "/meetings/{meeting_id}/minutes/refresh",
    summary="Generate the draft again from the meeting (keeps the text fields and notes)",
    roles=MINUTES_EDIT_ROLES,
    request=MINUTES_VERSION,
    response=MINUTES,
    tags=TAGS,
    errors=(404, 409),
)
async def minutes_refresh(call: ApiCall) -> Any:
    version = call.body["version"]
    meeting_id = call.params["meeting_id"]
    root = recordings_root(call.request)
    result = await call.db(lambda s: refresh_minutes(s, call.actor, meeting_id, version, root))
    return result.to_dict()


@API.operation(
    "POST",
    "/meetings/{meeting_id}/minutes/final",
    summary="Mark the minutes final (read-only; recordings become prunable)",
    roles=MINUTES_FINAL_ROLES,
    request=MINUTES_VERSION,
    response=MINUTES,
    tags=TAGS,
    errors=(404, 409),
    description="Sets `minutes_final: true` in the meeting's recording manifests (outside "
    "their signature). 409 `recording-active` while the meeting is being recorded.",
)
async def minutes_final(call: ApiCall) -> Any:
    version = call.body["version"]
    meeting_id = call.params["meeting_id"]
    root = recordings_root(call.request)
    result = await finalize_and_mark(database(call.request), call.actor, meeting_id, version, root)
    return {**result.to_dict(), "recordings_marked": result.recordings_marked}


@API.operation(
    "GET",
    "/meetings/{meeting_id}/minutes.docx",
    summary="The minutes as a Word document (.docx download)",
    roles=MINUTES_EDIT_ROLES,
    tags=TAGS,
    errors=(404,),
)
async def minutes_docx(call: ApiCall) -> web.StreamResponse:
    return await docx_response(call.request, await _load(call))
