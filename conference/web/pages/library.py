"""The secretaries' recordings library: list, recording page, media with seeking, audit.

Identifiers
-----------
A recording is named in URLs by an opaque id: the first 16 hex digits of the SHA-256 of
its manifest's path relative to the recordings directory
(``2026/11/<meeting>/<start>.manifest.json``).  An id is looked up in the listing of the
recordings directory (:func:`conference.recording.store.manifests`); nothing the user
sends is ever joined into a path.  A media file is named by its file name, which must be
one the manifest lists (or the composed MP4 of that recording) and must still resolve
inside the meeting's directory (a symlink leading out is refused).  Anything else is 404.

Who may see a recording (pages and API alike)
---------------------------------------------
* A recording of a scheduled meeting (manifest ``meeting`` = the integer id of a row of
  ``meetings``): the meeting's chair, and admins and secretaries whose unit scope
  (:func:`conference.web.auth.visible_unit_ids`: their unit and every unit below it)
  contains the meeting's unit.  Other chairs, operators and other districts are refused.
* An ad-hoc recording (no such meeting): admins with the whole server in scope (no unit).

Refusals do not tell whether a recording exists: a recording outside the user's scope is
the same 404 as an unknown id.  Roles other than admin, chair and secretary get 403; no
session: the login page (pages) or 401 (API).

Audit
-----
Every recording page view, API detail read and media request is appended to
``<data_dir>/audit.log`` (:mod:`conference.recording.audit`).  A player asks for media in
several range requests; each is logged, with ``first`` true only for the request starting
at byte 0, so counting ``first`` counts plays and downloads.

Composition
-----------
The composed MP4 (``<start>.mp4`` next to the manifest, or the ``output`` of its job) is
offered when :mod:`conference.recording.jobs` says the job is done, and, while a composition
again is queued or running or after it failed, the earlier MP4 (a composition writes
``.mp4.part`` and renames it over the earlier one only when finished).  The job's state and
progress are shown while it runs, live: the recording page asks ``GET
/recordings/{id}/composition`` (JSON: state, progress, whether an earlier MP4 is kept, the
composed MP4's URL and version, and the status as the page shows it) every 3 s while the job
is queued or running, and puts the finished MP4 in its player without a reload.  That
request is checked like the page (session, role, the recording in the user's units; 404
otherwise) and is not audited: it carries no media.  Admins and secretaries who see a
recording may queue its composition (``POST /recordings/{id}/compose``; again after a
failure or to redo it: ``jobs.retry``).

Pages: ``/recordings`` (filters ``from``, ``to``, ``unit``, ``q``, ``chair``),
``/recordings/{id}``, ``/recordings/{id}/files/{name}`` (``?download=1``: attachment),
``/recordings/{id}/composition`` (JSON, for the page's script), ``POST /recordings/{id}/compose``.  The JSON API is :mod:`conference.web.api.library`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from conference.appkeys import SETTINGS
from conference.recording import jobs
from conference.recording.library import (
    LIBRARY_ROLES,
    MAX_ROWS,
    SAFE_NAME,
    Filters,
    MediaFile,
    Recording,
    Row,
    attendance,
    clock_text,
    continuation,
    library,
    timeline,
)
from conference.web.api.library import log_access, visible_recording
from conference.web.auth import (
    CurrentUser,
    add_nav_link,
    database,
    page,
    render_page,
)
from conference.web.site import render_text

__all__ = ["setup_library"]


# --- pages --------------------------------------------------------------------------------------


def _missing(request: web.Request, user: CurrentUser) -> web.Response:
    return render_page(request, "library_missing.html", user, status=404)


@page(roles=LIBRARY_ROLES)
async def list_page(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    filters, bad = Filters.parse(request.query)
    root = request.app[SETTINGS].recordings_dir
    found = await database(request).run(lambda s: library(s, user, root, filters))
    compositions = await asyncio.get_running_loop().run_in_executor(
        None, lambda: {row.recording.id: row.recording.composition() for row in found.rows}
    )
    return render_page(
        request,
        "library_list.html",
        user,
        status=400 if bad else 200,
        rows=found.rows,
        units=found.units,
        filters=filters,
        bad=bad,
        compositions=compositions,
        duration=clock_text,
        limit=MAX_ROWS,
    )


#: the states of a composition the page follows live
UNDER_WAY = ("queued", "running")


def _version(media: MediaFile) -> str:
    """Which composed MP4 this is (its time and size): a composition again replaces the
    file under the same name, and the page's player must not mix the two."""
    try:
        stat = media.path.stat()
    except OSError:
        return ""
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _composed(recording: Recording, files: list[MediaFile]) -> dict[str, object] | None:
    media = next((f for f in files if f.kind == "composed"), None)
    if media is None:
        return None
    url = f"/recordings/{recording.id}/files/{media.name}"
    return {"name": media.name, "url": url, "size": media.size, "version": _version(media)}


@page(roles=LIBRARY_ROLES)
async def recording_page(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    found = await visible_recording(request, user, request.match_info["rid"])
    if found is None:
        return _missing(request, user)
    recording, info = found
    composition = recording.composition()
    files = recording.files(composition)
    log_access(request, user, recording, "view")
    state = composition["state"] if composition else "none"
    may_compose = user.role in COMPOSE_ROLES and state not in UNDER_WAY
    playable = [f for f in files if f.kind in ("composed", "video")] or files
    row = Row(recording, info)
    root = request.app[SETTINGS].recordings_dir
    earlier, later = await asyncio.to_thread(continuation, root, recording)
    continues = recording.manifest.get("continues")

    def link(other: Recording) -> dict[str, str]:
        start = Row(other, info).local_start
        return {"id": other.id, "start": start.strftime("%H:%M %d/%m/%Y") if start else ""}

    return render_page(
        request,
        "library_recording.html",
        user,
        recording=recording,
        row=row,
        meeting=info,
        composition=composition,
        files=files,
        playable=playable,
        timeline=timeline(recording),
        attendance=attendance(recording),
        duration=clock_text,
        may_compose=may_compose,
        composer=user.role in COMPOSE_ROLES,
        under_way=state in UNDER_WAY,
        composed=_composed(recording, files),
        continues=continues if isinstance(continues, dict) else None,
        earlier=link(earlier) if earlier else None,
        later=[link(other) for other in later],
    )


@page(roles=LIBRARY_ROLES)
async def composition_status(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    """The composition's state for the recording page's script (checked like the page)."""
    found = await visible_recording(request, user, request.match_info["rid"])
    if found is None:
        return web.json_response(
            {"error": "not-found", "message": "no such recording in your units"},
            status=404,
            headers=NO_STORE,
        )
    recording = found[0]

    def read() -> tuple[dict[str, Any] | None, list[MediaFile]]:
        composition = recording.composition()
        return composition, recording.files(composition)

    composition, files = await asyncio.get_running_loop().run_in_executor(None, read)
    body = {
        "state": composition["state"] if composition else "none",
        "progress": composition["progress"] if composition else None,
        "error": composition["error"] if composition else None,
        "previous": bool(composition and composition["previous"]),
        "composed": _composed(recording, files),
        # the status as the page shows it (library_macros.html), in the page's language
        "html": render_text(request, "library_composition.html", composition=composition),
    }
    return web.json_response(body, headers=NO_STORE)


NO_STORE = {"Cache-Control": "no-store"}


def _first_byte(range_header: str | None) -> bool:
    """Whether a request starts at byte 0 (no Range, or ``bytes=0-...``)."""
    if not range_header:
        return True
    return bool(re.fullmatch(r"\s*bytes\s*=\s*0\s*-.*", range_header))


@page(roles=LIBRARY_ROLES)
async def media(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    found = await visible_recording(request, user, request.match_info["rid"])
    name = request.match_info["name"]
    if found is None or not SAFE_NAME.fullmatch(name):
        return _missing(request, user)
    recording = found[0]
    wanted = next((f for f in recording.files(recording.composition()) if f.name == name), None)
    if wanted is None:
        return _missing(request, user)
    download = request.query.get("download") == "1"
    range_header = request.headers.get("Range")
    if request.method == "GET":
        log_access(
            request,
            user,
            recording,
            "download" if download else "play",
            file=name,
            range=range_header,
            first=_first_byte(range_header),
        )
    disposition = "attachment" if download else "inline"
    headers = {
        "Content-Type": wanted.content_type,
        "Content-Disposition": f'{disposition}; filename="{name}"',
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return web.FileResponse(wanted.path, headers=headers)


COMPOSE_ROLES = ("admin", "secretary")


@page(roles=COMPOSE_ROLES)
async def compose_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    """Queue the composition of a recording (again, after a failure): admins, secretaries."""
    found = await visible_recording(request, user, request.match_info["rid"])
    if found is None:
        return _missing(request, user)
    recording = found[0]
    status = recording.composition()
    if status is None or status["state"] in ("failed", "done"):
        action = jobs.retry if status is not None else jobs.enqueue
        await asyncio.get_running_loop().run_in_executor(None, action, recording.path)
        log_access(request, user, recording, "compose")
    raise web.HTTPSeeOther(f"/recordings/{recording.id}")


def setup_library(app: web.Application) -> None:
    """Add the library pages and its navigation link (call after ``setup_auth``)."""
    app.router.add_get("/recordings", list_page)
    app.router.add_get("/recordings/{rid}", recording_page)
    app.router.add_get("/recordings/{rid}/files/{name}", media)
    app.router.add_get("/recordings/{rid}/composition", composition_status)
    app.router.add_post("/recordings/{rid}/compose", compose_post)
    add_nav_link(app, "/recordings", "lib.nav", LIBRARY_ROLES)
