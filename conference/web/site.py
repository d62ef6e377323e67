"""The browser pages: landing page, invitation links and the meeting room.

Where the files are
-------------------
Templates and static files live in the top-level ``web/`` folder (no build step).
:func:`conference.core.i18n.web_dir` looks for them, in order:

1. ``$CONFERENCE_WEB_DIR`` when set (an operator's customised copy);
2. ``web/`` next to the ``conference`` package: a source checkout or an editable
   install (``pip install -e .``);
3. ``<sys.prefix>/share/conference/web``: where ``pip install .`` puts them, through
   ``[tool.setuptools.data-files]`` in pyproject.toml.  Data files (rather than package
   data under ``conference/``) keep the project layout of ``web/`` at the top level
   without a symlink or a copy step.

Invitation links
----------------
An invitation link is ``/m/{meeting}?token=JWT``.  The server verifies the token
(:func:`conference.realtime.access.authenticate`), stores it in an HttpOnly, SameSite=Strict
cookie scoped to ``/m/{meeting}`` (Secure under TLS), and redirects to the same URL
without the token, so that the token leaves the address bar, the history and
screenshots.  The page itself never sees the cookie: its script asks the same-origin
endpoint ``GET /m/{meeting}/session`` for the token when it joins the WebSocket.
That endpoint (rather than embedding the token in the HTML) keeps the token out of
the page source and any cache, and lets the page fetch it again to rejoin; it
answers only same-origin requests carrying the Strict cookie (no CORS headers).
A bad, expired or revoked link gets an HTML error page (401/403), in Vietnamese by
default.

The session also carries ``profile``, the link profile the page starts with: for a point
of a scheduled meeting (a point's identity, ``pt:CODE``), its configured
bandwidth (``points.bandwidth_profile``: ``low`` -> ``low``, ``standard`` and ``high`` ->
``high``); ``high`` otherwise (ad-hoc rooms, chairs, unknown codes, no database).

Language
--------
``web/static/i18n/*.json`` (one file per area, merged) is the one catalogue (key -> {vi, en}).  Templates call
``t(key)``; the page embeds the table of its language for ``web/static/i18n.js``.
The language is ``?lang=`` (remembered in a cookie), else the ``lang`` cookie, else
Vietnamese, whatever the browser's language (Accept-Language is not asked).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from conference.appkeys import DATABASE
from conference.core.i18n import load_catalogue, web_dir
from conference.core.identity import Identity
from conference.domain.db import DatabaseError
from conference.domain.lifecycle import scheduled_id
from conference.domain.models import Point
from conference.realtime.access import AccessError, authenticate

logger = logging.getLogger(__name__)

LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"
TOKEN_COOKIE = "conference_token"
LANG_COOKIE = "lang"

JINJA: web.AppKey[jinja2.Environment] = web.AppKey("jinja")
CATALOGUE: web.AppKey[dict[str, dict[str, str]]] = web.AppKey("catalogue")

_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

#: A point's configured bandwidth (points.bandwidth_profile) -> the page's link profile.
PAGE_PROFILES = {"low": "low", "standard": "high", "high": "high"}
DEFAULT_PROFILE = "high"


def setup_web(app: web.Application) -> None:
    """Register the page routes and static files on ``app``."""
    root = web_dir()
    app[CATALOGUE] = load_catalogue(root)
    app[JINJA] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app.router.add_get("/", landing)
    app.router.add_get("/m/{meeting_id}", meeting_page)
    app.router.add_get("/m/{meeting_id}/session", meeting_session)
    app.router.add_static("/static/", root / "static", append_version=False)


def language(request: web.Request) -> str:
    """``?lang=``, else the remembered choice, else Vietnamese: never the browser's own
    language (an office PC with an English Windows would get the whole interface in
    English: Vietnamese is the default, English only by choice)."""
    asked = request.query.get("lang") or request.cookies.get(LANG_COOKIE)
    return asked if asked in LANGUAGES else DEFAULT_LANGUAGE


def translator(app: web.Application, lang: str) -> dict[str, str]:
    """The catalogue of one language (missing entries fall back to Vietnamese)."""
    return {k: v.get(lang) or v[DEFAULT_LANGUAGE] for k, v in app[CATALOGUE].items()}


def render_text(request: web.Request, template: str, **context: Any) -> str:
    """``template`` in the request's language: a page, or a fragment a page's script asks for."""
    lang = language(request)
    strings = translator(request.app, lang)

    def t(key: str) -> str:
        return strings.get(key, key)

    other = "en" if lang == "vi" else "vi"
    return (
        request.app[JINJA]
        .get_template(template)
        .render(
            t=t,
            lang=lang,
            other_lang=other,
            lang_url=str(request.rel_url.update_query(lang=other)),
            strings_json=json.dumps(strings, ensure_ascii=False).replace("</", "<\\/"),
            **context,
        )
    )


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    lang = language(request)
    html = render_text(request, template, **context)
    response = web.Response(
        text=html, status=status, content_type="text/html", charset="utf-8", headers=_NO_STORE
    )
    if request.query.get("lang") in LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="Lax", path="/")
    return response


async def landing(request: web.Request) -> web.Response:
    return render(request, "landing.html")


_ERROR_KEYS = {
    "wrong-meeting": "error.wrongmeeting",
    "revoked": "error.revoked",
    "not-yet-valid": "error.notyet",
    "unauthorized": "error.nolink",
    "unavailable": "error.unavailable",
}


def error_page(request: web.Request, exc: AccessError) -> web.Response:
    key = _ERROR_KEYS.get(exc.code, "error.badlink")
    return render(request, "error.html", status=exc.status, message_key=key, code=exc.code)


async def meeting_page(request: web.Request) -> web.Response:
    meeting_id = request.match_info["meeting_id"]
    token = request.query.get("token")
    if token is not None:
        try:
            who = await authenticate(request.app, token, meeting_id)
        except AccessError as exc:
            return error_page(request, exc)
        query = {k: v for k, v in request.query.items() if k != "token"}
        location = request.rel_url.with_query(query)
        response = web.HTTPSeeOther(location=str(location), headers=_NO_STORE)
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            path=f"/m/{meeting_id}",
            max_age=max(60, int((who.expires_at or 0) - time.time())),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        raise response
    # A cookie is not sent on a navigation from another site (SameSite=Strict): the
    # page loads regardless and its script asks /session, a same-origin request.
    cookie = request.cookies.get(TOKEN_COOKIE)
    if cookie:
        try:
            await authenticate(request.app, cookie, meeting_id)
        except AccessError as exc:
            return error_page(request, exc)
    return render(request, "room.html", meeting_id=meeting_id)


async def meeting_session(request: web.Request) -> web.Response:
    """The token of this browser's invitation, for the WebSocket join."""
    meeting_id = request.match_info["meeting_id"]
    token = request.cookies.get(TOKEN_COOKIE)
    try:
        who = await authenticate(request.app, token, meeting_id)
    except AccessError as exc:
        return web.json_response(
            {"error": exc.code, "message": exc.message}, status=exc.status, headers=_NO_STORE
        )
    return web.json_response(
        {
            "token": token,
            "meeting": meeting_id,
            "identity": who.identity,
            "name": who.name,
            "role": who.role,
            "expires": who.expires_at,
            "profile": await page_profile(request.app, meeting_id, who),
        },
        headers=_NO_STORE,
    )


async def page_profile(app: web.Application, meeting_id: str, who: Identity) -> str:
    """The link profile the room page starts with (see the module docstring)."""
    if who.kind != "point" or who.role not in ("point", "viewer") or not scheduled_id(meeting_id):
        return DEFAULT_PROFILE
    if DATABASE not in app:
        return DEFAULT_PROFILE

    def load(session: Session) -> str | None:
        return session.scalar(select(Point.bandwidth_profile).where(Point.code == who.subject))

    try:
        bandwidth = await app[DATABASE].run(load)
    except (DatabaseError, SQLAlchemyError) as exc:
        logger.warning("bandwidth profile of %s: %s", who.identity, exc)
        return DEFAULT_PROFILE
    return PAGE_PROFILES.get(bandwidth or "", DEFAULT_PROFILE)
