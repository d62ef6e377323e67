"""The meeting form's fields: what the page posts, parsed to the services' `MeetingData`.

Pure (no aiohttp): the edit pages (conference/web/pages/meetings.py) show these values again
with the errors found here (`FormErrors`) or by the services.

Agenda rows are ``agenda_title_N``, ``agenda_presenter_N`` (free text) and
``agenda_presenter_user_N`` (an account's username, or empty), read in the order of N
whatever the numbers (web/static/agenda.js adds and removes rows; without JavaScript the
page has three blank rows): any number of rows, at most `meetings.MAX_AGENDA` (100) that
are not blank, else the form says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from conference.domain import meetings as svc
from conference.domain.errors import SchedulingError
from conference.domain.meeting_services import FormErrors, MeetingData
from conference.domain.meetings import ZONE, AgendaInput, local_time
from conference.domain.models import Meeting

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
#: Rows read from one post (blank ones included); more is refused as too many items.
MAX_POSTED_ROWS = 500
ROW_FIELD = re.compile(r"agenda_(?:title|presenter|presenter_user)_(\d{1,9})")

AgendaRow = tuple[str, str, str]  # title, presenter (text), presenting account (username)


def form_text(form: Mapping[str, Any], key: str) -> str:
    value = form.get(key)
    return value if isinstance(value, str) else ""


def local_form_time(day: str, clock: str, what: str) -> datetime:
    text = f"{day.strip()} {clock.strip()}".strip()
    try:
        naive = datetime.strptime(text, "%Y-%m-%d %H:%M")
    except ValueError:
        raise SchedulingError(
            "invalid-time",
            f"{what}: {text!r} is not a valid date and time",
            field=what,
            params={"value": text or "—"},
        ) from None
    return naive.replace(tzinfo=ZONE)


def form_values(form: Mapping[str, Any]) -> dict[str, Any]:
    """The raw values of a posted meeting form (to show again)."""
    indices = sorted({int(m.group(1)) for key in form if (m := ROW_FIELD.fullmatch(key))})
    rows: list[AgendaRow] = [
        (
            form_text(form, f"agenda_title_{index}"),
            form_text(form, f"agenda_presenter_{index}"),
            form_text(form, f"agenda_presenter_user_{index}"),
        )
        for index in indices[:MAX_POSTED_ROWS]
    ]
    getall = getattr(form, "getall", None)
    points = [p for p in (getall("points", []) if getall else []) if isinstance(p, str)]
    values: dict[str, Any] = {
        key: form_text(form, key)
        for key in (
            "title",
            "unit",
            "chair",
            "start_date",
            "start_time",
            "end_date",
            "end_time",
            "recording_policy",
            "notes",
            "version",
            "repeat",
            "weekday",
            "rrule",
        )
    }
    values["agenda"] = rows
    values["agenda_posted"] = len(indices)
    values["points"] = points
    return values


def parse_form(values: Mapping[str, Any]) -> MeetingData:
    """A `MeetingData` from the form values; `FormErrors` for what fails before the service."""
    errors: dict[str, SchedulingError] = {}
    start: datetime | str = ""
    end: datetime | str = ""
    try:
        svc.clean_text(values["title"], "title", svc.MAX_TITLE)
    except SchedulingError as exc:
        errors["title"] = exc
    try:
        start = local_form_time(values["start_date"], values["start_time"], "start")
    except SchedulingError as exc:
        errors["start"] = exc
    try:
        end = local_form_time(values["end_date"] or values["start_date"], values["end_time"], "end")
    except SchedulingError as exc:
        errors["end"] = exc
    if not values["unit"]:
        errors["unit"] = SchedulingError("unit-empty", "choose a unit", field="unit")
    if not values["chair"]:
        errors["chair"] = SchedulingError("chair-empty", "choose a chair", field="chair")
    filled = [row for row in values["agenda"] if any(cell.strip() for cell in row)]
    posted = int(values.get("agenda_posted") or 0)
    if len(filled) > svc.MAX_AGENDA or posted > MAX_POSTED_ROWS:
        count = max(len(filled), posted)
        errors["agenda"] = SchedulingError(
            "too-many-items",
            f"at most {svc.MAX_AGENDA} agenda items ({count} given)",
            field="agenda",
            params={"limit": str(svc.MAX_AGENDA), "count": str(count)},
        )
    if errors:
        raise FormErrors(errors)
    agenda = [
        AgendaInput(title=title, presenter=presenter, presenter_user=user.strip() or None)
        for title, presenter, user in filled
    ]
    return MeetingData(
        title=values["title"],
        unit=values["unit"],
        chair=values["chair"],
        start=start,
        end=end,
        points=list(values["points"]),
        agenda=agenda,
        recording_policy=values["recording_policy"] or "none",
        notes=values["notes"],
    )


def meeting_values(meeting: Meeting) -> dict[str, Any]:
    """The form values of a stored meeting."""
    start, end = local_time(meeting.start_at), local_time(meeting.end_at)
    return {
        "title": meeting.title,
        "unit": meeting.unit.code,
        "chair": meeting.chair.username,
        "start_date": start.strftime("%Y-%m-%d"),
        "start_time": start.strftime("%H:%M"),
        "end_date": end.strftime("%Y-%m-%d"),
        "end_time": end.strftime("%H:%M"),
        "recording_policy": meeting.recording_policy,
        "notes": meeting.notes,
        "version": str(meeting.version),
        "agenda": [
            (a.title, a.presenter, a.presenter_user.username if a.presenter_user else "")
            for a in meeting.agenda
        ],
        "points": [inv.point.code for inv in meeting.invitations if inv.active],
        "repeat": "",
        "weekday": "MO",
        "rrule": "",
    }


def rrule_of(values: Mapping[str, Any]) -> str | None:
    repeat = values.get("repeat") or ""
    if repeat == "weekly":
        day = values.get("weekday") or ""
        if day not in WEEKDAYS:
            raise FormErrors(
                {"rrule": SchedulingError("bad-rrule", "choose a weekday", field="rrule")}
            )
        return f"FREQ=WEEKLY;BYDAY={day}"
    if repeat == "rrule":
        return str(values.get("rrule") or "")
    return None
