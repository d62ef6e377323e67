"""What sign-in keeps in the database so that a restart forgets none of it.

* **Revoked tokens** (table ``revoked_tokens``): a signed-out browser's session cookie
  (kind ``session``), a point's meeting token after the chair removed it (``meeting``).
  The in-memory `~conference.tokens.RevocationList` stays the check made on every request;
  `RevocationStore` writes each revocation made here to the database and, at start, loads
  those not yet expired back into the lists.  Rows are deleted once their token has
  expired.  Several nodes (``redis_url``) share one database: each loads every node's
  revocations at start, and Redis tells the running ones at once (conference/cluster).
* **Failed sign-ins** (table ``login_failures``): `LoginThrottle` counts them per username
  and per client address in the database, so a lockout survives a restart and holds on
  every node or worker that shares the database.

The third piece, the account's ``token_version`` that ends every token of a disabled
account or one signed out everywhere, is a column of ``users`` (`accounts.end_sessions`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, delete, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from conference.domain.db import Database, DatabaseError
from conference.domain.models import LoginFailure, RevokedToken
from conference.tokens import RevocationList

__all__ = ["LoginThrottle", "RevocationStore", "load_revocations", "save_revocation"]

logger = logging.getLogger(__name__)

#: a revocation row is kept this long past its token's expiry (the lists' leeway is 10 s)
REVOCATION_LEEWAY = timedelta(minutes=1)
#: the longest token id kept (longer ones, which this server never makes, stay in memory)
MAX_TOKEN_ID = 255


# --- revoked tokens -----------------------------------------------------------------------


def save_revocation(
    session: Session, kind: str, token_id: str, expires_at: datetime, now: datetime
) -> None:
    """Keep ``token_id`` refused until ``expires_at``; drop the rows already expired."""
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now - REVOCATION_LEEWAY))
    row = session.get(RevokedToken, token_id)
    if row is None:
        session.add(RevokedToken(token_id=token_id, kind=kind, expires_at=expires_at))
    elif row.expires_at < expires_at:
        row.expires_at = expires_at
    session.flush()


def load_revocations(session: Session, now: datetime) -> list[tuple[str, str, datetime]]:
    """(kind, token id, expiry) of every revocation still in force; the others are deleted."""
    cutoff = now - REVOCATION_LEEWAY
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < cutoff))
    rows = session.scalars(select(RevokedToken).where(RevokedToken.expires_at >= cutoff))
    return [(row.kind, row.token_id, row.expires_at) for row in rows]


class RevocationStore:
    """The database behind the in-memory revocation lists of one process.

    `attach` a list under its kind: every `RevocationList.revoke` on it (not `learn`: what
    another node revoked, that node writes) is then written in the background; `load` fills
    the lists at start; `settled` waits for the writes started so far (a sign-out answers
    once its revocation is stored; the server waits for them before it stops).  A write
    that fails (the database unreachable) is logged; the token stays refused by this
    process, and by the other nodes through Redis, until it expires or this process stops.
    """

    def __init__(self, database: Database, clock: Callable[[], datetime] | None = None) -> None:
        self.database = database
        self.lists: dict[str, RevocationList] = {}
        self._clock = clock or (lambda: datetime.now(UTC))
        self._pending: set[asyncio.Task[None]] = set()
        self._writing = threading.Lock()

    def attach(self, kind: str, revoked: RevocationList) -> None:
        """Store the revocations of ``revoked`` as ``kind``; whatever else its ``on_revoke``
        did (telling the other nodes) still happens, first."""
        self.lists[kind] = revoked
        told = revoked.on_revoke

        def on_revoke(token_id: str, expires_at: datetime) -> None:
            if told is not None:
                told(token_id, expires_at)
            self.save(kind, token_id, expires_at)

        revoked.on_revoke = on_revoke

    def save(self, kind: str, token_id: str, expires_at: datetime) -> None:
        """Write one revocation in the background (at once without an event loop)."""
        if len(token_id) > MAX_TOKEN_ID:
            logger.warning("a %s token id of %d characters is not stored", kind, len(token_id))
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(kind, token_id, expires_at)
            return
        task = loop.create_task(asyncio.to_thread(self._write, kind, token_id, expires_at))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _write(self, kind: str, token_id: str, expires_at: datetime) -> None:
        def write(session: Session) -> None:
            save_revocation(session, kind, token_id, expires_at, self._clock())

        try:
            with self._writing:  # one at a time: the same token twice keeps the later expiry
                try:
                    self.database.call(write)
                except IntegrityError:  # another node stored it at the same moment: update
                    self.database.call(write)
        except (DatabaseError, SQLAlchemyError) as exc:
            logger.error("a revoked %s token could not be stored: %s", kind, _line(exc))

    async def settled(self) -> None:
        """Wait for the writes started so far."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def load(self) -> int:
        """Fill the attached lists with the stored revocations; how many (0 on failure)."""
        try:
            rows = await self.database.run(lambda s: load_revocations(s, self._clock()))
        except (DatabaseError, SQLAlchemyError) as exc:
            logger.warning("the revoked tokens could not be loaded: %s", _line(exc))
            return 0
        count = 0
        for kind, token_id, expires_at in rows:
            if kind in self.lists:
                self.lists[kind].learn(token_id, expires_at)
                count += 1
        return count


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__


# --- failed sign-ins ----------------------------------------------------------------------


class LoginThrottle:
    """Failed sign-ins per username (5) and per client address (20), in the database.

    At the limit the key is locked for ``base_delay`` (1 minute), doubling with each further
    failure up to ``max_delay`` (15 minutes); a key's count is forgotten after
    ``forget_after`` (an hour) without failure once its lock is over, and a success clears
    the username's count.  The methods take the caller's session: the login checks the
    lock, the password and records the outcome in one transaction.  A failure is one
    atomic upsert per key, so concurrent failures (other requests, other nodes) all count.
    """

    def __init__(
        self,
        *,
        per_user: int = 5,
        per_address: int = 20,
        base_delay: float = 60.0,
        max_delay: float = 900.0,
        forget_after: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._clock = clock
        self._pruned = float("-inf")

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @staticmethod
    def _user_key(username: str) -> str:
        return "user:" + username.strip().lower()[:128]

    def _keys(self, username: str, address: str) -> list[tuple[str, int]]:
        return [
            (self._user_key(username), self.per_user),
            ("addr:" + address[:128], self.per_address),
        ]

    def wait(self, session: Session, username: str, address: str) -> float:
        """Seconds until this username may try again from this address (0: now)."""
        return self._wait(session, [key for key, _ in self._keys(username, address)], self._now())

    @staticmethod
    def _wait(session: Session, keys: list[str], now: datetime) -> float:
        locks = session.scalars(
            select(LoginFailure.locked_until).where(
                LoginFailure.key.in_(keys), LoginFailure.locked_until > now
            )
        )
        return max([0.0, *((until - now).total_seconds() for until in locks if until)])

    def failed(self, session: Session, username: str, address: str) -> float:
        """Count a failure; returns the lockout now in force (seconds, 0 for none)."""
        now = self._now()
        keys = self._keys(username, address)
        for key, limit in keys:
            self._count(session, key, limit, now)
        if self._clock() - self._pruned > 60:
            self._pruned = self._clock()
            self._prune(session, now)
        return self._wait(session, [key for key, _ in keys], now)

    def succeeded(self, session: Session, username: str) -> None:
        session.execute(delete(LoginFailure).where(LoginFailure.key == self._user_key(username)))

    def _count(self, session: Session, key: str, limit: int, now: datetime) -> None:
        table = LoginFailure.__table__
        stale = and_(
            table.c.last_failure < now - timedelta(seconds=self.forget_after),
            or_(table.c.locked_until.is_(None), table.c.locked_until <= now),
        )
        dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
        upsert = dialect.insert(table).values(key=key, failures=1, last_failure=now)
        upsert = upsert.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "failures": case((stale, 1), else_=table.c.failures + 1),
                "locked_until": case((stale, null()), else_=table.c.locked_until),
                "last_failure": now,
            },
        ).returning(table.c.failures, table.c.locked_until)
        failures, locked_until = session.execute(upsert).one()
        if failures >= limit:
            delay = min(self.max_delay, self.base_delay * 2 ** min(failures - limit, 30))
            until = now + timedelta(seconds=delay)
            if locked_until is None or until > locked_until:
                session.execute(
                    update(LoginFailure).where(LoginFailure.key == key).values(locked_until=until)
                )

    def _prune(self, session: Session, now: datetime) -> None:
        """Delete the counts forgotten already (no failure for an hour, no lock in force)."""
        session.execute(
            delete(LoginFailure).where(
                LoginFailure.last_failure < now - timedelta(seconds=self.forget_after),
                or_(LoginFailure.locked_until.is_(None), LoginFailure.locked_until <= now),
            )
        )
