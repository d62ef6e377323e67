"""A locked, slow or deleted database (issue 14, items 6 and 7), against the real server.

Fault tests: another program holds the database locked (SQLite ``BEGIN EXCLUSIVE``,
PostgreSQL ``LOCK TABLE``), or the SQLite file is deleted while the server runs.  Every
request still gets an answer within the database timeout (5 s by default): what the
database can serve, or 503 with ``Retry-After`` and a clear message, never a 500 or a
traceback; ad-hoc rooms never wait; ``/healthz`` says what is wrong; nothing stored is
lost once the database is back.
"""

# ruff: noqa: F811 - the fixtures imported from test_webauth are parameters here

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text

from conference.tools.client import Client as RoomClient

from .conftest import check_clean_exit, start_server
from .test_api import Client
from .test_webauth import Browser, Site, any_site, browsers, site  # noqa: F401

#: the database timeout (5 s) and the slack of a loaded test machine
PROMPT = 5.0 + 4.0


@contextmanager
def locked(site: Site) -> Iterator[None]:
    """Another program holds the database locked (writers wait; on PostgreSQL the
    locked tables' readers too)."""
    url = site.database.url
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(str(url.database), isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
    else:
        with site.database.engine.connect() as held:
            transaction = held.begin()
            held.execute(text("LOCK TABLE units, users IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                transaction.rollback()


def health(site: Site) -> dict[str, Any]:
    with urllib.request.urlopen(f"{site.url}/healthz", timeout=5) as response:
        assert response.status == 200
        data: dict[str, Any] = json.load(response)
        return data


async def timed(call: Any) -> tuple[float, Any]:
    start = time.monotonic()
    result = await call
    return time.monotonic() - start, result


async def adhoc_join(site: Site, meeting: str) -> float:
    """Seconds an ad-hoc room's join takes (no database on its way)."""
    client = RoomClient(site.url, meeting, site.server.token(meeting=meeting, identity="xa-x"))
    start = time.monotonic()
    await client.connect(auto_subscribe=False)
    elapsed = time.monotonic() - start
    await client.leave()
    return elapsed


def check_unavailable(status: int, body: Any, response: aiohttp.ClientResponse) -> None:
    assert status == 503, (status, body)
    assert response.headers["Retry-After"] == "5"
    if isinstance(body, dict):
        assert body["error"] == "unavailable", body
    else:  # a page: the error page, in Vietnamese
        assert "cơ sở dữ liệu" in body, body[-800:]
        assert "Traceback" not in body


async def test_a_locked_database_answers_quickly(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    site.add_user("chutri", "chair")
    api = await Client(site).sign_in("admin", site.admin_password)
    chair = site.browser()
    browsers.append(chair)
    await chair.signed_in("chutri")
    newcomer = site.browser()
    browsers.append(newcomer)
    form = {"csrf_token": await newcomer.csrf("/login"), "next": ""}
    form |= {"username": "chutri", "password": "mat-khau-1"}
    try:
        with locked(site):
            unit = {"code": "huyen-moi", "name": "Huyện Mới", "kind": "district", "parent": None}
            calls = {
                "api read": api.call("GET", "/units"),
                "api write": api.call("POST", "/units", unit),
                "page": chair.get("/meetings", headers={"Accept": "text/html"}),
                "login": newcomer.post("/login", form, headers={"Accept": "text/html"}),
            }
            results = await asyncio.gather(*(timed(c) for c in calls.values()))
            answers = dict(zip(calls, results, strict=True))
            for what, (elapsed, (status, body, response)) in answers.items():
                assert elapsed < PROMPT, f"{what}: {elapsed:.1f} s"
                assert status in (200, 303, 503), (what, status, body)
                if status == 503:
                    check_unavailable(status, body, response)
            # writes wait for the lock on every database: refused in time, not lost
            check_unavailable(*answers["api write"][1])
            report = await asyncio.to_thread(health, site)
            assert report["status"] == "degraded", report
            assert "database" in report["problems"][0], report
            # an ad-hoc room never waits for the database
            assert await adhoc_join(site, "hop-khan") < 3.0

        # the lock is gone: the same calls work, and the health check clears
        status, data, _ = await api.call("POST", "/units", unit)
        assert status == 201, data
        status, _, _ = await chair.get("/meetings", headers={"Accept": "text/html"})
        assert status == 200
        assert (await asyncio.to_thread(health, site))["status"] == "ok"
        log = site.server.log()
        assert "Traceback" not in log
        assert log.count("database") < 20, log[-3000:]  # one line per 10 s, not per request
    finally:
        await api.close()


async def test_a_deleted_database_file_is_refused_not_written(
    site: Site, browsers: list[Browser], tmp_path: Path
) -> None:
    path = Path(str(site.database.url.database))
    api = await Client(site).sign_in("admin", site.admin_password)
    try:
        unit = {"code": "huyen-a", "name": "Huyện A", "kind": "district", "parent": None}
        status, data, _ = await api.call("POST", "/units", unit)
        assert status == 201, data
        browser = await site.browser().signed_in("admin", site.admin_password)
        browsers.append(browser)
        backup = tmp_path / "backup.db"  # what the IT officer's nightly backup holds
        with sqlite3.connect(path) as source, sqlite3.connect(backup) as copy:
            source.backup(copy)

        path.unlink()  # by mistake, while the server runs
        later = {"code": "huyen-b", "name": "Huyện B", "kind": "district", "parent": None}
        elapsed, (status, body, response) = await timed(api.call("POST", "/units", later))
        check_unavailable(status, body, response)
        assert "deleted" in body["message"] or elapsed < PROMPT
        check_unavailable(*await api.call("GET", "/units"))
        check_unavailable(*await browser.get("/home", headers={"Accept": "text/html"}))
        assert not path.exists(), "the server opened a new, empty database in its place"
        report = await asyncio.to_thread(health, site)
        assert report["status"] == "degraded"
        assert "was deleted" in report["problems"][0], report
        assert "was deleted while the server runs" in site.server.log()
        assert await adhoc_join(site, "hop-khan") < 3.0  # meetings without it go on

        shutil.copy(backup, path)  # restored from the backup, then a restart
        check_clean_exit(site.server)
        site.server = start_server(tmp_path)  # the site's home (same data, a new port)
        assert "with the password" not in site.server.log(), "a new admin was created"
        api.site = site
        await api.sign_in("admin", site.admin_password)  # the same admin
        status, units, _ = await api.call("GET", "/units")
        assert status == 200 and [u["code"] for u in units] == ["huyen-a"], units
    finally:
        await api.close()
