"""Minutes pages: edit the draft, mark it final, print it, download it as .docx.

Pages (rules in :mod:`conference.minutes`; operators get the 403 page, a meeting of
another district the 404 page):

* ``GET /meetings/{id}/minutes``: the draft as a form (header lines, place, chair,
  secretary, the attendance rows' times and notes, Nội dung, Kết luận) with its version;
  the first visit generates the draft.  A final minutes is shown read-only.
* ``POST /meetings/{id}/minutes``: save (CSRF).  A form based on an older version writes
  nothing and shows the current minutes with the message (409); an edit of a final
  minutes is refused (409).
* ``POST /meetings/{id}/minutes/refresh``: generate the draft again from the meeting data
  (attendance, recordings), keeping the text fields and the secretary's notes.
* ``POST /meetings/{id}/minutes/final``: "Đánh dấu hoàn tất" (secretary or admin).
* ``GET /meetings/{id}/minutes/print``: the printable page (A4 print stylesheet).
* ``GET /meetings/{id}/minutes.docx``: the Word document (download).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from conference.domain.meetings import local_time
from conference.domain.minutes import (
    TEXT_FIELDS,
    MeetingNotFound,
    MinutesError,
    MinutesResult,
    NotAllowed,
    date_line,
    finalize_and_mark,
    open_minutes,
    refresh_minutes,
    save_minutes,
)
from conference.domain.permissions import MINUTES_EDIT_ROLES
from conference.web.auth import CurrentUser, database, gettext, page, render_page
from conference.web.minutes_export import (
    document_text,
    docx_response,
    duration_text,
    recordings_root,
)

__all__ = ["setup_minutes"]

MAX_ROWS = 1000


def error_message(request: web.Request, error: MinutesError) -> str:
    _ = gettext(request)
    key = f"mn.error.{error.code}"
    text = _(key)
    if text == key:
        return error.message
    return text.format(message=error.message) if "{message}" in text else text


async def _load(request: web.Request, user: CurrentUser, meeting_id: str) -> MinutesResult:
    return await open_minutes(database(request), user, meeting_id, recordings_root(request))


def _missing(request: web.Request, user: CurrentUser, forbidden: bool = False) -> web.Response:
    reason = "forbidden" if forbidden else "missing"
    return render_page(
        request, "meeting_missing.html", user, status=403 if forbidden else 404, reason=reason
    )


async def _page(
    request: web.Request,
    user: CurrentUser,
    meeting_id: str,
    status: int = 200,
    error: str = "",
) -> web.StreamResponse:
    try:
        result = await _load(request, user, meeting_id)
    except MeetingNotFound:
        return _missing(request, user)
    except NotAllowed:
        return _missing(request, user, forbidden=True)
    return render_page(
        request,
        "minutes_edit.html",
        user,
        status,
        r=result,
        c=result.content,
        meeting_id=meeting_id,
        date_line=date_line(result.content),
        duration=duration_text,
        local=local_time,
        error=error,
        saved=request.query.get("saved", "") if status == 200 else "",
        marked=request.query.get("marked", ""),
        d=document_text(request.app),
    )


@page(MINUTES_EDIT_ROLES)
async def minutes_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _page(request, user, request.match_info["meeting_id"])


def _version(form: Mapping[str, Any]) -> int:
    try:
        return int(str(form.get("version", "")))
    except ValueError:
        return -1


def form_changes(form: Mapping[str, Any]) -> dict[str, Any]:
    """The edits of the minutes form: text fields and ``att_<field>_<i>`` attendance rows."""
    changes: dict[str, Any] = {
        name: str(form[name]) for name in TEXT_FIELDS if isinstance(form.get(name), str)
    }
    rows = []
    for index in range(MAX_ROWS):
        code = form.get(f"att_code_{index}")
        if not isinstance(code, str):
            break
        row = {"code": code}
        for field in ("joined", "left", "note"):
            value = form.get(f"att_{field}_{index}")
            if isinstance(value, str):
                row[field] = value
        rows.append(row)
    if rows:
        changes["attendance"] = rows
    return changes


async def _act(
    request: web.Request, user: CurrentUser, meeting_id: str, action: Callable[[], Any]
) -> web.StreamResponse | None:
    """Run ``action``; None when it worked, else the page with the reason."""
    try:
        await action()
    except MeetingNotFound:
        return _missing(request, user)
    except NotAllowed:
        _ = gettext(request)
        return await _page(request, user, meeting_id, 403, _("mn.error.final-role"))
    except MinutesError as exc:
        status = exc.status if exc.status in (404, 409, 422) else 400
        return await _page(request, user, meeting_id, status, error_message(request, exc))
    return None


@page(MINUTES_EDIT_ROLES)
async def minutes_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    form = await request.post()
    version, changes = _version(form), form_changes(form)

    async def save() -> None:
        await database(request).run(lambda s: save_minutes(s, user, meeting_id, version, changes))

    refused = await _act(request, user, meeting_id, save)
    if refused is not None:
        return refused
    raise web.HTTPSeeOther(f"/meetings/{meeting_id}/minutes?saved=saved")


@page(MINUTES_EDIT_ROLES)
async def refresh_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    version, root = _version(await request.post()), recordings_root(request)

    async def refresh() -> None:
        await database(request).run(lambda s: refresh_minutes(s, user, meeting_id, version, root))

    refused = await _act(request, user, meeting_id, refresh)
    if refused is not None:
        return refused
    raise web.HTTPSeeOther(f"/meetings/{meeting_id}/minutes?saved=refreshed")


@page(MINUTES_EDIT_ROLES)
async def final_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    form = await request.post()
    version = _version(form)
    marked: list[int] = []

    async def final() -> None:
        result = await finalize_and_mark(
            database(request), user, meeting_id, version, recordings_root(request)
        )
        marked.append(result.recordings_marked)

    refused = await _act(request, user, meeting_id, final)
    if refused is not None:
        return refused
    raise web.HTTPSeeOther(f"/meetings/{meeting_id}/minutes?saved=final&marked={marked[0]}")


@page(MINUTES_EDIT_ROLES)
async def print_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    try:
        result = await _load(request, user, meeting_id)
    except MeetingNotFound:
        return _missing(request, user)
    except NotAllowed:
        return _missing(request, user, forbidden=True)
    return render_page(
        request,
        "minutes_print.html",
        user,
        r=result,
        c=result.content,
        date_line=date_line(result.content),
        duration=duration_text,
        d=document_text(request.app),
    )


@page(MINUTES_EDIT_ROLES)
async def docx_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    try:
        result = await _load(request, user, request.match_info["meeting_id"])
    except MeetingNotFound:
        return _missing(request, user)
    except NotAllowed:
        return _missing(request, user, forbidden=True)
    return await docx_response(request, result)


def setup_minutes(app: web.Application) -> None:
    """Add the minutes pages (call after ``setup_meetings``)."""
    base = "/meetings/{meeting_id:\\d+}/minutes"
    app.router.add_get(base, minutes_get)
    app.router.add_post(base, minutes_post)
    app.router.add_post(base + "/final", final_post)
    app.router.add_post(base + "/refresh", refresh_post)
    app.router.add_get(base + "/print", print_get)
    app.router.add_get("/meetings/{meeting_id:\\d+}/minutes.docx", docx_get)
