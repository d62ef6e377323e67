"""Sign-in, sessions, CSRF, throttling and password change against the real server.

Each test starts ``conference serve`` (tests/conftest.py) on SQLite, and on PostgreSQL where
storage matters, and talks to it with aiohttp (a cookie jar per browser).  Users are made
with the services (conference.domain) on the server's own database.  The helpers here
(`site`, `Site`, `Browser`) are reused by tests/test_admin_pages.py and tests/test_api.py.
"""

from __future__ import annotations

import dataclasses
import html as html_module
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jwt
import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from yarl import URL as URL_

from conference.domain import accounts, organisation
from conference.domain.db import Database
from conference.domain.models import Unit, User
from conference.web.auth import (
    SESSION_COOKIE,
    create_api_token,
    create_session_token,
    fingerprint,
    safe_next,
)

from .conftest import SECRET, ServerProcess, check_clean_exit, start_server
from .domain.conftest import _postgres_schema_url

T = TypeVar("T")
CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


@dataclass
class Site:
    """A running server and its database."""

    server: ServerProcess
    database: Database
    admin_password: str
    #: where the server runs and with which environment (for `restart`)
    home: Path | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        """Stop the server cleanly and start it again on the same data (a new port)."""
        assert self.home is not None
        check_clean_exit(self.server)
        self.server = start_server(self.home, env=self.env)

    def db(self, function: Callable[[Session], T]) -> T:
        return self.database.call(function)

    def add_unit(
        self, code: str, name: str, kind: str = "district", parent: str | None = None
    ) -> None:
        self.db(
            lambda s: organisation.create_unit(s, code=code, name=name, kind=kind, parent=parent)
        )

    def add_user(self, username: str, role: str, password: str = "mat-khau-1", **kw: Any) -> None:
        """Add a user; a non-admin without ``unit`` gets the district ``huyen-mac-dinh``."""
        if role != "admin" and "unit" not in kw and "point" not in kw:
            if (
                self.db(lambda s: s.scalar(select(Unit.id).where(Unit.code == "huyen-mac-dinh")))
                is None
            ):
                self.add_unit("huyen-mac-dinh", "Huyện Mặc Định")
            kw["unit"] = "huyen-mac-dinh"
        self.db(
            lambda s: accounts.create_user(s, username=username, password=password, role=role, **kw)
        )

    def user(self, username: str) -> User:
        return self.db(lambda s: accounts.get_user(s, username))

    def browser(self) -> Browser:
        return Browser(self)


class Browser:
    """One browser: an aiohttp session with its own cookie jar."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kw: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(self.site.url + path, allow_redirects=False, **kw) as r:
            return r.status, await r.text(), r

    async def csrf(self, path: str) -> str:
        status, html, _ = await self.get(path)
        assert status == 200, (status, html[-500:])
        match = CSRF.search(html)
        assert match, html[-1000:]
        return match.group(1)

    async def post(
        self, path: str, data: Any, **kw: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.post(
            self.site.url + path, data=data, allow_redirects=False, **kw
        ) as r:
            return r.status, await r.text(), r

    async def login(
        self, username: str, password: str, next: str = ""
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        token = await self.csrf("/login")
        form = {"csrf_token": token, "username": username, "password": password, "next": next}
        return await self.post("/login", form)

    async def signed_in(self, username: str, password: str = "mat-khau-1") -> Browser:
        status, html, response = await self.login(username, password)
        assert status == 303, (status, html[-800:])
        return self

    def session_cookie(self) -> str:
        for cookie in self.http.cookie_jar:
            if cookie.key == SESSION_COOKIE:
                return cookie.value
        raise AssertionError("no session cookie")


def _start(tmp: Path, env: dict[str, str], url: URL | str) -> Iterator[Site]:
    server = start_server(tmp, env=env)
    match = re.search(r"with the password (\S+)", server.log())
    assert match, server.log()
    database = Database(url)
    site = Site(server, database, match.group(1), tmp, env)
    try:
        yield site
    finally:
        database.close()
        check_clean_exit(site.server)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A server on SQLite."""
    yield from _start(
        tmp_path, {}, URL.create("sqlite", database=str(tmp_path / "data" / "conference.db"))
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def any_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """A server on SQLite, then on PostgreSQL."""
    if request.param == "sqlite":
        url: URL = URL.create("sqlite", database=str(tmp_path / "data" / "conference.db"))
        yield from _start(tmp_path, {}, url)
    else:
        for url in _postgres_schema_url():
            env = {"CONFERENCE_DATABASE_URL": url.render_as_string(hide_password=False)}
            yield from _start(tmp_path, env, url)


@pytest.fixture
async def browsers(request: pytest.FixtureRequest) -> AsyncIterator[list[Browser]]:
    """Browsers made with ``site.browser()`` are added here and closed at the end."""
    made: list[Browser] = []
    yield made
    for browser in made:
        await browser.close()


def field_error(html: str, name: str) -> str | None:
    match = re.search(rf'class="field-error" data-field="{name}">([^<]*)<', html)
    return html_module.unescape(match.group(1)) if match else None


# --- tests --------------------------------------------------------------------------------


async def test_login_page_languages_and_cookie_flags(site: Site, browsers: list[Browser]) -> None:
    browser = site.browser()
    browsers.append(browser)
    status, html, response = await browser.get("/login")
    assert status == 200 and '<html lang="vi">' in html and "Tên đăng nhập" in html
    assert "Đăng nhập" in html
    status, html, _ = await browser.get("/login?lang=en")
    assert status == 200 and '<html lang="en">' in html and "Username" in html
    # empty fields: field messages, in the chosen language (Vietnamese by default)
    status, html, _ = await browser.post(
        "/login?lang=vi", {"csrf_token": await browser.csrf("/login?lang=vi"), "username": ""}
    )
    assert status == 400
    assert field_error(html, "username") == "Vui lòng nhập tên đăng nhập."
    assert field_error(html, "password") == "Vui lòng nhập mật khẩu."

    status, html, response = await browser.login("admin", site.admin_password)
    assert status == 303 and response.headers["Location"] == "/home"
    cookie = next(c for c in response.headers.getall("Set-Cookie") if SESSION_COOKIE in c)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Max-Age=28800" in cookie and "Secure" not in cookie  # plain HTTP here
    status, html, _ = await browser.get("/home")
    assert status == 200 and "Quản trị hệ thống" in html and 'data-role="admin"' in html
    # signed in, /login goes home
    status, _, response = await browser.get("/login")
    assert status == 303 and response.headers["Location"] == "/home"


async def test_session_lifecycle(any_site: Site, browsers: list[Browser]) -> None:
    """Login ok/bad, logout invalidates, password change ends the other sessions."""
    site = any_site
    site.db(lambda s: organisation.create_unit(s, code="huyen-a", name="Huyện A", kind="district"))
    site.add_user("thuky-a", "secretary", unit="huyen-a", display_name="Lò Thị Mai")
    first, second, third = site.browser(), site.browser(), site.browser()
    browsers.extend([first, second, third])

    status, html, _ = await first.login("thuky-a", "sai-mat-khau")
    assert status == 401 and "Tên đăng nhập hoặc mật khẩu không đúng." in html
    status, html, _ = await first.login("khong-ai", "sai-mat-khau")  # unknown user: same answer
    assert status == 401 and "Tên đăng nhập hoặc mật khẩu không đúng." in html
    await first.signed_in("thuky-a")
    await second.signed_in("THUKY-A ")  # usernames are case-insensitive
    status, html, _ = await first.get("/home")
    assert status == 200 and "Lò Thị Mai" in html and "Huyện A" in html
    assert site.user("thuky-a").last_login_at is not None

    # logout: the same cookie, replayed, no longer works
    old_cookie = first.session_cookie()
    token = await first.csrf("/home")
    status, _, response = await first.post("/logout", {"csrf_token": token})
    assert status == 303 and response.headers["Location"] == "/login"
    status, _, response = await first.get("/home")
    assert status == 303 and response.headers["Location"] == "/login?next=/home"
    status, _, response = await third.get(
        "/home", headers={"Cookie": f"{SESSION_COOKIE}={old_cookie}"}
    )
    assert status == 303 and response.headers["Location"].startswith("/login")
    status, _, _ = await second.get("/home")  # another session of the same user goes on
    assert status == 200

    # password change: field messages first
    await first.signed_in("thuky-a")
    token = await first.csrf("/account/password")
    cases = [
        (
            {"current": "", "new": "ngan", "repeat": "ngan"},
            "current",
            "Vui lòng nhập mật khẩu hiện tại.",
        ),
        (
            {"current": "mat-khau-1", "new": "ngan", "repeat": "ngan"},
            "new",
            "Mật khẩu mới phải có ít nhất 8 ký tự.",
        ),
        (
            {"current": "mat-khau-1", "new": "mat-khau-2", "repeat": "mat-khau-3"},
            "repeat",
            "Hai lần nhập mật khẩu mới không khớp nhau.",
        ),
        (
            {"current": "mat-khau-1", "new": "mat-khau-1", "repeat": "mat-khau-1"},
            "new",
            "Mật khẩu mới phải khác mật khẩu hiện tại.",
        ),
        (
            {"current": "sai-roi-nhe", "new": "mat-khau-2", "repeat": "mat-khau-2"},
            "current",
            "Mật khẩu hiện tại không đúng.",
        ),
    ]
    for form, field, message in cases:
        status, html, _ = await first.post("/account/password", {"csrf_token": token, **form})
        assert status == 400, (form, html[-500:])
        assert field_error(html, field) == message, (form, html[-1500:])
    assert accounts.verify_password(site.user("thuky-a").password_hash, "mat-khau-1")

    form = {
        "csrf_token": token,
        "current": "mat-khau-1",
        "new": "mật-khẩu-mới",
        "repeat": "mật-khẩu-mới",
    }
    status, _, response = await first.post("/account/password", form)
    assert status == 303
    status, html, _ = await first.get("/account/password?done=1")
    assert status == 200 and 'id="password-done"' in html  # this browser stays signed in
    status, _, response = await second.get("/home")  # the other session is over
    assert status == 303 and response.headers["Location"] == "/login?next=/home"
    status, _, _ = await third.login("thuky-a", "mat-khau-1")
    assert status == 401
    await third.signed_in("thuky-a", "mật-khẩu-mới")


async def test_login_throttling(site: Site, browsers: list[Browser]) -> None:
    site.add_user("chutri", "chair", display_name="Chủ trì")
    site.add_user("thuky", "secretary")
    browser = site.browser()
    browsers.append(browser)
    for attempt in range(1, 5):
        status, html, _ = await browser.login("chutri", f"doan-sai-{attempt}")
        assert status == 401, attempt
    status, html, response = await browser.login("chutri", "doan-sai-5")
    assert status == 429 and "Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau 1 phút." in html
    assert 55 <= int(response.headers["Retry-After"]) <= 60
    # locked: even the right password is refused, without being checked
    status, html, _ = await browser.login("chutri", "mat-khau-1")
    assert status == 429 and "thử lại sau" in html
    status, html, _ = await browser.login("chutri", "mat-khau-1", next="/?lang=en")
    assert status == 429
    # another account from the same address is not locked by these five failures
    other = site.browser()
    browsers.append(other)
    await other.signed_in("thuky")
    # an unknown username is throttled the same way
    for _attempt in range(5):
        status, _, _ = await browser.login("khong-ton-tai", "x" * 8)
    assert status == 429


async def test_csrf_refused(site: Site, browsers: list[Browser]) -> None:
    site.add_user("thuky", "secretary", display_name="Thư ký")
    browser = site.browser()
    browsers.append(browser)
    # login form without its double-submit cookie / with a wrong token
    stranger = site.browser()
    browsers.append(stranger)
    form = {"csrf_token": "abc", "username": "thuky", "password": "mat-khau-1"}
    status, html, _ = await stranger.post("/login", form)
    assert status == 403 and 'data-code="forbidden"' in html
    await stranger.csrf("/login")  # now it has the cookie, but the token is still wrong
    status, html, _ = await stranger.post("/login", form)
    assert status == 403 and "Biểu mẫu đã hết hạn" in html

    await browser.signed_in("thuky")
    good = await browser.csrf("/account/password")
    change = {"current": "mat-khau-1", "new": "mat-khau-2", "repeat": "mat-khau-2"}
    status, html, _ = await browser.post("/account/password", change)
    assert status == 403 and "Biểu mẫu đã hết hạn" in html
    status, html, _ = await browser.post("/account/password", {**change, "csrf_token": "x" + good})
    assert status == 403
    status, _, _ = await browser.post("/logout", {"csrf_token": "wrong"})
    assert status == 403
    assert accounts.verify_password(site.user("thuky").password_hash, "mat-khau-1")
    status, _, _ = await browser.get("/home")  # neither the password nor the session changed
    assert status == 200
    # the token of one session is no good for another session of the same user
    other = await site.browser().signed_in("thuky")
    browsers.append(other)
    status, _, _ = await other.post("/account/password", {**change, "csrf_token": good})
    assert status == 403
    # the header works too (for scripts on the pages)
    status, _, _ = await browser.post("/account/password", change, headers={"X-CSRF-Token": good})
    assert status == 303


async def test_next_and_redirects(site: Site, browsers: list[Browser]) -> None:
    browser = site.browser()
    browsers.append(browser)
    status, _, response = await browser.get("/account/password?x=1")
    assert status == 303
    location = URL_(response.headers["Location"])
    assert location.path == "/login" and location.query["next"] == "/account/password?x=1"
    status, _, response = await browser.login("admin", site.admin_password, next="//evil.example/x")
    assert status == 303 and response.headers["Location"] == "/home"
    browser2 = site.browser()
    browsers.append(browser2)
    status, _, response = await browser2.login(
        "admin", site.admin_password, next="/account/password?x=1"
    )
    assert status == 303 and response.headers["Location"] == "/account/password?x=1"
    for bad in ("https://evil.example/", "//evil", "/\\evil", "javascript:alert(1)", "/a\r\nb", ""):
        assert safe_next(bad) == "/home", bad
    assert safe_next("/home?lang=en") == "/home?lang=en"


async def test_expired_disabled_and_foreign_tokens(site: Site, browsers: list[Browser]) -> None:
    site.add_user("thuky", "secretary", display_name="Thư ký")
    user = site.user("thuky")
    browser = site.browser()
    browsers.append(browser)

    async def home_with(cookie: str) -> int:
        status, _, _ = await browser.get("/home", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        return status

    fresh = create_session_token(SECRET, user, timedelta(hours=1))
    assert await home_with(fresh) == 200
    past = datetime.now(UTC) - timedelta(hours=9)
    assert await home_with(create_session_token(SECRET, user, timedelta(hours=8), now=past)) == 303
    forged = create_session_token("another-secret-" + "y" * 40, user, timedelta(hours=1))
    assert await home_with(forged) == 303
    # an API token or a meeting token is not a session cookie
    assert await home_with(create_api_token(SECRET, user)) == 303
    assert await home_with(site.server.token(meeting="m1", identity=str(user.id))) == 303
    # and a session cookie is not a meeting token
    status, html, _ = await browser.get(f"/m/m1?token={fresh}")
    assert status == 401 and 'data-code="invalid-claims"' in html

    # a disabled account: its session ends and it cannot sign in
    def disable(session: Session) -> None:
        accounts.get_user(session, "thuky").active = False

    site.db(disable)
    assert await home_with(fresh) == 303
    status, html, _ = await browser.login("thuky", "mat-khau-1")
    assert status == 401 and "Tên đăng nhập hoặc mật khẩu không đúng." in html


async def test_secure_cookie_under_tls(tmp_path: Path) -> None:
    """Secure under TLS; the lifetime comes from the setting."""
    server = start_server(
        tmp_path, "--tls", "self-signed", env={"CONFERENCE_SESSION_LIFETIME": "120"}
    )
    try:
        url = f"https://127.0.0.1:{server.port}"
        password = re.search(r"with the password (\S+)", server.log())
        assert password
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=False),
        ) as http:
            async with http.get(url + "/login") as response:
                match = CSRF.search(await response.text())
                assert match
            form = {
                "csrf_token": match.group(1),
                "username": "admin",
                "password": password.group(1),
            }
            async with http.post(url + "/login", data=form, allow_redirects=False) as response:
                assert response.status == 303
                cookie = next(
                    c for c in response.headers.getall("Set-Cookie") if SESSION_COOKIE in c
                )
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
            assert "Max-Age=120" in cookie
            async with http.get(url + "/home", allow_redirects=False) as response:
                assert response.status == 200
    finally:
        check_clean_exit(server)


# --- ending sessions: disable/enable, sign out everywhere, restarts ----------------------


async def api_status(site: Site, token: str) -> int:
    """What ``GET /api/v1/whoami`` answers to ``token``."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(site.url + "/api/v1/whoami", headers=headers) as response:
            return response.status


async def api_token(site: Site, username: str, password: str = "mat-khau-1") -> str:
    """A token from ``POST /api/v1/tokens`` (username and password)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        body = {"username": username, "password": password}
        async with http.post(site.url + "/api/v1/tokens", json=body) as response:
            assert response.status == 201, await response.text()
            token: str = (await response.json())["token"]
            return token


async def page_token(browser: Browser) -> str:
    """A token made on the page /account/token by this browser's session."""
    csrf = await browser.csrf("/account/token")
    status, html, _ = await browser.post("/account/token", {"csrf_token": csrf, "hours": "24"})
    assert status == 200 and 'id="api-token"' in html
    return html.split('id="api-token">', 1)[1].split("<", 1)[0].strip()


def legacy_api_token(user: User) -> str:
    """An API token as made before tokens carried the account's version (no ``ver``)."""
    now = datetime.now(UTC)
    claims = {
        "iss": "conference",
        "aud": "conference-api",
        "sub": str(user.id),
        "usr": user.username,
        "pwf": fingerprint(SECRET, user.password_hash),
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, SECRET.encode(), algorithm="HS256")


async def home_status(browser: Browser, cookie: str) -> int:
    """What /home answers to a request with this session cookie (303: to the login)."""
    status, _, _ = await browser.get("/home", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    return status


async def test_enabling_an_account_again_revives_none_of_its_tokens(
    any_site: Site, browsers: list[Browser]
) -> None:
    site = any_site
    site.add_user("thuky", "secretary", display_name="Thư ký")
    user_browser = await site.browser().signed_in("thuky")
    admin = await site.browser().signed_in("admin", site.admin_password)
    replay = site.browser()
    browsers.extend([user_browser, admin, replay])
    cookie = user_browser.session_cookie()
    tokens = [await api_token(site, "thuky"), await page_token(user_browser)]
    # a token made before the account had a version (no ``ver`` claim) counts as version 0
    tokens.append(legacy_api_token(site.user("thuky")))
    assert await home_status(replay, cookie) == 200
    assert [await api_status(site, t) for t in tokens] == [200, 200, 200]

    csrf = await admin.csrf("/admin/users/thuky")
    for form in ({"action": "active"}, {"action": "active", "active": "on"}):  # off, on
        status, _, _ = await admin.post("/admin/users/thuky", {"csrf_token": csrf, **form})
        assert status == 303
    assert site.user("thuky").active is True
    # the account works again, but nothing made before it was disabled does
    assert await home_status(replay, cookie) == 303
    assert [await api_status(site, t) for t in tokens] == [401, 401, 401]
    status, _, _ = await user_browser.get("/home")
    assert status == 303
    await user_browser.signed_in("thuky")
    fresh = await api_token(site, "thuky")
    assert await api_status(site, fresh) == 200

    # the same through the JSON API (PATCH active false, then true)
    admin_token = await api_token(site, "admin", site.admin_password)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        headers = {"Authorization": f"Bearer {admin_token}"}
        for active in (False, True):
            async with http.patch(
                site.url + "/api/v1/users/thuky", json={"active": active}, headers=headers
            ) as response:
                assert response.status == 200, await response.text()
    assert await api_status(site, fresh) == 401
    status, _, _ = await user_browser.get("/home")
    assert status == 303


async def test_sign_out_and_sign_out_everywhere(site: Site, browsers: list[Browser]) -> None:
    """Sign-out ends this browser's session and the tokens made on its token page; the
    tokens a script got with the password go on until "sign out everywhere" (the button,
    the admin's action, the API, the CLI) ends everything of the account."""
    site.add_user("thuky", "secretary", display_name="Thư ký")
    here = await site.browser().signed_in("thuky")
    there = await site.browser().signed_in("thuky")
    browsers.extend([here, there])
    from_page, for_script = await page_token(here), await api_token(site, "thuky")

    csrf = await here.csrf("/home")
    status, _, _ = await here.post("/logout", {"csrf_token": csrf})
    assert status == 303
    assert await api_status(site, from_page) == 401  # made in the session signed out
    assert await api_status(site, for_script) == 200  # a credential of its own
    status, _, _ = await there.get("/home")  # another browser's session goes on
    assert status == 200

    # the button on the home page, in both languages, behind the CSRF check
    status, html, _ = await there.get("/home")
    assert "Đăng xuất khỏi mọi nơi" in html and 'action="/account/signout"' in html
    status, html, _ = await there.get("/home?lang=en")
    assert "Sign out everywhere" in html
    status, html, _ = await there.post("/account/signout", {"csrf_token": "wrong"})
    assert status == 403
    here = await here.signed_in("thuky")
    csrf = await there.csrf("/home")
    status, _, response = await there.post("/account/signout", {"csrf_token": csrf})
    assert status == 303 and response.headers["Location"] == "/login"
    for browser in (there, here):
        status, _, _ = await browser.get("/home")
        assert status == 303
    assert await api_status(site, for_script) == 401

    # the administrator's action on the account's page
    await here.signed_in("thuky")
    admin = await site.browser().signed_in("admin", site.admin_password)
    browsers.append(admin)
    status, html, _ = await admin.get("/admin/users/thuky")
    assert status == 200 and 'value="signout"' in html
    csrf = await admin.csrf("/admin/users/thuky")
    status, _, _ = await admin.post("/admin/users/thuky", {"csrf_token": csrf, "action": "signout"})
    assert status == 303
    status, _, _ = await here.get("/home")
    assert status == 303

    # the JSON API: administrators only
    await here.signed_in("thuky")
    own = await api_token(site, "thuky")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for token, expected in (
            (own, 403),
            (await api_token(site, "admin", site.admin_password), 200),
        ):
            async with http.post(
                site.url + "/api/v1/users/thuky/signout",
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == expected, await response.text()
    assert await api_status(site, own) == 401
    status, _, _ = await here.get("/home")
    assert status == 303

    # `conference user signout NAME`, on the server's database
    await here.signed_in("thuky")
    env = dict(os.environ, CONFERENCE_TOKEN_SECRET=SECRET)
    env["CONFERENCE_DATA_DIR"] = str(site.server.data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "conference", "user", "signout", "thuky"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "thuky is signed out everywhere" in result.stdout
    status, _, _ = await here.get("/home")
    assert status == 303
    await here.signed_in("thuky")  # signing in again works


async def test_sign_out_and_lockout_survive_a_restart(
    any_site: Site, browsers: list[Browser]
) -> None:
    site = any_site
    site.add_user("thuky", "secretary", display_name="Thư ký")
    site.add_user("chutri", "chair", display_name="Chủ trì")
    browser = await site.browser().signed_in("thuky")
    browsers.append(browser)
    cookie, from_page = browser.session_cookie(), await page_token(browser)
    csrf = await browser.csrf("/home")
    status, _, _ = await browser.post("/logout", {"csrf_token": csrf})
    assert status == 303
    for attempt in range(5):  # locks chutri for a minute
        status, _, _ = await browser.login("chutri", f"doan-sai-{attempt}")
    assert status == 429

    site.restart()
    replay = site.browser()
    browsers.append(replay)
    assert await home_status(replay, cookie) == 303  # still signed out
    assert await api_status(site, from_page) == 401
    status, html, response = await replay.login("chutri", "mat-khau-1")
    assert status == 429 and "thử lại sau 1 phút" in html  # still locked
    assert 0 < int(response.headers["Retry-After"]) <= 60
    await replay.signed_in("thuky")  # the others are not
