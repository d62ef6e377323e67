"""The answer link of an invitation: /m/{meeting}/rsvp?token=...&answer=accept|decline.

``GET`` shows the meeting and a button; only ``POST`` (the button) records the answer, so a
mail scanner or a link preview that fetches the URL cannot answer for the point.  The
token is the invitation's answer token (`invitations.verify_rsvp_token`: audience "rsvp",
this meeting, one point), carried in the form; no cookie is involved, so there is nothing
for a cross-site request to borrow.  Bad links, unknown meetings and closed meetings get a
Vietnamese page (English with ?lang=en) with a 4xx status, never a traceback.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from conference.appkeys import SETTINGS, app_database
from conference.domain import invitations, meetings
from conference.domain.db import DatabaseError
from conference.domain.errors import SchedulingError
from conference.domain.models import Point
from conference.web.site import language, render, translator

__all__ = ["setup_rsvp"]


def setup_rsvp(app: web.Application) -> None:
    """Register the answer-link routes (called from conference.server.create_app)."""
    app_database(app)
    app.router.add_get("/m/{meeting_id}/rsvp", rsvp_get)
    app.router.add_post("/m/{meeting_id}/rsvp", rsvp_post)


def _page(request: web.Request, status: int = 200, **context: Any) -> web.Response:
    values: dict[str, Any] = {
        "meeting": None,
        "state": "ask",
        "error_code": "",
        "error_text": "",
        "point": "",
        "answer": "",
        "current": "pending",
        "choices": [],
        "token": "",
    }
    values.update(context)
    return render(request, "rsvp_page.html", status=status, **values)


def _error(request: web.Request, exc: SchedulingError) -> web.Response:
    strings = translator(request.app, language(request))
    template = strings.get(exc.key, exc.message)
    try:
        message = template.format(**exc.params)
    except (KeyError, IndexError):
        message = template
    return _page(request, status=exc.status, state="error", error_code=exc.code, error_text=message)


def _meeting_view(session: Session, meeting_id: str, point_code: str) -> dict[str, Any]:
    meeting = meetings.get_meeting(session, meeting_id)
    views = {v.point: v for v in invitations.list_invitations(session, meeting.id)}
    view = views.get(point_code)
    if view is None:
        raise SchedulingError(
            "not-invited",
            f"point {point_code} is not invited",
            params={"point": point_code},
            status=403,
        )
    if meeting.status in ("cancelled", "ended"):
        raise SchedulingError("meeting-closed", f"the meeting is {meeting.status}", status=409)
    start, end = meetings.local_time(meeting.start_at), meetings.local_time(meeting.end_at)
    return {
        "meeting": {
            "id": meeting.id,
            "title": meeting.title,
            "when": f"{start:%H:%M} - {end:%H:%M} {start:%d/%m/%Y}",
        },
        "point": view.name,
        "current": view.answer,
    }


async def rsvp_get(request: web.Request) -> web.Response:
    meeting_id = request.match_info["meeting_id"]
    token = request.query.get("token", "")
    asked = request.query.get("answer", "")
    settings = request.app[SETTINGS]
    try:
        point = invitations.verify_rsvp_token(settings, token, meeting_id)
        view = await app_database(request.app).run(lambda s: _meeting_view(s, meeting_id, point))
    except SchedulingError as exc:
        return _error(request, exc)
    except DatabaseError:
        return _error(request, SchedulingError("unknown-meeting", "database error", status=503))
    choices = [asked] if asked in invitations.ANSWERS else list(invitations.ANSWERS)
    return _page(request, state="ask", choices=choices, token=token, **view)


async def rsvp_post(request: web.Request) -> web.Response:
    meeting_id = request.match_info["meeting_id"]
    form = await request.post()
    token = str(form.get("token", ""))
    asked = str(form.get("answer", ""))
    settings = request.app[SETTINGS]

    def record(session: Session) -> dict[str, Any]:
        view = _meeting_view(session, meeting_id, point)
        invitation = invitations.answer(session, meeting_id, point, asked)
        point_row = session.get(Point, invitation.point_id)
        view["point"] = point_row.name if point_row else point
        view["answer"] = invitation.answer
        return view

    try:
        point = invitations.verify_rsvp_token(settings, token, meeting_id)
        view = await app_database(request.app).run(record)
    except SchedulingError as exc:
        return _error(request, exc)
    except DatabaseError:
        return _error(request, SchedulingError("unknown-meeting", "database error", status=503))
    return _page(request, state="done", **view)
