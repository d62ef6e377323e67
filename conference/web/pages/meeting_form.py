"""The meeting form's fields: what the page posts, parsed to the services' `MeetingData`.

Pure (no aiohttp): the edit pages (conference/web/pages/meetings.py) show these values again
with the errors found here (`FormErrors`) or by the services.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from conference.domain import meetings as svc
from conference.domain.errors import SchedulingError
from conference.domain.meeting_services import FormErrors, MeetingData
from conference.domain.meetings import ZONE, AgendaInput, local_time
from conference.domain.models import Meeting

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
MAX_AGENDA_ROWS = 100


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
    rows = []
    for index in range(MAX_AGENDA_ROWS):
        if f"agenda_title_{index}" not in form:
            break
        rows.append(
            (form_text(form, f"agenda_title_{index}"), form_text(form, f"agenda_presenter_{index}"))
        )
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
    if errors:
        raise FormErrors(errors)
    agenda = [
        AgendaInput(title=title, presenter=presenter)
        for title, presenter in values["agenda"]
        if title.strip() or presenter.strip()
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
        "agenda": [(a.title, a.presenter_name) for a in meeting.agenda],
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
