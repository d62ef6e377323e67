"""Recurring briefings: an RFC 5545 RRULE, expanded in local time, materialized as meetings.

Model (chosen for simplicity and because everything else is per meeting)
-----------------------------------------------------------------------
A `Series` stores the rule (``FREQ=WEEKLY;BYDAY=MO``), the first start as a *wall-clock*
time in Asia/Ho_Chi_Minh and the template of its meetings (title, chair, unit, points,
agenda, duration).  Its occurrences are **materialized** as ordinary `Meeting` rows up to a
horizon (`HORIZON`, 8 weeks ahead; `extend_all` moves it forward, the reminder task calls
it on every tick; a series that starts later is materialized from its first start).  So each occurrence has its own id, room, invitations, join tokens,
.ics UID, reminders and attendance, and every meeting service works on it unchanged.

The rule is expanded on wall-clock times and each occurrence is then placed in the zone
(``08:00 every Monday`` stays 08:00 across a DST change; Asia/Ho_Chi_Minh has none today,
but the code does not rely on that).

A single-occurrence change is a `SeriesException` keyed by the occurrence's *original*
start (the start the rule gives, its RECURRENCE-ID): ``cancelled`` (`cancel_occurrence`)
or ``modified`` (`change_occurrence`: other times, title, agenda, points...).  A second
exception for the same occurrence is refused (``exception-exists``); later edits of a
changed occurrence go through `meetings.update_meeting` on its meeting.  A start that the
rule does not produce is ``not-an-occurrence``.
"""

from __future__ import annotations

import datetime as _datetime_module
import importlib.util
import re
import threading
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dateutil.rrule import rrule, rrulestr
from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.domain import meetings as svc
from conference.domain.errors import SchedulingError
from conference.domain.meetings import (
    MAX_TITLE,
    ZONE,
    AgendaInput,
    Conflict,
    MeetingResult,
    clean_text,
    parse_time,
)
from conference.domain.models import Meeting, Series, SeriesException, utcnow

__all__ = [
    "HORIZON",
    "SeriesResult",
    "cancel_occurrence",
    "cancel_series",
    "change_occurrence",
    "create_series",
    "expand",
    "extend_all",
    "get_series",
    "materialize",
    "parse_rrule",
]

HORIZON = timedelta(weeks=8)
MAX_RRULE = 500
_ALLOWED_FREQ = {"DAILY", "WEEKLY", "MONTHLY", "YEARLY"}
_FREQ = re.compile(r"(?:^|;)FREQ=([A-Z]+)")
_UNTIL_UTC = re.compile(r"UNTIL=(\d{8}T\d{6})Z", re.IGNORECASE)
_LOCAL_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass
class SeriesResult:
    series: Series
    #: Occurrences created now (materialized up to the horizon).
    meetings: list[Meeting] = field(default_factory=list)
    warnings: list[Conflict] = field(default_factory=list)


def _rule(text: str, first_local: datetime) -> rrule:
    """Parse an RRULE value against a naive local first start."""
    value = (text or "").strip()
    if value.upper().startswith("RRULE:"):
        value = value[6:]
    if not value or len(value) > MAX_RRULE or "\n" in value or "DTSTART" in value.upper():
        raise SchedulingError(
            "bad-rrule", f"invalid recurrence rule {text!r}", field="rrule", params={"rule": text}
        )
    freq = _FREQ.search(value.upper())
    if freq is None or freq[1] not in _ALLOWED_FREQ:
        raise SchedulingError(
            "bad-rrule",
            f"recurrence rule {text!r}: FREQ must be DAILY, WEEKLY, MONTHLY or YEARLY",
            field="rrule",
            params={"rule": text},
        )
    _check_parts(value, text)
    # UNTIL in UTC ("...Z", as RFC 5545 asks when DTSTART has a TZID) becomes local wall time,
    # like the naive local DTSTART the rule is expanded from.
    try:
        value = _UNTIL_UTC.sub(_local_until, value)
        rule = rrulestr(value, dtstart=first_local)
    # dateutil's date parser overflows (OverflowError, decimal.InvalidOperation) on a
    # huge UNTIL, and so does an UNTIL moved past the year 9999
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise SchedulingError(
            "bad-rrule",
            f"invalid recurrence rule {text!r}: {exc}",
            field="rrule",
            params={"rule": text},
        ) from None
    if not isinstance(rule, rrule):  # an rruleset: several rules, EXDATE...
        raise SchedulingError(
            "bad-rrule", f"invalid recurrence rule {text!r}", field="rrule", params={"rule": text}
        )
    if not _meets(value, first_local):
        raise SchedulingError(
            "bad-rrule",
            f"recurrence rule {text!r}: no meeting within {SEARCH_YEARS} years",
            field="rrule",
            params={"rule": text},
        )
    return rule


#: a series recurs at its first start's time of day, on days: these parts would make many
#: meetings a day (BYHOUR=0..23;BYMINUTE=0..59: 1,440) or pick days too rarely to look for
_REFUSED_PARTS = ("BYHOUR", "BYMINUTE", "BYSECOND", "BYYEARDAY", "BYWEEKNO", "BYEASTER")
#: the longest each month can be (February: a leap year's)
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _check_parts(value: str, text: str) -> None:
    """Refuse what dateutil would accept and then search for until the year 9999 (found by
    fuzz/fuzz_rrule.py: ``FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30`` took 19-35 s of CPU to
    find no day at all, at every expansion) or expand into many meetings a day."""

    def bad(why: str) -> SchedulingError:
        return SchedulingError(
            "bad-rrule",
            f"recurrence rule {text!r}: {why}",
            field="rrule",
            params={"rule": text},
        )

    parts: dict[str, str] = {}
    for part in value.upper().split(";"):
        key, _, found = part.partition("=")
        parts[key.strip()] = found.strip()
    for key in _REFUSED_PARTS:
        if key in parts:
            raise bad(f"{key} is not accepted (a series meets at its first start's time)")

    def numbers(key: str) -> list[int]:
        try:
            return [int(n) for n in parts[key].split(",") if n.strip()]
        except ValueError:
            raise bad(f"{key} must be numbers") from None

    if "BYMONTHDAY" in parts:
        months = numbers("BYMONTH") if "BYMONTH" in parts else list(range(1, 13))
        if any(not 1 <= m <= 12 for m in months):
            raise bad("BYMONTH must be 1-12")
        longest = max(_MONTH_DAYS[m - 1] for m in months)
        days = numbers("BYMONTHDAY")
        if days and all(d == 0 or abs(d) > longest for d in days):
            raise bad("no month of the rule has such a day")


#: a series must meet within this many years of its first start (a rule that would not,
#: e.g. ``FREQ=DAILY;INTERVAL=7;BYDAY=TU`` from a Monday, is refused: looking further
#: costs dateutil a walk to the year 9999, seconds of CPU at each expansion)
SEARCH_YEARS = 30


class _Years(types.ModuleType):
    """The `datetime` module as a private copy of dateutil's rrule sees it: its MAXYEAR is
    the end of the search (`_meets`), everything else is the real module's."""

    limit = datetime.max.year

    def __getattr__(self, name: str) -> Any:
        return getattr(_datetime_module, name)

    @property
    def MAXYEAR(self) -> int:  # noqa: N802 - the name dateutil reads
        return self.limit


_bounded_lock = threading.Lock()
_bounded_years = _Years("datetime")
_spec = importlib.util.find_spec("dateutil.rrule")
assert _spec is not None and _spec.loader is not None
_bounded_rrule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bounded_rrule)
_bounded_rrule.datetime = _bounded_years  # type: ignore[attr-defined]


def _meets(value: str, first_local: datetime) -> bool:
    """Whether the rule has an occurrence within `SEARCH_YEARS` of its first start."""
    with _bounded_lock:  # the search's end is the private module's, one search at a time
        _bounded_years.limit = min(first_local.year + SEARCH_YEARS, datetime.max.year)
        try:
            rule = _bounded_rrule.rrulestr(value, dtstart=first_local)
            return next(iter(rule), None) is not None
        finally:
            _bounded_years.limit = datetime.max.year


def _local_until(match: re.Match[str]) -> str:
    utc = datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return "UNTIL=" + utc.astimezone(ZONE).strftime("%Y%m%dT%H%M%S")


def parse_rrule(text: str, first_start: datetime | str) -> str:
    """Check an RRULE against its first start; returns the rule without "RRULE:"."""
    first_local = parse_time(first_start, "start").astimezone(ZONE).replace(tzinfo=None)
    _rule(text, first_local)
    value = text.strip()
    return value[6:] if value.upper().startswith("RRULE:") else value


def _first_local(series: Series) -> datetime:
    return datetime.strptime(series.first_start_local, _LOCAL_FORMAT)


def expand(series: Series, after: datetime, until: datetime) -> list[datetime]:
    """Occurrence starts (UTC) with after <= start <= until, expanded in local wall time."""
    rule = _rule(series.rrule, _first_local(series))
    low = after.astimezone(ZONE).replace(tzinfo=None) - timedelta(days=1)
    high = until.astimezone(ZONE).replace(tzinfo=None) + timedelta(days=1)
    starts = []
    for wall in rule.between(low, high, inc=True):
        start = wall.replace(tzinfo=ZONE).astimezone(UTC)  # fold=0: the first of a repeated hour
        if after <= start <= until:
            starts.append(start)
    return starts


def get_series(session: Session, series_id: int | str) -> Series:
    return svc.get_row(session, Series, series_id, "series")


def _agenda_template(items: Sequence[AgendaInput]) -> list[dict[str, str | None]]:
    return [
        {"title": a.title, "presenter": a.presenter, "presenter_user": a.presenter_user}
        for a in items
    ]


def _agenda_inputs(series: Series) -> list[AgendaInput]:
    return [
        AgendaInput(
            title=str(item.get("title") or ""),
            presenter=str(item.get("presenter") or ""),
            presenter_user=item.get("presenter_user") or None,
        )
        for item in series.agenda
    ]


def _occurrence(session: Session, series: Series, start: datetime) -> MeetingResult:
    end = start + timedelta(minutes=series.duration_minutes)
    return svc.create_meeting(
        session,
        title=series.title,
        unit=series.unit.code,
        chair=series.chair.username,
        start=start,
        end=end,
        points=[p.code for p in series.points],
        agenda=_agenda_inputs(series),
        recording_policy=series.recording_policy,
        notes=series.notes,
        series_id=series.id,
        occurrence_start=start,
    )


def horizon(series: Series, now: datetime) -> datetime:
    """How far occurrences are materialized: HORIZON past now, or past the first start
    for a series that begins later (its first weeks exist as soon as it is created)."""
    first = _first_local(series).replace(tzinfo=ZONE).astimezone(UTC)
    return max(now, first) + HORIZON


def materialize(session: Session, series: Series, until: datetime) -> SeriesResult:
    """Create the meetings of occurrences up to `until` that do not exist yet.

    Cancelled occurrences (exceptions) are skipped; an occurrence already materialized
    (even if moved since) is left alone.
    """
    result = SeriesResult(series)
    if series.cancelled:
        return result
    first = _first_local(series).replace(tzinfo=ZONE).astimezone(UTC)
    after = series.materialized_until + timedelta(seconds=1) if series.materialized_until else first
    if until < after:
        return result
    skip = {e.original_start for e in series.exceptions if e.kind == "cancelled"} | set(
        session.scalars(select(Meeting.occurrence_start).where(Meeting.series_id == series.id))
    )
    for start in expand(series, after, until):
        if start in skip:
            continue
        made = _occurrence(session, series, start)
        result.meetings.append(made.meeting)
        result.warnings.extend(made.warnings)
    series.materialized_until = until
    session.flush()
    return result


def create_series(
    session: Session,
    *,
    title: str,
    unit: str,
    chair: str,
    rrule: str,
    start: datetime | str,
    end: datetime | str,
    points: Sequence[str] = (),
    agenda: Sequence[AgendaInput] = (),
    recording_policy: str = "none",
    notes: str = "",
    now: datetime | None = None,
) -> SeriesResult:
    """A recurring briefing whose first occurrence is `start`-`end` (aware times).

    The rule repeats the local wall-clock time of `start`; the duration is `end - start`.
    Occurrences are materialized up to `now + HORIZON`.  If `start` itself is not produced
    by the rule (e.g. a Tuesday for BYDAY=MO), the first occurrence is the rule's first.
    """
    clean_title = clean_text(title, "title", MAX_TITLE)
    start_at, end_at = parse_time(start, "start"), parse_time(end, "end")
    if end_at <= start_at:
        raise SchedulingError("end-before-start", "the end must be after the start", field="end")
    if end_at - start_at > svc.MAX_DURATION:
        raise SchedulingError("too-long", "a meeting lasts at most 24 hours", field="end")
    first_local = start_at.astimezone(ZONE).replace(tzinfo=None)
    rule_text = parse_rrule(rrule, start_at)
    # Check the template once, with the same rules as a meeting (chair, points, agenda...).
    owner = svc._unit(session, unit)
    chair_user = svc._chair(session, chair, owner)
    invited = svc._points(session, points)
    svc._agenda(session, agenda)
    series = Series(
        title=clean_title,
        unit=owner,
        chair=chair_user,
        rrule=rule_text,
        first_start_local=first_local.strftime(_LOCAL_FORMAT),
        timezone=svc.TIMEZONE,
        duration_minutes=max(1, round((end_at - start_at).total_seconds() / 60)),
        recording_policy=svc._policy(recording_policy),
        notes=svc._clean_notes(notes),
        agenda=_agenda_template(agenda),
        points=invited,
        cancelled=False,
    )
    session.add(series)
    session.flush()
    return materialize(session, series, horizon(series, now or utcnow()))


def _check_occurrence(series: Series, original_start: datetime | str) -> datetime:
    start = parse_time(original_start, "occurrence")
    if start not in expand(series, start, start):
        raise SchedulingError(
            "not-an-occurrence",
            f"series {series.id} has no occurrence at {start.isoformat()}",
            field="occurrence",
            params={"start": svc.local_time(start).strftime("%d/%m/%Y %H:%M")},
        )
    return start


def _add_exception(session: Session, series: Series, start: datetime, kind: str) -> None:
    existing = session.scalar(
        select(SeriesException).where(
            SeriesException.series_id == series.id, SeriesException.original_start == start
        )
    )
    if existing is not None:
        raise SchedulingError(
            "exception-exists",
            f"the occurrence of {start.isoformat()} was already {existing.kind}",
            field="occurrence",
            params={
                "start": svc.local_time(start).strftime("%d/%m/%Y %H:%M"),
                "kind": existing.kind,
            },
            status=409,
        )
    session.add(SeriesException(series=series, original_start=start, kind=kind))
    session.flush()


def _occurrence_meeting(session: Session, series: Series, start: datetime) -> Meeting | None:
    return session.scalar(
        select(Meeting).where(Meeting.series_id == series.id, Meeting.occurrence_start == start)
    )


def cancel_occurrence(
    session: Session, series_id: int | str, original_start: datetime | str
) -> Meeting | None:
    """Cancel one occurrence; returns its meeting if it was materialized (now cancelled)."""
    series = get_series(session, series_id)
    start = _check_occurrence(series, original_start)
    _add_exception(session, series, start, "cancelled")
    meeting = _occurrence_meeting(session, series, start)
    if meeting is not None:
        svc.cancel_meeting(session, meeting.id, version=None)
    return meeting


def change_occurrence(
    session: Session,
    series_id: int | str,
    original_start: datetime | str,
    *,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    title: str | None = None,
    points: Sequence[str] | None = None,
    agenda: Sequence[AgendaInput] | None = None,
    notes: str | None = None,
    recording_policy: str | None = None,
) -> MeetingResult:
    """Change one occurrence (move it, retitle it...), recorded as a "modified" exception.

    The occurrence is materialized first if it lies beyond the horizon.
    """
    series = get_series(session, series_id)
    occurrence = _check_occurrence(series, original_start)
    _add_exception(session, series, occurrence, "modified")
    meeting = _occurrence_meeting(session, series, occurrence)
    if meeting is None:
        meeting = _occurrence(session, series, occurrence).meeting
    return svc.update_meeting(
        session,
        meeting.id,
        version=None,
        start=start,
        end=end,
        title=title,
        points=points,
        agenda=agenda,
        notes=notes,
        recording_policy=recording_policy,
    )


def cancel_series(
    session: Session, series_id: int | str, *, now: datetime | None = None
) -> list[Meeting]:
    """Stop a series: its future scheduled occurrences are cancelled (returned)."""
    series = get_series(session, series_id)
    moment = now or utcnow()
    cancelled = []
    for meeting in session.scalars(
        select(Meeting).where(
            Meeting.series_id == series.id,
            Meeting.status == "scheduled",
            Meeting.start_at > moment,
        )
    ):
        svc.cancel_meeting(session, meeting.id, version=None)
        cancelled.append(meeting)
    series.cancelled = True
    session.flush()
    return cancelled


def extend_all(session: Session, *, now: datetime | None = None) -> list[Meeting]:
    """Materialize every active series up to now + HORIZON; returns the new meetings."""
    moment = now or utcnow()
    created: list[Meeting] = []
    for series in session.scalars(select(Series).where(Series.cancelled.is_(False))):
        created.extend(materialize(session, series, horizon(series, moment)).meetings)
    return created
