"""Sign-in for people and scripts: browser sessions, CSRF, login throttling, role checks.

Three kinds of token, one secret
--------------------------------
All three are HS256 JWTs signed with the server's secret (``settings.token_secret``), and
none is accepted where another is expected:

* **meeting tokens** (:mod:`conference.tokens`): ``meeting``, ``role``, ``grants``; no
  ``aud``.  Taken by the media endpoints only.
* **session cookies** (this module): ``aud`` = ``conference-session``; ``sub`` (user id),
  ``usr`` (username), ``pwf`` (password fingerprint), ``ver`` (the account's token
  version), ``iat``, ``exp``, ``jti``.  Cookie
  ``conference_session``: HttpOnly, SameSite=Lax, Secure under TLS, path ``/``, lifetime
  ``settings.session_lifetime`` (8 hours by default).
* **API tokens**: the same claims with ``aud`` = ``conference-api``, at most 24 hours
  (1 hour by default); sent as ``Authorization: Bearer``.  Made on the page
  ``/account/token`` (then also ``sid``: the jti of that browser session), by ``POST
  /api/v1/tokens`` (username + password, throttled like the login form) or by
  ``conference user token NAME``.

A token without the expected ``aud`` (PyJWT requires it) or without the meeting claims is
refused, so a session cookie is never a meeting token, an API token never a cookie.

Invalidation without a session table: every request re-reads the user (the one query it
costs), and refuses the token when the account is disabled, when ``pwf`` (an HMAC of the
password hash) no longer matches, or when ``ver`` differs from the account's
``token_version`` (a token without ``ver``, made before it existed, counts as 0).  The
version goes up when the account is disabled or enabled, when its password is changed or
reset, and on "sign out everywhere" (the button on ``/home``, the admin's action on
``/admin/users/NAME``, ``POST /api/v1/users/NAME/signout``, ``conference user signout
NAME``): every cookie and API token made before then is refused, so enabling an account
again revives nothing.

Sign-out (``POST /logout``) ends this browser's session: its ``jti`` is revoked, and with
it the API tokens made on ``/account/token`` in that session (their ``sid``).  API tokens
obtained with the password (``POST /api/v1/tokens``, the CLI) are credentials of their own,
for scripts: they last until they expire (24 hours at most) or until the account signs out
everywhere.  Revocations are checked in memory (`RevocationList`, no query) and kept in the
database (`conference.domain.authstate.RevocationStore`, loaded at start), so a copy of a
signed-out cookie stays refused after a restart; with ``redis_url`` the other nodes learn
them at once (conference/cluster/shared.py).

CSRF
----
Every state-changing form carries ``csrf_token``: an HMAC of the session's ``jti`` (a
synchronizer token tied to the session, so nothing is stored).  The login form, which has
no session yet, uses a double-submit cookie (``conference_prelogin``).  A missing or wrong
token gets the 403 page.  The JSON API is not cookie-authenticated, so it needs no CSRF.

Login throttling
----------------
:class:`LoginThrottle` counts failures per username (5) and per client address (20); at the
limit the key is locked for 1 minute, doubling with each further failure up to 15 minutes;
counts are forgotten after an hour without failure, and a success clears the username's
count.  An unknown username costs the same argon2 verification as a known one
(``accounts.check_credentials`` verifies a dummy hash).  The counts live in the database
(`conference.domain.authstate.LoginThrottle`): a lockout survives a restart and holds on
every node or worker sharing the database.

Using it from another module (pages)
------------------------------------
::

    from conference.web.auth import CurrentUser, page, render_page

    @page(roles=("chair", "secretary"))
    async def meeting_list(request: web.Request, user: CurrentUser) -> web.StreamResponse:
        rows = await database(request).run(lambda s: ...)
        return render_page(request, "meeting_list.html", user, rows=rows)

    app.router.add_get("/meetings", meeting_list)
    add_nav_link(app, "/meetings", "meetings.nav", roles=("chair", "secretary"))

:func:`page` loads the session (none: redirect to ``/login?next=PATH``), checks the role
(else the 403 page) and, for POST/PUT/PATCH/DELETE, the CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``).  Templates extending ``auth_layout.html`` get
the navigation bar; forms put ``<input type="hidden" name="csrf_token" value="{{
csrf_token }}">``.  :func:`visible_unit_ids` gives the unit scope of a user.  The JSON API
side is in :mod:`conference.web.api`.

Size: over 600 lines: the whole sign-in boundary (sessions, CSRF, throttling, API tokens,
the ``@page`` check) is read and reviewed together; the pages built on it are elsewhere.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web
from sqlalchemy.orm import Session

from conference.appkeys import DATABASE, REVOKED, SETTINGS
from conference.domain import accounts
from conference.domain.authstate import LoginThrottle, RevocationStore
from conference.domain.db import Database
from conference.domain.models import User
from conference.domain.permissions import CurrentUser, visible_unit_ids
from conference.domain.usertokens import (
    API_AUDIENCE,
    API_TOKEN_MAX_TTL,
    SESSION_AUDIENCE,
    create_api_token,
    create_session_token,
    fingerprint,
    signing_key,
    verify,
)
from conference.tokens import RevocationList
from conference.web.site import language, render, translator

__all__ = [
    "API_AUDIENCE",
    "CSRF_FIELD",
    "SESSION_AUDIENCE",
    "SESSION_COOKIE",
    "CurrentUser",
    "LoginThrottle",
    "NavLink",
    "add_nav_link",
    "create_api_token",
    "create_session_token",
    "database",
    "fingerprint",
    "gettext",
    "page",
    "render_page",
    "safe_next",
    "setup_auth",
    "user_from_token",
    "visible_unit_ids",
]

SESSION_COOKIE = "conference_session"
PRELOGIN_COOKIE = "conference_prelogin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_USER_KEY = "conference.user"

logger = logging.getLogger("conference.auth")

THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("login_throttle")
SESSIONS_REVOKED = web.AppKey("sessions_revoked", RevocationList)
#: the database behind SESSIONS_REVOKED and the meeting tokens' list (appkeys.REVOKED)
REVOCATIONS = web.AppKey("revocations", RevocationStore)
NAV_LINKS: web.AppKey[list[NavLink]] = web.AppKey("nav_links")


# --- CSRF -------------------------------------------------------------------------------


def _csrf_for(secret: str, session_id: str) -> str:
    digest = hmac.new(signing_key(secret), b"csrf|" + session_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


# --- the signed-in user -------------------------------------------------------------------


def database(request: web.Request) -> Database:
    return request.app[DATABASE]


def _secret(app: web.Application) -> str:
    return app[SETTINGS].token_secret or ""


async def user_from_token(
    app: web.Application, token: str | None, audience: str
) -> CurrentUser | None:
    """The active user a session or API token belongs to, or None.

    Checks signature, audience, expiry, sign-out revocation (of the token, or of the
    session an API token was made in), that the account still exists and is active, and
    that neither its password nor its token version changed since the token was made.
    """
    secret = _secret(app)
    claims = verify(secret, token or "", audience)
    revoked = app[SESSIONS_REVOKED]
    if claims is None or revoked.is_revoked(claims.token_id):
        return None
    if claims.session_id is not None and revoked.is_revoked(claims.session_id):
        return None
    via = "session" if audience == SESSION_AUDIENCE else "api"
    csrf = _csrf_for(secret, claims.token_id) if via == "session" else ""

    def load(session: Session) -> CurrentUser | None:
        user = session.get(User, claims.user_id)
        if user is None or not user.active or user.token_version != claims.version:
            return None
        if not hmac.compare_digest(fingerprint(secret, user.password_hash), claims.fingerprint):
            return None
        return CurrentUser.of(user, via, claims.token_id, claims.expires_at, csrf)

    return await app[DATABASE].run(load)


async def session_user(request: web.Request) -> CurrentUser | None:
    """The user of this browser's session cookie (cached on the request), or None."""
    if _USER_KEY not in request:
        cookie = request.cookies.get(SESSION_COOKIE)
        request[_USER_KEY] = (
            await user_from_token(request.app, cookie, SESSION_AUDIENCE) if cookie else None
        )
    user: CurrentUser | None = request[_USER_KEY]
    return user


# --- pages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NavLink:
    """A link in the navigation bar and on the home page, shown to some roles."""

    href: str
    label_key: str
    roles: tuple[str, ...] = ()


def add_nav_link(
    app: web.Application, href: str, label_key: str, roles: Iterable[str] = ()
) -> None:
    """Show a link to `href` (label from the catalogue) to users with one of `roles`."""
    app[NAV_LINKS].append(NavLink(href, label_key, tuple(roles)))


def gettext(request: web.Request) -> Callable[..., str]:
    """``_(key, **params)``: the catalogue string of the request's language, formatted."""
    strings = translator(request.app, language(request))

    def _(key: str, **params: Any) -> str:
        text = strings.get(key, key)
        return text.format(**params) if params else text

    return _


def render_page(
    request: web.Request,
    template: str,
    user: CurrentUser | None,
    status: int = 200,
    **context: Any,
) -> web.Response:
    """:func:`conference.web.site.render` with the user, its links and its CSRF token."""
    links = [
        link for link in request.app[NAV_LINKS] if user is not None and user.has_role(*link.roles)
    ]
    return render(
        request,
        template,
        status=status,
        user=user,
        nav_links=links,
        csrf_token=user.csrf_token if user else "",
        **context,
    )


def forbidden_page(request: web.Request, user: CurrentUser | None, reason: str) -> web.Response:
    """The 403 page; `reason` is ``role``, ``csrf`` or ``scope``."""
    key = {"csrf": "auth.forbidden.csrf", "scope": "auth.forbidden.scope"}.get(
        reason, "auth.forbidden.role"
    )
    return render_page(request, "auth_forbidden.html", user, status=403, message_key=key)


def safe_next(value: str | None, default: str = "/home") -> str:
    """`value` when it is a path on this site (``/...``), else `default`.

    Refuses absolute and scheme-relative URLs (``//evil``, ``/\\evil``), control characters
    and backslashes, so a crafted ``next`` cannot send the user to another site.
    """
    if not value or len(value) > 2000 or not value.startswith("/"):
        return default
    if value.startswith(("//", "/\\")) or "\\" in value:
        return default
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_redirect(request: web.Request) -> web.HTTPSeeOther:
    target = request.path_qs if request.method in _SAFE_METHODS else request.path
    return web.HTTPSeeOther(f"/login?next={quote(target, safe='/')}")


async def _csrf_ok(request: web.Request, user: CurrentUser) -> bool:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return bool(sent) and hmac.compare_digest(str(sent), user.csrf_token)


PageHandler = Callable[[web.Request, CurrentUser], Awaitable[web.StreamResponse]]


def page(roles: Iterable[str] = ()) -> Callable[[PageHandler], Callable[..., Any]]:
    """Decorate a page handler ``(request, user)``: session, role and CSRF checks.

    No valid session: redirect to ``/login?next=...``.  A role not in `roles` (empty: any
    role): the 403 page.  POST/PUT/PATCH/DELETE without the session's CSRF token: the 403
    page, and the handler is not called.  Multipart bodies are read by the CSRF check only
    when the header is absent; the handler can still call ``await request.post()``.
    """
    allowed = tuple(roles)

    def decorate(handler: PageHandler) -> Callable[..., Any]:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            user = await session_user(request)
            if user is None:
                raise login_redirect(request)
            if not user.has_role(*allowed):
                return forbidden_page(request, user, "role")
            if request.method not in _SAFE_METHODS and not await _csrf_ok(request, user):
                return forbidden_page(request, user, "csrf")
            return await handler(request, user)

        return wrapper

    return decorate


# --- throttling (conference.domain.authstate.LoginThrottle) --------------------------


def client_address(request: web.Request) -> str:
    """The peer address (a reverse proxy's X-Forwarded-For is not trusted)."""
    return request.remote or "unknown"


@dataclass(frozen=True)
class SignIn:
    """The outcome of a password check: the user, or why not (and how long to wait)."""

    user: User | None
    wait: float = 0.0


async def check_password(request: web.Request, username: str, password: str) -> SignIn:
    """Throttled ``accounts.check_credentials``: for the login form and ``POST /api/v1/tokens``."""
    throttle = request.app[THROTTLE]
    address = client_address(request)

    def attempt(session: Session) -> SignIn:  # the lock, the password, the count: one call
        wait = throttle.wait(session, username, address)
        if wait > 0:
            return SignIn(None, wait)
        user = accounts.check_credentials(session, username, password)
        if user is None:
            lock = throttle.failed(session, username, address)
            if lock > 0:
                logger.warning(
                    "sign-in locked for %d s: username %r from %s", lock, username[:64], address
                )
            return SignIn(None, lock)
        throttle.succeeded(session, username)
        _ = user.unit, user.point  # loaded while the session is open
        return SignIn(user)

    return await request.app[DATABASE].run(attempt)


def whole_minutes(seconds: float) -> int:
    """A wait in minutes for a message, rounded up (at least 1)."""
    return max(1, math.ceil(seconds / 60))


# --- handlers -----------------------------------------------------------------------------


def _set_session_cookie(request: web.Request, response: web.StreamResponse, user: User) -> None:
    lifetime = request.app[SETTINGS].session_lifetime
    token = create_session_token(_secret(request.app), user, timedelta(seconds=lifetime))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=lifetime,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.secure,
    )


def _login_form(
    request: web.Request,
    status: int = 200,
    *,
    username: str = "",
    error: str | None = None,
    errors: dict[str, str] | None = None,
    next_path: str | None = None,
    wait: float = 0.0,
) -> web.Response:
    prelogin = request.cookies.get(PRELOGIN_COOKIE) or secrets.token_urlsafe(24)
    if next_path is None:
        next_path = request.query.get("next")
    response = render_page(
        request,
        "auth_login.html",
        None,
        status=status,
        username=username,
        next=safe_next(next_path, ""),
        prelogin=prelogin,
        error=error,
        errors=errors or {},
    )
    if wait > 0:
        response.headers["Retry-After"] = str(math.ceil(wait))
    response.set_cookie(
        PRELOGIN_COOKIE,
        prelogin,
        path="/login",
        httponly=True,
        samesite="Lax",
        secure=request.secure,
    )
    return response


async def login_get(request: web.Request) -> web.StreamResponse:
    if await session_user(request) is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return _login_form(request)


async def login_post(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    form = await request.post()
    cookie = request.cookies.get(PRELOGIN_COOKIE, "")
    sent = form.get(CSRF_FIELD)
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(sent, cookie):
        return forbidden_page(request, None, "csrf")
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    next_path = str(form.get("next") or "")
    errors = {}
    if not username:
        errors["username"] = _("auth.err.username")
    if not password:
        errors["password"] = _("auth.err.password")
    if errors:
        return _login_form(request, 400, username=username, errors=errors, next_path=next_path)
    result = await check_password(request, username, password)
    if result.user is None:
        if result.wait > 0:
            message = _("auth.throttled", minutes=whole_minutes(result.wait))
            return _login_form(
                request,
                429,
                username=username,
                error=message,
                next_path=next_path,
                wait=result.wait,
            )
        wrong = _("auth.err.wrong")
        return _login_form(request, 401, username=username, error=wrong, next_path=next_path)
    response = web.HTTPSeeOther(safe_next(next_path))
    _set_session_cookie(request, response, result.user)
    response.del_cookie(PRELOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """Sign this browser out: its session and the API tokens made in it end (stored)."""
    user = await session_user(request)
    if user is not None:
        if not await _csrf_ok(request, user):
            return forbidden_page(request, user, "csrf")
        # an API token made on /account/token in this session (its ``sid``) may outlive
        # the cookie: the session's id stays revoked as long as such a token could last
        until = max(user.expires_at, datetime.now(UTC) + API_TOKEN_MAX_TTL)
        request.app[SESSIONS_REVOKED].revoke(user.token_id, until)
        await request.app[REVOCATIONS].settled()
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@page()
async def sign_out_everywhere(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    """End every session and API token of this account, this browser's included."""

    def end(session: Session) -> None:
        the_user = session.get(User, user.id)
        if the_user is not None:
            accounts.end_sessions(the_user)

    await database(request).run(end)
    logger.info("user %s signed out everywhere", user.username)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@page()
async def home(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return render_page(request, "auth_home.html", user)


@page()
async def password_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return render_page(request, "auth_password.html", user, errors={}, done=False)


@page()
async def password_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    _ = gettext(request)
    form = await request.post()
    current = str(form.get("current") or "")
    new = str(form.get("new") or "")
    repeat = str(form.get("repeat") or "")
    errors: dict[str, str] = {}
    if not current:
        errors["current"] = _("auth.err.current_empty")
    if len(new) < accounts.MIN_PASSWORD:
        errors["new"] = _("auth.err.new_short", n=accounts.MIN_PASSWORD)
    elif len(new) > accounts.MAX_PASSWORD:
        errors["new"] = _("auth.err.new_long", n=accounts.MAX_PASSWORD)
    elif new == current:
        errors["new"] = _("auth.err.new_same")
    if new != repeat:
        errors["repeat"] = _("auth.err.repeat")
    if errors:
        return render_page(request, "auth_password.html", user, 400, errors=errors, done=False)
    result = await check_password(request, user.username, current)
    if result.user is None:
        errors["current"] = (
            _("auth.throttled", minutes=whole_minutes(result.wait))
            if result.wait > 0
            else _("auth.err.current_wrong")
        )
        status = 429 if result.wait > 0 else 400
        return render_page(request, "auth_password.html", user, status, errors=errors, done=False)

    def change(session: Session) -> User:
        changed = accounts.set_password(session, user.username, new)
        _ = changed.unit, changed.point
        return changed

    changed = await database(request).run(change)
    # Every other session (and API token) of this user ends with the old password hash;
    # this browser gets a new cookie.
    response = web.HTTPSeeOther("/account/password?done=1")
    _set_session_cookie(request, response, changed)
    return response


@page()
async def password_done(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return render_page(request, "auth_password.html", user, errors={}, done=True)


async def password_page(request: web.Request) -> web.StreamResponse:
    if request.query.get("done"):
        return await password_done(request)
    return await password_get(request)


@page()
async def token_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return render_page(request, "auth_token.html", user, token=None, hours=1)


@page()
async def token_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    form = await request.post()
    try:
        hours = int(str(form.get("hours") or "1"))
    except ValueError:
        hours = 1
    hours = min(24, max(1, hours))

    def make(session: Session) -> str:
        the_user = session.get(User, user.id)
        assert the_user is not None
        ttl = timedelta(hours=hours)  # signing this browser out ends the token too
        return create_api_token(_secret(request.app), the_user, ttl, session_id=user.token_id)

    token = await database(request).run(make)
    return render_page(request, "auth_token.html", user, token=token, hours=hours)


# --- setup --------------------------------------------------------------------------------


async def _load_revocations(app: web.Application) -> None:
    """At start: the stored revocations into the lists, and each new one into the store.

    Attached here, not in `setup_auth`, so that it comes after whatever `create_app` hooked
    onto the lists (a cluster node tells the other nodes first).
    """
    store = app[REVOCATIONS]
    store.attach("session", app[SESSIONS_REVOKED])
    if REVOKED in app:  # meeting tokens of points the chair removed
        store.attach("meeting", app[REVOKED])
    count = await store.load()
    if count:
        logger.info("%d revoked tokens still in force", count)


async def _store_revocations(app: web.Application) -> None:
    await app[REVOCATIONS].settled()


def setup_auth(app: web.Application) -> None:
    """Open the database, add the sign-in routes (call after ``setup_web``)."""
    app.on_cleanup.append(_store_revocations)  # before the database closes
    if DATABASE not in app:
        app[DATABASE] = Database.from_settings(app[SETTINGS])

        async def close(app: web.Application) -> None:
            app[DATABASE].close()

        app.on_cleanup.append(close)
    app[THROTTLE] = LoginThrottle()
    app[SESSIONS_REVOKED] = RevocationList()
    app[REVOCATIONS] = RevocationStore(app[DATABASE])
    app.on_startup.append(_load_revocations)
    app[NAV_LINKS] = [
        NavLink("/home", "auth.nav.home"),
        NavLink("/account/password", "auth.nav.password"),
        # scripts' tokens are for the district's staff; a commune's operator has no use for
        # them in its menu (the page itself stays open to it)
        NavLink("/account/token", "auth.nav.token", ("admin", "chair", "secretary")),
    ]
    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout)
    app.router.add_post("/account/signout", sign_out_everywhere)
    app.router.add_get("/home", home)
    app.router.add_get("/account/password", password_page)
    app.router.add_post("/account/password", password_post)
    app.router.add_get("/account/token", token_get)
    app.router.add_post("/account/token", token_post)
