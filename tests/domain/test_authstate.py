"""Sign-in state in the database (conference/domain/authstate.py), SQLite and PostgreSQL:
the login throttle's counts, revoked tokens, the accounts' token version."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conference.domain import accounts, db
from conference.domain.authstate import LoginThrottle, RevocationStore
from conference.domain.models import LoginFailure, RevokedToken
from conference.tokens import RevocationList

T = TypeVar("T")


def test_throttle_policy(database: db.Database) -> None:
    """Lockout length doubles with each failure past the limit and is forgotten later."""
    now = [1000.0]
    throttle = LoginThrottle(per_user=5, per_address=20, clock=lambda: now[0])

    def call(function: Callable[[Session], T]) -> T:
        return database.call(function)

    def failed(username: str, address: str) -> float:
        return call(lambda s: throttle.failed(s, username, address))

    def wait(username: str, address: str) -> float:
        return call(lambda s: throttle.wait(s, username, address))

    for _ in range(4):
        assert failed("an", "10.0.0.1") == 0
    assert wait("an", "10.0.0.1") == 0
    assert failed("an", "10.0.0.1") == 60
    assert wait("AN ", "10.0.0.2") == 60  # per username, from any address
    assert wait("binh", "10.0.0.1") == 0
    now[0] += 61
    assert wait("an", "10.0.0.1") == 0
    assert failed("an", "10.0.0.1") == 120
    now[0] += 121
    assert failed("an", "10.0.0.1") == 240
    for _ in range(10):
        now[0] += 901
        failed("an", "10.0.0.9")
    assert wait("an", "10.0.0.9") == 900  # capped at 15 minutes
    call(lambda s: throttle.succeeded(s, "an"))
    assert wait("an", "10.0.0.3") == 0
    # per address: 20 failures over many usernames lock the address
    for i in range(20):
        failed(f"user{i}", "10.0.0.7")
    assert wait("someone-else", "10.0.0.7") == 60
    # counts are forgotten after an hour without failures (and the rows deleted)
    now[0] += 3700
    assert wait("someone-else", "10.0.0.7") == 0
    assert failed("user1", "10.0.0.7") == 0
    rows = call(lambda s: set(s.scalars(select(LoginFailure.key))))
    assert rows == {"user:user1", "addr:10.0.0.7"}
    # another process (a restart, another node) with the same database sees the lock
    for _ in range(5):
        failed("chi", "10.0.0.8")
    other = LoginThrottle(clock=lambda: now[0])
    assert call(lambda s: other.wait(s, "chi", "10.0.0.99")) == 60


async def test_concurrent_failures_all_count(database: db.Database) -> None:
    """Failures at the same moment (other requests, other nodes) are each counted."""
    throttle = LoginThrottle(per_user=1000, per_address=1000)

    await asyncio.gather(
        *(database.run(lambda s: throttle.failed(s, "an", "10.0.0.1")) for _ in range(12))
    )
    counts = await database.run(
        lambda s: dict(s.execute(select(LoginFailure.key, LoginFailure.failures)).all())
    )
    assert counts == {"user:an": 12, "addr:10.0.0.1": 12}


async def test_revocations_are_stored_and_loaded(database: db.Database) -> None:
    now = datetime.now(UTC)
    sessions, meetings = RevocationList(), RevocationList()
    told: list[str] = []
    meetings.on_revoke = lambda token_id, _expires: told.append(token_id)  # the cluster's
    store = RevocationStore(database)
    store.attach("session", sessions)
    store.attach("meeting", meetings)
    sessions.revoke("cookie-1", now + timedelta(hours=8))
    sessions.revoke("cookie-1", now + timedelta(hours=24))  # longer: the later expiry kept
    meetings.revoke("point-token", now + timedelta(hours=3))
    sessions.learn("told-by-another-node", now + timedelta(hours=1))  # that node stores it
    await store.settled()
    assert told == ["point-token"]  # what was hooked before still runs

    def stored(session: Session) -> dict[str, tuple[str, datetime]]:
        rows = session.scalars(select(RevokedToken))
        return {row.token_id: (row.kind, row.expires_at) for row in rows}

    rows = await database.run(stored)
    assert set(rows) == {"cookie-1", "point-token"}
    assert rows["cookie-1"][0] == "session" and rows["point-token"][0] == "meeting"
    assert abs(rows["cookie-1"][1] - (now + timedelta(hours=24))) < timedelta(seconds=1)

    # a restart: fresh lists, filled from the database; expired rows are deleted
    await database.run(
        lambda s: s.add(
            RevokedToken(token_id="old", kind="session", expires_at=now - timedelta(hours=1))
        )
    )
    fresh_sessions, fresh_meetings = RevocationList(), RevocationList()
    restarted = RevocationStore(database)
    restarted.attach("session", fresh_sessions)
    restarted.attach("meeting", fresh_meetings)
    assert await restarted.load() == 2
    assert fresh_sessions.is_revoked("cookie-1") and fresh_meetings.is_revoked("point-token")
    assert not fresh_sessions.is_revoked("point-token")
    assert await database.run(lambda s: s.scalar(select(func.count(RevokedToken.token_id)))) == 2


async def test_an_unreachable_database_is_logged_not_raised() -> None:
    broken = db.Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    try:
        revoked = RevocationList()
        store = RevocationStore(broken)
        store.attach("session", revoked)
        assert await store.load() == 0
        revoked.revoke("cookie", datetime.now(UTC) + timedelta(hours=1))
        await store.settled()
        assert revoked.is_revoked("cookie")  # still refused by this process
    finally:
        broken.close()


def test_token_version_goes_up(session: Session) -> None:
    user = accounts.create_user(session, username="qt", password="mat-khau-1", role="admin")
    assert user.token_version == 0
    accounts.set_active(user, True)  # no change: nothing ends
    assert user.token_version == 0
    accounts.set_active(user, False)
    accounts.set_active(user, True)
    assert user.token_version == 2
    accounts.set_password(session, "qt", "mat-khau-2")
    accounts.end_sessions(user)
    assert user.token_version == 4
