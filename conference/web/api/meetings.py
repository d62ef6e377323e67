"""The meetings JSON API (``/api/v1/meetings``, ``/api/v1/series``), on the meeting services.

Registered on :data:`conference.web.api.API` (listed in ``API_MODULES``), so every operation is
in the OpenAPI document.  Who may see and change a meeting is decided by
:mod:`conference.web.pages.meetings` (the same rules as the pages: see its docstring):
a meeting outside the user's scope is 404, a meeting the user sees but may not change 403.

Times are ISO 8601 with an offset (``2026-12-07T08:00:00+07:00``); a time without one is
refused (422 ``time-no-zone``) rather than guessed.  Answers give times in
Asia/Ho_Chi_Minh (``+07:00``).  The list filters ``from`` and ``to`` are local dates
(``YYYY-MM-DD``, both inclusive; default: today and the 6 days after).

Errors: ``{"error": code, "message": English text, "field": input field}`` (``field`` when
the error is about one).  The service codes of :mod:`conference.domain.errors` are kept
(``end-before-start``, ``unknown-point``, ``conflict-stale``...); a refused input is 422,
an edit based on an old ``version`` or of a closed meeting 409, an unknown meeting 404.
Conflicts (the chair or a point double-booked) are not errors: create and update answer
with the meeting and its ``warnings``.

Size: a little over 600 lines, of which about 250 are the OpenAPI schemas of the
operations (declarations); the rules live in the meeting services.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from conference.appkeys import SETTINGS
from conference.core.identity import shown_identity
from conference.domain import attendance, invitations
from conference.domain import meetings as svc
from conference.domain.meeting_services import (
    EDIT_ROLES,
    MeetingData,
    MeetingView,
    briefings,
    create_for,
    create_series_for,
    load_meeting,
    stale,
    update_for,
)
from conference.domain.meetings import ZONE, AgendaInput, local_time
from conference.domain.models import MEETING_STATUSES, RECORDING_POLICIES, RSVP_ANSWERS
from conference.domain.permissions import can_edit_meeting
from conference.web.api import API, ApiCall, ApiError, Query
from conference.web.auth import database

T = TypeVar("T")
SEE = ("admin", "chair", "secretary", "operator")
STAFF = ("admin", "chair", "secretary")
TAGS = ("meetings",)


# --- schemas ----------------------------------------------------------------------------------

_TIME = {
    "type": "string",
    "format": "date-time",
    "description": "ISO 8601 with an offset, e.g. 2026-12-07T08:00:00+07:00",
}
_AGENDA_ITEM = API.schema(
    "AgendaItem",
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 300},
            "presenter": {
                "type": "string",
                "maxLength": 200,
                "description": "free text; in answers the presenting account's name if any",
            },
            "presenter_user": {
                "type": ["string", "null"],
                "maxLength": 64,
                "description": "the username of a presenting account of the caller's units "
                "(then presenter may be empty); unknown or outside: 400 unknown-presenter",
            },
        },
        "required": ["title"],
        "additionalProperties": False,
    },
)
_FIELDS: dict[str, Any] = {
    "title": {"type": "string", "minLength": 1, "maxLength": 300},
    "unit": {"type": "string", "description": "unit code"},
    "chair": {"type": "string", "description": "username of a chair"},
    "start": _TIME,
    "end": _TIME,
    "points": {
        "type": "array",
        "items": {"type": "string"},
        "maxItems": 500,
        "description": "codes of the invited points",
    },
    "agenda": {"type": "array", "items": _AGENDA_ITEM, "maxItems": 100},
    "recording_policy": {"enum": list(RECORDING_POLICIES)},
    "notes": {"type": "string", "maxLength": 20000},
}
MEETING = API.schema(
    "Meeting",
    {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "title": {"type": "string"},
            "unit": {"type": "string"},
            "unit_name": {"type": "string"},
            "chair": {"type": "string"},
            "chair_name": {"type": "string"},
            "start": _TIME,
            "end": _TIME,
            "status": {"enum": list(MEETING_STATUSES)},
            "version": {"type": "integer", "description": "send it back with a change"},
            "sequence": {"type": "integer", "description": "iCalendar SEQUENCE"},
            "recording_policy": {"enum": list(RECORDING_POLICIES)},
            "notes": {"type": "string"},
            "series_id": {"type": ["integer", "null"]},
            "agenda": {"type": "array", "items": _AGENDA_ITEM},
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "name": {"type": "string"},
                        "answer": {"enum": list(RSVP_ANSWERS)},
                    },
                    "required": ["code", "name", "answer"],
                },
            },
            "can_edit": {
                "type": "boolean",
                "description": "whether the token's user may change it",
            },
        },
        "required": ["id", "title", "unit", "chair", "start", "end", "status", "version"],
    },
)
WARNING = API.schema(
    "ConflictWarning",
    {
        "type": "object",
        "properties": {
            "kind": {"enum": ["chair", "point"]},
            "meeting_id": {"type": "integer"},
            "title": {"type": "string"},
            "start": _TIME,
            "end": _TIME,
            "point": {"type": ["string", "null"]},
            "message": {"type": "string"},
        },
        "required": ["kind", "meeting_id", "title", "start", "end"],
    },
)
MEETING_RESULT = API.schema(
    "MeetingResult",
    {
        "type": "object",
        "properties": {
            "meeting": MEETING,
            "warnings": {"type": "array", "items": WARNING},
        },
        "required": ["meeting", "warnings"],
    },
)
NEW_MEETING = API.schema(
    "NewMeeting",
    {
        "type": "object",
        "properties": _FIELDS,
        "required": ["title", "unit", "chair", "start", "end"],
        "additionalProperties": False,
    },
)
MEETING_CHANGE = API.schema(
    "MeetingChange",
    {
        "type": "object",
        "properties": {"version": {"type": "integer", "minimum": 1}, **_FIELDS},
        "required": ["version"],
        "additionalProperties": False,
        "description": "only the fields present change; version is the one the edit is based on",
    },
)
VERSION = API.schema(
    "VersionOnly",
    {
        "type": "object",
        "properties": {"version": {"type": "integer", "minimum": 1}},
        "required": ["version"],
        "additionalProperties": False,
    },
)
NEW_SERIES = API.schema(
    "NewSeries",
    {
        "type": "object",
        "properties": {
            **_FIELDS,
            "rrule": {
                "type": "string",
                "minLength": 1,
                "maxLength": 500,
                "description": "RFC 5545 RRULE, e.g. FREQ=WEEKLY;BYDAY=MO",
            },
        },
        "required": ["title", "unit", "chair", "start", "end", "rrule"],
        "additionalProperties": False,
        "description": "start/end are the first occurrence; the rule repeats its local time",
    },
)
SERIES_RESULT = API.schema(
    "SeriesResult",
    {
        "type": "object",
        "properties": {
            "series_id": {"type": "integer"},
            "rrule": {"type": "string"},
            "meetings": {"type": "array", "items": MEETING},
            "warnings": {"type": "array", "items": WARNING},
        },
        "required": ["series_id", "rrule", "meetings", "warnings"],
    },
)
INVITATION = API.schema(
    "Invitation",
    {
        "type": "object",
        "properties": {
            "point": {"type": "string"},
            "name": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "answer": {"enum": list(RSVP_ANSWERS)},
            "answered_at": {"type": ["string", "null"], "format": "date-time"},
            "sent_sequence": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
        },
        "required": ["point", "name", "answer"],
    },
)
SEND_REPORT = API.schema(
    "SendReport",
    {
        "type": "object",
        "properties": {
            "sent": {"type": "array", "items": {"type": "string"}},
            "cancelled": {"type": "array", "items": {"type": "string"}},
            "no_email": {"type": "array", "items": {"type": "string"}},
            "failed": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["sent", "cancelled", "no_email", "failed"],
        "description": "point codes per outcome; failed: point -> error (sent again next time)",
    },
)
ATTENDANCE = API.schema(
    "Attendance",
    {
        "type": "object",
        "properties": {
            "presence": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "identity": {"type": "string"},
                        "name": {"type": "string"},
                        "point": {"type": ["string", "null"]},
                        "invited": {"type": "boolean"},
                        "first_join": {"type": ["string", "null"], "format": "date-time"},
                        "last_leave": {"type": ["string", "null"], "format": "date-time"},
                        "seconds": {"type": "integer"},
                    },
                    "required": ["identity", "point", "invited", "seconds"],
                },
            },
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "at": {"type": "string", "format": "date-time"},
                        "kind": {"enum": ["join", "leave"]},
                        "identity": {"type": "string"},
                        "name": {"type": "string"},
                        "role": {"type": "string"},
                        "point": {"type": ["string", "null"]},
                    },
                    "required": ["at", "kind", "identity"],
                },
            },
        },
        "required": ["presence", "events"],
    },
)


# --- helpers ----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return local_time(value).isoformat() if value is not None else None


def _warning(conflict: svc.Conflict) -> dict[str, Any]:
    return {
        "kind": conflict.kind,
        "meeting_id": conflict.meeting_id,
        "title": conflict.title,
        "start": _iso(conflict.start),
        "end": _iso(conflict.end),
        "point": conflict.point,
        "message": str(conflict),
    }


def _meeting(view: MeetingView) -> dict[str, Any]:
    return {**view.to_dict(), "can_edit": view.can_edit}


def _result(session: Session, actor: Any, result: svc.MeetingResult) -> dict[str, Any]:
    view = MeetingView.of(result.meeting, can_edit_meeting(session, actor, result.meeting))
    return {"meeting": _meeting(view), "warnings": [_warning(w) for w in result.warnings]}


def _data(body: dict[str, Any]) -> MeetingData:
    return MeetingData(
        title=body["title"],
        unit=body["unit"],
        chair=body["chair"],
        start=body["start"],
        end=body["end"],
        points=list(body.get("points", [])),
        agenda=_agenda(body.get("agenda", [])),
        recording_policy=body.get("recording_policy", "none"),
        notes=body.get("notes", ""),
    )


def _agenda(items: list[dict[str, Any]]) -> list[AgendaInput]:
    return [
        AgendaInput(
            title=i["title"],
            presenter=i.get("presenter") or "",
            presenter_user=i.get("presenter_user") or None,
        )
        for i in items
    ]


def _day(call: ApiCall, name: str, default: date) -> date:
    value = call.query.get(name)
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(
            422, "invalid-date", f"{name} must be a date YYYY-MM-DD", field=name
        ) from None


# --- operations -------------------------------------------------------------------------------


@API.operation(
    "GET",
    "/meetings",
    summary="Meetings the user sees, by local date (chairs: those they chair)",
    roles=SEE,
    response={"type": "array", "items": MEETING},
    query=(
        Query("from", "first local date YYYY-MM-DD (default today)"),
        Query("to", "last local date YYYY-MM-DD, inclusive (default from + 6 days)"),
        Query("unit", "only this unit and those below it (a unit code)"),
        Query("cancelled", "include cancelled meetings", "boolean"),
    ),
    tags=TAGS,
    errors=(422,),
)
async def meetings_list(call: ApiCall) -> Any:
    first = _day(call, "from", datetime.now(ZONE).date())
    last = _day(call, "to", first + timedelta(days=6))
    if last < first:
        raise ApiError(422, "end-before-start", "to is before from", field="to")
    if (last - first).days > 366:
        raise ApiError(422, "too-long", "at most a year at a time", field="to")
    start = datetime(first.year, first.month, first.day, tzinfo=ZONE)
    end = datetime(last.year, last.month, last.day, tzinfo=ZONE) + timedelta(days=1)
    unit, cancelled = call.query.get("unit"), bool(call.query.get("cancelled"))
    views = await call.db(
        lambda s: briefings(s, call.actor, start, end, unit, include_cancelled=cancelled)
    )
    return [_meeting(v) for v in views]


@API.operation(
    "POST",
    "/meetings",
    summary="Schedule a meeting (conflicts come back as warnings)",
    roles=EDIT_ROLES,
    request=NEW_MEETING,
    response=MEETING_RESULT,
    status=201,
    tags=TAGS,
)
async def meeting_create(call: ApiCall) -> Any:
    data = _data(call.body)
    return await call.db(lambda s: _result(s, call.actor, create_for(s, call.actor, data)))


@API.operation(
    "GET",
    "/meetings/{meeting_id}",
    summary="One meeting: times, chair, agenda, invited points and their answers",
    roles=SEE,
    response=MEETING,
    tags=TAGS,
    errors=(404,),
)
async def meeting_get(call: ApiCall) -> Any:
    def load(session: Session) -> dict[str, Any]:
        meeting = load_meeting(session, call.actor, call.params["meeting_id"])
        return _meeting(MeetingView.of(meeting, can_edit_meeting(session, call.actor, meeting)))

    return await call.db(load)


@API.operation(
    "PATCH",
    "/meetings/{meeting_id}",
    summary="Change a meeting (reschedule: start and end); version from the last read",
    roles=EDIT_ROLES,
    request=MEETING_CHANGE,
    response=MEETING_RESULT,
    tags=TAGS,
    errors=(404, 409),
    description="A version other than the meeting's current one is 409 conflict-stale and "
    "nothing is written: read the meeting again and re-apply the change.",
)
async def meeting_update(call: ApiCall) -> Any:
    body = dict(call.body)
    version = body.pop("version")
    if "agenda" in body:
        body["agenda"] = _agenda(body["agenda"])
    meeting_id = call.params["meeting_id"]
    return await call.db(
        lambda s: _result(s, call.actor, update_for(s, call.actor, meeting_id, version, body)),
    )


@API.operation(
    "POST",
    "/meetings/{meeting_id}/cancel",
    summary="Cancel a scheduled meeting (then send the invitations: points get a CANCEL)",
    roles=EDIT_ROLES,
    request=VERSION,
    response=MEETING,
    tags=TAGS,
    errors=(404, 409),
)
async def meeting_cancel(call: ApiCall) -> Any:
    return await _versioned(call, lambda s, m, v: svc.cancel_meeting(s, m, version=v))


@API.operation(
    "POST",
    "/meetings/{meeting_id}/end",
    summary="End a meeting (a live one nobody ended: its room closes for everyone)",
    roles=EDIT_ROLES,
    request=VERSION,
    response=MEETING,
    tags=TAGS,
    errors=(404, 409),
)
async def meeting_end(call: ApiCall) -> Any:
    return await _versioned(call, lambda s, m, _v: svc.end_meeting(s, m))


async def _versioned(call: ApiCall, change: Callable[[Session, int, int], object]) -> Any:
    """A change of a meeting at the version the caller read (409 conflict-stale else)."""
    version = call.body["version"]

    def apply(session: Session) -> dict[str, Any]:
        meeting = load_meeting(session, call.actor, call.params["meeting_id"], edit=True)
        if meeting.version != version:
            raise stale(meeting, version)
        change(session, meeting.id, version)
        return _meeting(MeetingView.of(meeting, True))

    return await call.db(apply)


@API.operation(
    "GET",
    "/meetings/{meeting_id}/invitations",
    summary="The invited points, their answers and what was e-mailed to them",
    roles=STAFF,
    response={"type": "array", "items": INVITATION},
    tags=TAGS,
    errors=(404,),
)
async def meeting_invitations(call: ApiCall) -> Any:
    def load(session: Session) -> list[dict[str, Any]]:
        meeting = load_meeting(session, call.actor, call.params["meeting_id"])
        return [
            {
                "point": v.point,
                "name": v.name,
                "email": v.email,
                "answer": v.answer,
                "answered_at": _iso(v.answered_at),
                "sent_sequence": v.sent_sequence,
                "last_error": v.last_error,
            }
            for v in invitations.list_invitations(session, meeting.id)
        ]

    return await call.db(load)


@API.operation(
    "POST",
    "/meetings/{meeting_id}/invitations/send",
    summary="E-mail what each invited point has not been told yet (invite, update, cancel)",
    roles=EDIT_ROLES,
    response=SEND_REPORT,
    tags=TAGS,
    errors=(404,),
    description="Idempotent. A mail server failure is reported per point in failed "
    "(200); those e-mails are sent again by the next call.",
)
async def meeting_send(call: ApiCall) -> Any:
    meeting_id = await call.db(
        lambda s: load_meeting(s, call.actor, call.params["meeting_id"], edit=True).id
    )
    settings = call.request.app[SETTINGS]
    report = await invitations.send_pending(database(call.request), settings, meeting_id)
    return {
        "sent": report.sent,
        "cancelled": report.cancelled,
        "no_email": report.no_email,
        "failed": {point: str(error) for point, error in report.failed.items()},
    }


@API.operation(
    "GET",
    "/meetings/{meeting_id}/attendance",
    summary="Who joined when, from which point, and for how long",
    roles=STAFF,
    response=ATTENDANCE,
    tags=TAGS,
    errors=(404,),
)
async def meeting_attendance(call: ApiCall) -> Any:
    def load(session: Session) -> dict[str, Any]:
        meeting = load_meeting(session, call.actor, call.params["meeting_id"])
        return {
            "presence": [
                {
                    "identity": p.identity,
                    "name": p.name,
                    "point": p.point,
                    "invited": p.invited,
                    "first_join": _iso(p.first_join),
                    "last_leave": _iso(p.last_leave),
                    "seconds": int(p.connected.total_seconds()),
                }
                for p in attendance.presence(session, meeting.id)
            ],
            "events": [
                {
                    "at": _iso(e.at),
                    "kind": e.kind,
                    "identity": shown_identity(e.identity),
                    "name": e.name,
                    "role": e.role,
                    "point": e.point.code if e.point else None,
                }
                for e in attendance.list_events(session, meeting.id)
            ],
        }

    return await call.db(load)


@API.operation(
    "POST",
    "/series",
    summary="Schedule a recurring briefing (RRULE); its first 8 weeks are created",
    roles=EDIT_ROLES,
    request=NEW_SERIES,
    response=SERIES_RESULT,
    status=201,
    tags=TAGS,
)
async def series_create(call: ApiCall) -> Any:
    data, rule = _data(call.body), call.body["rrule"]

    def create(session: Session) -> dict[str, Any]:
        result = create_series_for(session, call.actor, data, rule)
        return {
            "series_id": result.series.id,
            "rrule": result.series.rrule,
            "meetings": [
                _meeting(MeetingView.of(m, can_edit_meeting(session, call.actor, m)))
                for m in result.meetings
            ],
            "warnings": [_warning(w) for w in result.warnings],
        }

    return await call.db(create)
