"""The JSON API (/api/v1/) and its OpenAPI document, against the real server."""

# ruff: noqa: F811 - the fixtures imported from test_webauth are parameters here

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from openapi_spec_validator import validate as validate_openapi

from conference.web.api import API, validate
from conference.web.auth import create_api_token, create_session_token

from .conftest import SECRET
from .test_admin_pages import two_districts
from .test_webauth import Browser, Site, any_site, browsers, site  # noqa: F401


class Client:
    """A script using the API: no cookie jar, a bearer token."""

    def __init__(self, site: Site, token: str | None = None) -> None:
        self.site = site
        self.token = token
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=30)
        )

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, **headers: str
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.site.url + "/api/v1" + path, **kwargs) as r:
            data = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, data, r

    async def sign_in(self, username: str, password: str = "mat-khau-1") -> Client:
        status, data, _ = await self.call(
            "POST", "/tokens", {"username": username, "password": password}
        )
        assert status == 201, data
        self.token = data["token"]
        return self

    async def close(self) -> None:
        await self.http.close()


async def client(site: Site, browsers: list[Any], username: str | None = None) -> Client:
    made = Client(site)
    browsers.append(made)
    if username == "admin":
        await made.sign_in("admin", site.admin_password)
    elif username:
        await made.sign_in(username)
    return made


def is_error(data: Any, code: str) -> bool:
    return isinstance(data, dict) and data.get("error") == code and bool(data.get("message"))


async def test_openapi_document(site: Site, browsers: list[Browser]) -> None:
    anonymous = await client(site, browsers)
    status, document, _ = await anonymous.call("GET", "/openapi.json")
    assert status == 200 and document["openapi"] == "3.1.0"
    validate_openapi(document)  # a valid OpenAPI 3.1 document
    operations = {(o.method.lower(), o.path) for o in API.operations}
    documented = {(m, p) for p, item in document["paths"].items() for m in item}
    assert operations == documented and len(operations) >= 12
    # every documented operation exists on the server and checks the token first
    for method, path in sorted(documented):
        entry = document["paths"][path][method]
        concrete = path.replace("{", "x-").replace("}", "")
        status, data, response = await anonymous.call(method.upper(), concrete)
        if entry["security"]:
            assert status == 401 and is_error(data, "unauthorized"), (method, path, status)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "401" in entry["responses"]
        else:
            assert status in (400, 422), (method, path, status, data)
    assert document["components"]["schemas"]["NewPoint"]["additionalProperties"] is False


async def test_tokens_and_auth_errors(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    two_districts(site)
    anonymous = await client(site, browsers)
    status, data, _ = await anonymous.call(
        "POST", "/tokens", {"username": "thuky-a", "password": "sai-mat-khau"}
    )
    assert status == 401 and is_error(data, "bad-credentials")
    secretary = await client(site, browsers, "thuky-a")
    status, me, _ = await secretary.call("GET", "/whoami")
    assert status == 200 and (me["username"], me["role"], me["unit"]) == (
        "thuky-a",
        "secretary",
        "huyen-a",
    )

    user = site.user("thuky-a")
    bad_tokens = {
        "Basic dGh1a3k6eA==": "invalid-token",
        "Bearer ": "invalid-token",
        "Bearer abc.def.ghi": "invalid-token",
        # a session cookie, a meeting token, an expired API token, another secret
        f"Bearer {create_session_token(SECRET, user, timedelta(hours=1))}": "invalid-token",
        f"Bearer {site.server.token(meeting='m1', identity=str(user.id))}": "invalid-token",
        "Bearer "
        + create_api_token(
            SECRET, user, timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=2)
        ): "invalid-token",
        f"Bearer {create_api_token('z' * 40, user)}": "invalid-token",
    }
    for header, code in bad_tokens.items():
        status, data, response = await anonymous.call("GET", "/whoami", Authorization=header)
        assert status == 401 and is_error(data, code), header[:40]
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="conference"'
    # the API ignores the session cookie: a browser's cookie is not an API credential
    browser = await site.browser().signed_in("thuky-a")
    browsers.append(browser)
    status, data, _ = await anonymous.call(
        "GET", "/whoami", Cookie=f"conference_session={browser.session_cookie()}"
    )
    assert status == 401 and is_error(data, "unauthorized")
    # the token page of a signed-in browser makes a working token
    token_page = await browser.csrf("/account/token")
    status, html, _ = await browser.post("/account/token", {"csrf_token": token_page, "hours": "2"})
    assert status == 200 and 'id="api-token"' in html
    made = html.split('id="api-token">', 1)[1].split("<", 1)[0].strip()
    from_page = Client(site, made)
    browsers.append(from_page)
    status, data, _ = await from_page.call("GET", "/whoami")
    assert status == 200 and data["username"] == "thuky-a"

    # `conference user token` (the CLI, on the server's database)
    env = dict(os.environ, CONFERENCE_TOKEN_SECRET=SECRET)
    env["CONFERENCE_DATA_DIR"] = str(site.server.data_dir)
    if site.database.url.get_backend_name() == "postgresql":
        env["CONFERENCE_DATABASE_URL"] = site.database.url.render_as_string(hide_password=False)
    result = subprocess.run(
        [sys.executable, "-m", "conference", "user", "token", "thuky-a", "--ttl", "30m"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    from_cli = Client(site, result.stdout.strip())
    browsers.append(from_cli)
    status, data, _ = await from_cli.call("GET", "/whoami")
    assert status == 200 and data["username"] == "thuky-a"
    result = subprocess.run(
        [sys.executable, "-m", "conference", "user", "token", "thuky-a", "--ttl", "3d"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0 and "24 hours" in result.stderr

    # a password change ends every API token of the user
    admin_a = await client(site, browsers, "qt-a")
    status, _, _ = await admin_a.call("PATCH", "/users/thuky-a", {"password": "mat-khau-moi"})
    assert status == 200
    for old in (secretary, from_page, from_cli):
        status, data, _ = await old.call("GET", "/whoami")
        assert status == 401 and is_error(data, "invalid-token")
    await secretary.sign_in("thuky-a", "mat-khau-moi")
    # disabling the account ends them too
    status, data, _ = await admin_a.call("PATCH", "/users/thuky-a", {"active": False})
    assert status == 200 and data["active"] is False
    status, _, _ = await secretary.call("GET", "/whoami")
    assert status == 401


async def test_token_throttling(site: Site, browsers: list[Browser]) -> None:
    site.add_user("chutri", "chair")
    anonymous = await client(site, browsers)
    for attempt in range(1, 6):
        status, data, response = await anonymous.call(
            "POST", "/tokens", {"username": "chutri", "password": f"sai-{attempt}"}
        )
    assert status == 429 and is_error(data, "throttled")
    assert int(response.headers["Retry-After"]) >= 59
    status, data, _ = await anonymous.call(
        "POST", "/tokens", {"username": "chutri", "password": "mat-khau-1"}
    )
    assert status == 429
    # the login form shares the count
    browser = site.browser()
    browsers.append(browser)
    status, _, _ = await browser.login("chutri", "mat-khau-1")
    assert status == 429


async def test_organisation_api(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    two_districts(site)
    admin_a = await client(site, browsers, "qt-a")
    secretary = await client(site, browsers, "thuky-a")

    status, units, _ = await admin_a.call("GET", "/units")
    assert status == 200
    assert [u["code"] for u in units] == ["huyen-a", "xa-a1"]
    assert units[1] == {"code": "xa-a1", "name": "Xã A Một", "kind": "commune", "parent": "huyen-a"}
    status, data, _ = await admin_a.call("GET", "/units/huyen-b")
    assert status == 404 and is_error(data, "not-found")
    status, points, _ = await secretary.call("GET", "/points")
    assert status == 200 and [p["code"] for p in points] == ["p-a1"]
    status, data, _ = await secretary.call("GET", "/points/p-b1")
    assert status == 404

    # roles
    new_unit = {"code": "xa-a2", "name": "Xã A Hai", "kind": "commune", "parent": "huyen-a"}
    status, data, _ = await secretary.call("POST", "/units", new_unit)
    assert status == 403 and is_error(data, "forbidden")
    status, data, _ = await secretary.call("GET", "/users")
    assert status == 403

    # request bodies: not JSON, schema violations, field validation, conflicts
    status, data, _ = await admin_a.call(
        "POST", "/units", raw=b"{code: 1", **{"Content-Type": "application/json"}
    )
    assert status == 400 and is_error(data, "bad-json")
    for nested in (b"[" * 100_000, b'{"code": ' + b"[" * 65 + b"]" * 65 + b"}"):
        # json.loads recursed until RecursionError: a 500; now a depth limit
        status, data, _ = await admin_a.call(
            "POST", "/units", raw=nested, **{"Content-Type": "application/json"}
        )
        assert status == 400 and is_error(data, "bad-json"), nested[:20]
    status, data, _ = await admin_a.call(
        "POST", "/units", {"code": "xa-a2", "kind": "thon", "x": 1}
    )
    assert status == 422 and is_error(data, "invalid")
    assert data["fields"] == {
        "name": "is required",
        "kind": "must be one of province, district, commune",
        "x": "is not a known field",
    }
    status, data, _ = await admin_a.call("POST", "/units", {**new_unit, "parent": "huyen-b"})
    assert status == 422 and data["fields"] == {"parent": "No such unit within your unit."}
    status, data, _ = await admin_a.call("POST", "/units", {**new_unit, "code": "xa-b1"})
    assert status == 409 and is_error(data, "conflict")
    assert data["fields"]["code"] == "The code xa-b1 is already used."
    status, data, _ = await admin_a.call("POST", "/units", new_unit)
    assert status == 201 and data == new_unit

    # points: create, read, change; a title with SQL/HTML stays text
    name = "UBND xã A Hai'; DROP TABLE points; -- <b>"
    point = {"code": "p-a2", "name": name, "unit": "xa-a2", "email": "vp@a2.gov.vn"}
    status, data, _ = await admin_a.call("POST", "/points", {**point, "email": "sai"})
    assert status == 422 and data["fields"] == {"email": "Invalid e-mail address."}
    status, data, _ = await admin_a.call("POST", "/points", point)
    assert status == 201 and data["name"] == name and data["bandwidth"] == "standard"
    status, data, _ = await admin_a.call(
        "PATCH", "/points/p-a2", {"bandwidth": "low", "active": False, "phone": None}
    )
    assert status == 200 and (data["bandwidth"], data["active"], data["phone"]) == (
        "low",
        False,
        None,
    )
    assert data["name"] == name  # unchanged
    status, data, _ = await admin_a.call("PATCH", "/points/p-b1", {"bandwidth": "low"})
    assert status == 404
    status, data, _ = await secretary.call("GET", "/points?active=false")
    assert [p["code"] for p in data] == ["p-a2"]
    status, data, _ = await secretary.call("GET", "/points?active=maybe")
    assert status == 422

    # users
    status, data, _ = await admin_a.call(
        "POST",
        "/users",
        {"username": "ubnd-a2", "role": "operator", "point": "p-b1", "password": "mat-khau-1"},
    )
    assert status == 422 and data["fields"] == {"point": "No such meeting point within your unit."}
    status, data, _ = await admin_a.call(
        "POST", "/users", {"username": "ubnd-a2", "role": "operator", "password": "ngan"}
    )
    assert status == 422 and data["fields"] == {"password": "must have at least 8 characters"}
    status, data, _ = await admin_a.call(
        "POST",
        "/users",
        {
            "username": "ubnd-a2",
            "display_name": "UBND xã A Hai",
            "role": "operator",
            "point": "p-a2",
            "password": "mat-khau-1",
        },
    )
    assert status == 201 and (data["unit"], data["point"]) == ("xa-a2", "p-a2")
    status, data, _ = await admin_a.call(
        "POST",
        "/users",
        {"username": "thuky-b", "role": "chair", "unit": "huyen-a", "password": "mat-khau-1"},
    )
    assert status == 409
    status, users, _ = await admin_a.call("GET", "/users")
    assert sorted(u["username"] for u in users) == ["qt-a", "thuky-a", "ubnd-a2"]
    status, data, _ = await admin_a.call("GET", "/users/thuky-b")
    assert status == 404
    status, data, _ = await admin_a.call("PATCH", "/users/qt-a", {"active": False})
    assert status == 422 and data["fields"] == {"active": "You cannot disable your own account."}
    operator = await client(site, browsers, "ubnd-a2")
    status, data, _ = await operator.call("GET", "/whoami")
    assert data["point"] == "p-a2"
    # unknown routes and methods are JSON errors too
    status, data, _ = await admin_a.call("GET", "/khong-co")
    assert status == 404 and isinstance(data, dict) and "error" in data
    status, data, _ = await admin_a.call("DELETE", "/units")
    assert status == 405 and isinstance(data, dict) and "error" in data


def test_validator() -> None:
    schemas = {"P": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"$ref": "#/components/schemas/P"}, "maxItems": 2},
            "s": {"type": ["string", "null"], "pattern": "^x", "maxLength": 3},
            "b": {"type": "boolean"},
        },
        "required": ["b"],
        "additionalProperties": False,
    }
    assert validate({"b": True, "a": [{"n": 2}], "s": None}, schema, schemas) == []
    problems = validate(
        {"a": [{"n": 0}, {"n": "1"}, {}], "s": "yyyy", "b": 1, "z": 0}, schema, schemas
    )
    assert sorted(problems) == [
        ("a", "must have at most 2 items"),
        ("a[0].n", "must be at least 1"),
        ("a[1].n", "must be of type integer"),
        ("b", "must be of type boolean"),
        ("s", "must have at most 3 characters"),
        ("s", "must match ^x"),
        ("z", "is not a known field"),
    ]
    assert validate(True, {"type": "integer"}) == [("body", "must be of type integer")]
    assert validate([], {"type": "object"}) == [("body", "must be of type object")]
