"""Meeting pages: today's and this week's briefings, the meeting form, the meeting page.

Who sees and who edits, and the scoped services the JSON API shares, are
:mod:`conference.domain.meeting_services`.

Errors are typed `SchedulingError` (a code, a field and a catalogue key
``sched.error.<code>`` of ``meetings.json``), plus the scope's `MeetingNotFound`,
`NotAllowed` and a few codes whose texts are ``mp.error.<code>`` in
``web/static/i18n/meeting_pages.json``.

Form behaviour
--------------
Times are entered as local dates and times (Asia/Ho_Chi_Minh) and converted here; an
impossible date (31/02) is the field message of ``sched.error.invalid-time``.  The agenda
has the existing items plus three blank rows (works without JavaScript; a blank row is
ignored, a cleared row removes the item); web/static/agenda.js adds and removes rows, and
each row's presenter is free text or one of the accounts of the scheduler's units
(`presenters_for`, checked again on save).  Conflicts (the chair or a point double-booked)
are *saved with warnings*: the meeting page always shows the current conflicts of a
scheduled meeting.  The form carries the meeting's version: a save based on an older
version writes nothing and shows the form again with the current values and the message
that the meeting changed.  A weekly briefing is created from the form either with the
weekday builder (``FREQ=WEEKLY;BYDAY=MO`` at the start time) or a raw RRULE.

Pages
-----
``/meetings`` (today and this week, per role), ``/meetings/new``, ``/meetings/{id}``,
``/meetings/{id}/edit``, ``/meetings/{id}/reschedule`` (POST), ``/meetings/{id}/cancel``
(GET: confirmation, POST: cancel), ``/meetings/{id}/send`` (POST: e-mail the invitations),
``/meetings/{id}/join`` (a join link for the viewer: the chair's side gets a meeting token
with role ``chair``, an operator their point's invitation link).

Size: a little over 600 lines: the list, the form pages and the meeting page with its
actions share their helpers; the form's parsing is conference/web/pages/meeting_form.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from conference.appkeys import SETTINGS
from conference.core.identity import shown_identity
from conference.domain import attendance, invitations
from conference.domain import meetings as svc
from conference.domain.admission import CHAIR_SIDE_ROLES
from conference.domain.errors import SchedulingError
from conference.domain.meeting_services import (
    EDIT_ROLES,
    VIEW_ROLES,
    FormErrors,
    MeetingNotFound,
    MeetingView,
    NotAllowed,
    briefings,
    chairs_for,
    create_for,
    create_series_for,
    load_meeting,
    presenters_for,
    stale,
    units_for,
    update_for,
    visible_points,
)
from conference.domain.meetings import ZONE, local_time
from conference.domain.models import RECORDING_POLICIES, Meeting, Point, Unit, User
from conference.domain.permissions import can_edit_meeting, point_invited
from conference.settings import Settings, load_secret
from conference.tokens import create_token
from conference.web.auth import (
    CurrentUser,
    add_nav_link,
    database,
    gettext,
    page,
    render_page,
)
from conference.web.pages.meeting_form import (
    WEEKDAYS,
    form_text,
    form_values,
    local_form_time,
    meeting_values,
    parse_form,
    rrule_of,
)

__all__ = ["setup_meetings"]

log = logging.getLogger(__name__)

BLANK_AGENDA_ROWS = 3


# --- join links -------------------------------------------------------------------------------


def join_open(meeting: Meeting, settings: Settings, now: datetime | None = None) -> bool:
    """Whether the room admits people now (the admission rules of domain/admission.py)."""
    if meeting.status in ("cancelled", "ended"):
        return False
    if meeting.status == "live":
        return True
    opens, closes = invitations.join_window(meeting, settings)
    return opens <= (now or datetime.now(UTC)) <= closes


def chair_join_link(settings: Settings, meeting: Meeting, user: CurrentUser) -> str:
    """A link to the room for the chair's side, valid during the meeting's join window,
    identity the account's username (``u:USERNAME``): role ``chair`` (publish + moderate)
    for the meeting's chair and admins; role ``viewer`` (watch and listen, never waits in
    the lobby) for the other users of the chair's side, e.g. the secretary taking the
    minutes."""
    moderates = user.role == "admin" or user.username == meeting.chair.username
    not_before, expires = invitations.join_window(meeting, settings)
    now = datetime.now(UTC)
    if now >= expires:  # a live meeting that runs past its planned window
        not_before, expires = now, now + timedelta(hours=3)
    token = create_token(
        load_secret(settings),
        meeting=str(meeting.id),
        identity=user.username,
        kind="account",
        name=user.display_name or user.username,
        role="chair" if moderates else "viewer",
        now=not_before,
        not_before=not_before,
        ttl=expires - not_before,
    )
    return f"/m/{meeting.id}?token={token}"


def join_link_for(settings: Settings, session: Session, meeting: Meeting, user: CurrentUser) -> str:
    """The viewer's way into the room: an operator's point link, else the chair's side."""
    if user.role == "operator":
        point = session.get(Point, user.point_id) if user.point_id else None
        if point is None or not point_invited(meeting, point.id):
            raise MeetingNotFound(str(meeting.id))
        full = invitations.join_link(settings, meeting, point)
        return full[full.index("/m/") :]
    if user.role not in CHAIR_SIDE_ROLES:
        raise NotAllowed(str(meeting.id))
    return chair_join_link(settings, meeting, user)


# --- page helpers -----------------------------------------------------------------------------


def error_text(request: web.Request, error: SchedulingError) -> str:
    """The message of a typed error in the request's language (``mp.error.*`` first)."""
    _ = gettext(request)
    for key in (f"mp.error.{error.code}", error.key):
        text = _(key)
        if text != key:
            try:
                return text.format(**error.params)
            except (KeyError, IndexError, ValueError):
                return text
    return error.message


def _not_found(request: web.Request, user: CurrentUser) -> web.Response:
    return render_page(request, "meeting_missing.html", user, status=404, reason="missing")


def _forbidden(request: web.Request, user: CurrentUser) -> web.Response:
    return render_page(request, "meeting_missing.html", user, status=403, reason="forbidden")


def _today() -> date:
    return datetime.now(ZONE).date()


def _day_bounds(day: date, days: int = 1) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=ZONE)
    return start, start + timedelta(days=days)


# --- the briefing lists -----------------------------------------------------------------------


@page(VIEW_ROLES)
async def list_page(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    today = _today()
    try:
        wanted = (
            date.fromisoformat(request.query.get("day", "")) if "day" in request.query else today
        )
    except ValueError:
        wanted = today
    monday = wanted - timedelta(days=wanted.weekday())
    day_start, day_end = _day_bounds(wanted)
    week_start, week_end = _day_bounds(monday, 7)
    settings = request.app[SETTINGS]

    def load(session: Session) -> tuple[list[MeetingView], list[MeetingView], set[int]]:
        day = briefings(session, user, day_start, day_end, include_cancelled=True)
        week = briefings(session, user, week_start, week_end, include_cancelled=True)
        joinable = {v.id for v in week if join_open(svc.get_meeting(session, v.id), settings)}
        return day, week, joinable

    day, week, joinable = await database(request).run(load)
    return render_page(
        request,
        "meeting_list.html",
        user,
        day=day,
        week=week,
        joinable=joinable,
        wanted=wanted,
        is_today=wanted == today,
        monday=monday,
        sunday=monday + timedelta(days=6),
        previous=(monday - timedelta(days=7)).isoformat(),
        following=(monday + timedelta(days=7)).isoformat(),
        may_create=user.role in EDIT_ROLES,
    )


# --- the form ---------------------------------------------------------------------------------


async def _form_page(
    request: web.Request,
    user: CurrentUser,
    *,
    meeting_id: int | None,
    values: Mapping[str, Any],
    status: int = 200,
    errors: Mapping[str, str] | None = None,
    notice: str = "",
) -> web.Response:
    def load(session: Session) -> tuple[list[Unit], list[User], list[Point], list[User]]:
        units, chairs, points, presenters = (
            units_for(session, user),
            chairs_for(session, user),
            visible_points(session, user),
            presenters_for(session, user),
        )
        _ = [u.unit for u in chairs + presenters]
        return units, chairs, points, presenters

    units, chairs, points, presenters = await database(request).run(load)
    agenda = list(values.get("agenda") or [])
    agenda += [("", "", "")] * BLANK_AGENDA_ROWS
    offered = {u.username for u in presenters}
    # an account already chosen (by someone with a wider scope) stays shown as chosen
    others = sorted({row[2] for row in agenda if row[2] and row[2] not in offered})
    return render_page(
        request,
        "meeting_form.html",
        user,
        status,
        meeting_id=meeting_id,
        values=values,
        agenda=agenda,
        max_agenda=svc.MAX_AGENDA,
        presenters=presenters,
        other_presenters=others,
        units=units,
        chairs=chairs,
        points=points,
        policies=RECORDING_POLICIES,
        weekdays=WEEKDAYS,
        errors=dict(errors or {}),
        notice=notice,
    )


def _messages(request: web.Request, errors: Mapping[str, SchedulingError]) -> dict[str, str]:
    return {name: error_text(request, err) for name, err in errors.items()}


@page(EDIT_ROLES)
async def new_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    start = datetime.now(ZONE).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    values: dict[str, Any] = {
        "title": "",
        "unit": user.unit_code or "",
        "chair": user.username if user.role == "chair" else "",
        "start_date": start.strftime("%Y-%m-%d"),
        "start_time": start.strftime("%H:%M"),
        "end_date": start.strftime("%Y-%m-%d"),
        "end_time": (start + timedelta(hours=1)).strftime("%H:%M"),
        "recording_policy": "none",
        "notes": "",
        "agenda": [],
        "points": [],
        "repeat": "",
        "weekday": WEEKDAYS[start.weekday()],
        "rrule": "",
    }
    return await _form_page(request, user, meeting_id=None, values=values)


@page(EDIT_ROLES)
async def new_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    values = form_values(await request.post())
    try:
        data = parse_form(values)
        rule = rrule_of(values)
        if rule is None:
            made = await database(request).run(lambda s: create_for(s, user, data).meeting.id)
        else:
            rrule_text = rule

            def series(session: Session) -> int:
                result = create_series_for(session, user, data, rrule_text)
                if not result.meetings:
                    raise SchedulingError(
                        "series-empty", "the rule gives no meeting", field="rrule"
                    )
                return result.meetings[0].id

            made = await database(request).run(series)
    except FormErrors as exc:
        errors = _messages(request, exc.errors)
        return await _form_page(
            request, user, meeting_id=None, values=values, status=400, errors=errors
        )
    except SchedulingError as exc:
        errors = {exc.field or "form": error_text(request, exc)}
        return await _form_page(
            request, user, meeting_id=None, values=values, status=400, errors=errors
        )
    except NotAllowed:
        return _forbidden(request, user)
    raise web.HTTPSeeOther(f"/meetings/{made}?saved=1")


@page(EDIT_ROLES)
async def edit_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    try:
        values = await database(request).run(
            lambda s: meeting_values(load_meeting(s, user, meeting_id, edit=True))
        )
    except MeetingNotFound:
        return _not_found(request, user)
    except NotAllowed:
        return _forbidden(request, user)
    return await _form_page(request, user, meeting_id=int(meeting_id), values=values)


@page(EDIT_ROLES)
async def edit_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    values = form_values(await request.post())
    try:
        version = int(values["version"])
    except ValueError:
        version = -1

    def save(session: Session) -> None:
        meeting = load_meeting(session, user, meeting_id, edit=True)
        if meeting.version != version:
            raise stale(meeting, version)
        data = parse_form(values)
        changes = data.arguments()
        shown = meeting_values(meeting)
        if (
            all(values[k] == shown[k] for k in ("start_date", "start_time", "end_time"))
            and (values["end_date"] or values["start_date"]) == shown["end_date"]
        ):
            # unchanged times: a live meeting can still get its agenda or notes edited
            del changes["start"], changes["end"]
        update_for(session, user, meeting.id, version, changes)

    try:
        await database(request).run(save)
    except MeetingNotFound:
        return _not_found(request, user)
    except NotAllowed:
        return _forbidden(request, user)
    except FormErrors as exc:
        errors = _messages(request, exc.errors)
        return await _form_page(
            request, user, meeting_id=int(meeting_id), values=values, status=400, errors=errors
        )
    except SchedulingError as exc:
        if exc.code == "conflict-stale":
            current = await database(request).run(
                lambda s: meeting_values(load_meeting(s, user, meeting_id))
            )
            return await _form_page(
                request,
                user,
                meeting_id=int(meeting_id),
                values=current,
                status=409,
                notice=error_text(request, exc),
            )
        errors = {exc.field or "form": error_text(request, exc)}
        status = 409 if exc.status == 409 else 400
        return await _form_page(
            request, user, meeting_id=int(meeting_id), values=values, status=status, errors=errors
        )
    raise web.HTTPSeeOther(f"/meetings/{meeting_id}?saved=1")


# --- the meeting page -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attendee:
    identity: str
    name: str
    point: str | None
    invited: bool
    first_join: datetime | None
    last_leave: datetime | None
    minutes: int


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str
    identity: str
    name: str
    point: str | None


@dataclass
class MeetingPage:
    meeting: MeetingView
    warnings: list[svc.Conflict]
    attendees: list[Attendee]
    events: list[Event]
    joinable: bool


def _page_data(
    session: Session, user: CurrentUser, meeting_id: str, settings: Settings
) -> MeetingPage:
    meeting = load_meeting(session, user, meeting_id)
    editable = can_edit_meeting(session, user, meeting)
    view = MeetingView.of(meeting, editable)
    warnings = svc.find_conflicts(session, meeting) if user.role != "operator" else []
    attendees: list[Attendee] = []
    events: list[Event] = []
    if meeting.status in ("live", "ended") or meeting.end_at < datetime.now(UTC):
        for p in attendance.presence(session, meeting.id):
            if user.role == "operator" and p.point != user.point_code:
                continue
            attendees.append(
                Attendee(
                    p.identity,
                    p.name,
                    p.point,
                    p.invited,
                    p.first_join,
                    p.last_leave,
                    round(p.connected.total_seconds() / 60),
                )
            )
        if user.role != "operator":
            events = [
                Event(
                    e.at,
                    e.kind,
                    shown_identity(e.identity),
                    e.name,
                    e.point.code if e.point else None,
                )
                for e in attendance.list_events(session, meeting.id)
            ]
    return MeetingPage(view, warnings, attendees, events, join_open(meeting, settings))


async def _meeting_page(
    request: web.Request,
    user: CurrentUser,
    meeting_id: str,
    status: int = 200,
    **extra: Any,
) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        data = await database(request).run(lambda s: _page_data(s, user, meeting_id, settings))
    except MeetingNotFound:
        return _not_found(request, user)
    _ = gettext(request)
    warnings = [
        _(w.key)
        + " "
        + _("mp.warning.detail").format(
            title=w.title, when=local_time(w.start).strftime("%H:%M %d/%m/%Y"), point=w.point or ""
        )
        for w in data.warnings
    ]
    extra.setdefault("saved", request.query.get("saved", ""))
    for key, empty in (
        ("action_error", ""),
        ("send_summary", ""),
        ("send_failed", []),
        ("send_no_email", []),
    ):
        extra.setdefault(key, empty)
    return render_page(
        request,
        "meeting_page.html",
        user,
        status,
        m=data.meeting,
        warnings=warnings,
        attendees=data.attendees,
        events=data.events,
        joinable=data.joinable,
        local=local_time,
        **extra,
    )


@page(VIEW_ROLES)
async def meeting_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _meeting_page(request, user, request.match_info["meeting_id"])


@page(VIEW_ROLES)
async def join_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    settings = request.app[SETTINGS]

    def link(session: Session) -> str | None:
        meeting = load_meeting(session, user, meeting_id)
        if not join_open(meeting, settings):
            return None
        return join_link_for(settings, session, meeting, user)

    try:
        target = await database(request).run(link)
    except MeetingNotFound:
        return _not_found(request, user)
    except NotAllowed:
        return _forbidden(request, user)
    if target is None:
        _ = gettext(request)
        return await _meeting_page(request, user, meeting_id, 409, action_error=_("mp.join.closed"))
    raise web.HTTPSeeOther(target)


@page(EDIT_ROLES)
async def reschedule_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    form = await request.post()
    values = form_values(form)
    try:
        version = int(values["version"])
    except ValueError:
        version = -1

    def move(session: Session) -> None:
        errors: dict[str, SchedulingError] = {}
        start = end = None
        try:
            start = local_form_time(values["start_date"], values["start_time"], "start")
        except SchedulingError as exc:
            errors["start"] = exc
        try:
            end = local_form_time(
                values["end_date"] or values["start_date"], values["end_time"], "end"
            )
        except SchedulingError as exc:
            errors["end"] = exc
        meeting = load_meeting(session, user, meeting_id, edit=True)
        if meeting.version != version:
            raise stale(meeting, version)
        if errors or start is None or end is None:
            raise FormErrors(errors)
        svc.reschedule_meeting(session, meeting.id, version=version, start=start, end=end)

    return await _action(request, user, meeting_id, move, "rescheduled")


async def _action(
    request: web.Request, user: CurrentUser, meeting_id: str, function: Any, done: str
) -> web.StreamResponse:
    try:
        await database(request).run(function)
    except MeetingNotFound:
        return _not_found(request, user)
    except NotAllowed:
        return _forbidden(request, user)
    except FormErrors as exc:
        text = "; ".join(_messages(request, exc.errors).values())
        return await _meeting_page(request, user, meeting_id, 400, action_error=text)
    except SchedulingError as exc:
        status = 409 if exc.status == 409 else 400
        return await _meeting_page(
            request, user, meeting_id, status, action_error=error_text(request, exc)
        )
    raise web.HTTPSeeOther(f"/meetings/{meeting_id}?saved={done}")


@page(EDIT_ROLES)
async def cancel_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    try:
        view = await database(request).run(
            lambda s: MeetingView.of(load_meeting(s, user, meeting_id, edit=True), True)
        )
    except MeetingNotFound:
        return _not_found(request, user)
    except NotAllowed:
        return _forbidden(request, user)
    return render_page(request, "meeting_cancel.html", user, m=view, local=local_time)


@page(EDIT_ROLES)
async def cancel_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _versioned(
        request, user, "cancelled", lambda s, m, v: svc.cancel_meeting(s, m, version=v)
    )


@page(EDIT_ROLES)
async def end_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    """End a live meeting nobody ended (its room closes for everyone)."""
    return await _versioned(request, user, "ended", lambda s, m, _v: svc.end_meeting(s, m))


async def _versioned(
    request: web.Request,
    user: CurrentUser,
    done: str,
    change: Callable[[Session, int, int], object],
) -> web.StreamResponse:
    """A form's change of a meeting at the version it was shown at (`_action`)."""
    meeting_id = request.match_info["meeting_id"]
    form = await request.post()
    try:
        version = int(form_text(form, "version"))
    except ValueError:
        version = -1

    def apply(session: Session) -> None:
        meeting = load_meeting(session, user, meeting_id, edit=True)
        if meeting.version != version:
            raise stale(meeting, version)
        change(session, meeting.id, version)

    return await _action(request, user, meeting_id, apply, done)


@page(EDIT_ROLES)
async def send_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    settings = request.app[SETTINGS]
    try:
        the_id = await database(request).run(
            lambda s: load_meeting(s, user, meeting_id, edit=True).id
        )
    except MeetingNotFound:
        return _not_found(request, user)
    except NotAllowed:
        return _forbidden(request, user)
    _ = gettext(request)
    try:
        report = await invitations.send_pending(database(request), settings, the_id)
    except SchedulingError as exc:
        return await _meeting_page(
            request,
            user,
            meeting_id,
            409,
            action_error=_("mp.send.error") + " " + error_text(request, exc),
        )
    except OSError:
        log.exception("sending the invitations of meeting %s failed", the_id)
        return await _meeting_page(request, user, meeting_id, 502, action_error=_("mp.send.error"))
    summary = _("mp.send.result").format(
        sent=len(report.sent),
        cancelled=len(report.cancelled),
        no_email=len(report.no_email),
        failed=len(report.failed),
    )
    # one line per reason, in the page's language, with the points it stopped
    reasons: dict[str, SendFailure] = {}
    for point, error in sorted(report.failed.items()):
        text = _(error.key, **error.params)
        reasons.setdefault(text, SendFailure(error.key, text, [])).points.append(point)
    return await _meeting_page(
        request,
        user,
        meeting_id,
        200 if not report.failed else 502,
        send_summary=summary,
        send_failed=list(reasons.values()),
        send_no_email=report.no_email,
    )


@dataclass(frozen=True)
class SendFailure:
    """One reason e-mails failed (``key``: its catalogue key), said, with its points."""

    key: str
    text: str
    points: list[str]


def setup_meetings(app: web.Application) -> None:
    """Add the meeting pages and their link (call after ``setup_auth``)."""
    app.router.add_get("/meetings", list_page)
    app.router.add_get("/meetings/new", new_get)
    app.router.add_post("/meetings/new", new_post)
    app.router.add_get("/meetings/{meeting_id:\\d+}", meeting_get)
    app.router.add_get("/meetings/{meeting_id:\\d+}/edit", edit_get)
    app.router.add_post("/meetings/{meeting_id:\\d+}/edit", edit_post)
    app.router.add_post("/meetings/{meeting_id:\\d+}/reschedule", reschedule_post)
    app.router.add_post("/meetings/{meeting_id:\\d+}/end", end_post)
    app.router.add_get("/meetings/{meeting_id:\\d+}/cancel", cancel_get)
    app.router.add_post("/meetings/{meeting_id:\\d+}/cancel", cancel_post)
    app.router.add_post("/meetings/{meeting_id:\\d+}/send", send_post)
    app.router.add_get("/meetings/{meeting_id:\\d+}/join", join_get)
    add_nav_link(app, "/meetings", "mp.nav.meetings", VIEW_ROLES)
    add_nav_link(app, "/meetings/new", "mp.nav.new", EDIT_ROLES)
