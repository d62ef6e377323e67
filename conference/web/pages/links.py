"""``/meetings/{id}/links``: every invited point's join link, for offices without e-mail.

District offices hand links out through chat groups (Zalo) or on paper: the page lists each
invited point's personal link with a copy button, and the message to paste into a chat
group (title, time, agenda, each point's link; ``share_text``); it prints as a list.  The
links are secrets (whoever holds one joins as that point), so only the chair's side of
the meeting (a chair, secretary or admin who may see it: its unit's or above) sees them, and every view is written
to the audit log (``data/audit.log``, action ``links``).  The same comes from
``conference meeting links ID`` and ``GET /api/v1/meetings/{id}/links``.

``/meetings/{id}/links/qr`` is the same for paper: one card per point (its name and unit,
the meeting's title and time, the link as a QR code made here (conference/web/qr.py) and as
text under it), A4, four cards a page, a card never split across two pages; same roles,
audited the same way (``via`` ``qr``).
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.orm import Session

from conference.appkeys import SETTINGS
from conference.domain.admission import CHAIR_SIDE_ROLES
from conference.domain.errors import SchedulingError
from conference.domain.invitations import PointLink, point_links, share_text
from conference.domain.meeting_services import (
    MeetingNotFound,
    MeetingView,
    NotAllowed,
    load_meeting,
)
from conference.web.auth import CurrentUser, database, page, render_page
from conference.web.qr import qr_svg
from conference.web.secrets import log_links
from conference.web.site import language, translator

__all__ = ["setup_links"]


async def _links(
    request: web.Request, user: CurrentUser, template: str, via: str
) -> web.StreamResponse:
    """The links page or the QR sheet (``template``), audited as ``via``."""
    meeting_id = request.match_info["meeting_id"]
    settings = request.app[SETTINGS]
    strings = translator(request.app, language(request))

    def load(session: Session) -> tuple[MeetingView, list[PointLink], str] | None:
        meeting = load_meeting(session, user, meeting_id)
        try:
            links = point_links(settings, meeting)
        except SchedulingError:
            return None
        return MeetingView.of(meeting, True), links, share_text(meeting, links, strings)

    try:
        found = await database(request).run(load)
    except MeetingNotFound:
        return render_page(request, "meeting_missing.html", user, status=404, reason="missing")
    except NotAllowed:
        return render_page(request, "meeting_missing.html", user, status=403, reason="forbidden")
    if found is None:
        return render_page(request, "auth_forbidden.html", user, 409, message_key="mp.links.closed")
    view, links, text = found
    log_links(request, user, meeting_id, len(links), via)
    codes = [qr_svg(link.link) for link in links] if via == "qr" else []
    response = render_page(request, template, user, m=view, links=links, text=text, codes=codes)
    response.headers["Cache-Control"] = "no-store"  # secrets: never kept by a proxy or cache
    return response


@page(CHAIR_SIDE_ROLES)  # the chair's side, never a point's operator
async def links_page(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _links(request, user, "meeting_links.html", "page")


@page(CHAIR_SIDE_ROLES)
async def qr_sheet(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    """The printable sheet: one QR card per point."""
    return await _links(request, user, "meeting_qr.html", "qr")


def setup_links(app: web.Application) -> None:
    app.router.add_get("/meetings/{meeting_id:\\d+}/links", links_page)
    app.router.add_get("/meetings/{meeting_id:\\d+}/links/qr", qr_sheet)
