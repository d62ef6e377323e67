"""Sign-in, sessions, CSRF, throttling and password change against the real server.

Each test starts ``conference serve`` (tests/conftest.py) on SQLite, and on PostgreSQL where
storage matters, and talks to it with aiohttp (a cookie jar per browser).  Users are made
with the services (conference.domain) on the server's own database.  The helpers here
(`site`, `Site`, `Browser`) are reused by tests/test_admin_pages.py and tests/test_api.py.
"""

from __future__ import annotations

import html as html_module
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
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
    LoginThrottle,
    create_api_token,
    create_session_token,
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

    @property
    def url(self) -> str:
        return self.server.url

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
    try:
        yield Site(server, database, match.group(1))
    finally:
        database.close()
        check_clean_exit(server)


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


def test_throttle_policy() -> None:
    """Lockout length doubles with each failure past the limit and is forgotten later."""
    now = [1000.0]
    throttle = LoginThrottle(per_user=5, per_address=20, clock=lambda: now[0])
    for _ in range(4):
        assert throttle.failed("an", "10.0.0.1") == 0
    assert throttle.wait("an", "10.0.0.1") == 0
    assert throttle.failed("an", "10.0.0.1") == 60
    assert throttle.wait("AN ", "10.0.0.2") == 60  # per username, from any address
    assert throttle.wait("binh", "10.0.0.1") == 0
    now[0] += 61
    assert throttle.wait("an", "10.0.0.1") == 0
    assert throttle.failed("an", "10.0.0.1") == 120
    now[0] += 121
    assert throttle.failed("an", "10.0.0.1") == 240
    for _ in range(10):
        now[0] += 901
        throttle.failed("an", "10.0.0.9")
    assert throttle.wait("an", "10.0.0.9") == 900  # capped at 15 minutes
    throttle.succeeded("an")
    assert throttle.wait("an", "10.0.0.3") == 0
    # per address: 20 failures over many usernames lock the address
    for i in range(20):
        throttle.failed(f"user{i}", "10.0.0.7")
    assert throttle.wait("someone-else", "10.0.0.7") == 60
    # counts are forgotten after an hour without failures
    now[0] += 3700
    assert throttle.wait("someone-else", "10.0.0.7") == 0
    assert throttle.failed("user1", "10.0.0.7") == 0


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
