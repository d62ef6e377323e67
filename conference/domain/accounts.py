"""Accounts: argon2 password hashes, roles scoped to a unit, the first-run administrator.

Roles: admin (quản trị: everything in its unit's subtree, or the whole installation when it
has no unit), chair (chủ trì), secretary (thư ký), operator (runs one point).  A user sees
its unit and every unit below it (`can_see`): a district secretary sees the district and
its communes, nothing of another district.

Passwords are hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile); a hash made
with older parameters is replaced on the next successful login.  Login throttling (per
username and per client address) lives in the web layer, `conference/web/auth.py`.
"""

from __future__ import annotations

import functools
import re
import secrets
import unicodedata
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conference.domain.db import Database
from conference.domain.models import ROLES, Point, Unit, User, utcnow
from conference.domain.organisation import clean_name, get_point, get_unit

__all__ = [
    "FIRST_ADMIN",
    "MIN_PASSWORD",
    "AccountError",
    "check_credentials",
    "can_see",
    "create_user",
    "end_sessions",
    "ensure_first_admin",
    "first_run_admin",
    "get_user",
    "hash_password",
    "list_users",
    "set_active",
    "set_password",
    "verify_password",
]

FIRST_ADMIN = "admin"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")

_hasher = PasswordHasher()


# A valid hash of a random password, verified when the user is unknown so that a login
# attempt takes the same time whether or not the username exists.
@functools.cache
def _dummy_hash() -> str:
    """A hash of nothing, made on first use (hashing costs ~0.15 s: not at import)."""
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user is invalid, unknown or duplicated; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def _check_password(password: str) -> str:
    password = unicodedata.normalize("NFC", password)
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password must have at most {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(_check_password(password))


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches; False for a wrong password or an unusable hash."""
    try:
        return _hasher.verify(password_hash, unicodedata.normalize("NFC", password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def clean_username(value: str) -> str:
    username = value.strip().lower()
    if not _USERNAME.fullmatch(username):
        raise AccountError(
            f"username {value.strip()!r} is invalid (2-64 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit)"
        )
    return username


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username.strip().lower()))
    if user is None:
        raise AccountError(f"unknown user {username.strip()!r}")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def create_user(
    session: Session,
    *,
    username: str,
    password: str,
    role: str,
    unit: str | None = None,
    point: str | None = None,
    display_name: str | None = None,
) -> User:
    """Add a user.  `unit` and `point` are codes; `point` is for (and needed by) operators.

    Every role but admin needs a unit; an operator's unit defaults to its point's unit, and
    its point must lie inside its unit's subtree.
    """
    username = clean_username(username)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (expected {', '.join(ROLES)})")
    password_hash = hash_password(password)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} already exists")
    the_point: Point | None = None
    if point:
        if role != "operator":
            raise AccountError("only an operator is tied to a point (--point)")
        the_point = get_point(session, point)
    elif role == "operator":
        raise AccountError("an operator needs the point it runs (--point)")
    the_unit: Unit | None = get_unit(session, unit) if unit else None
    if the_unit is None and the_point is not None:
        the_unit = the_point.unit
    if the_unit is None and role != "admin":
        raise AccountError(f"a {role} needs a unit (--unit)")
    if the_point is not None and the_unit is not None and not _in_subtree(the_point.unit, the_unit):
        raise AccountError(f"point {the_point.code!r} is not in unit {the_unit.code!r} or below it")
    user = User(
        username=username,
        display_name=clean_name(display_name or username, "display name"),
        password_hash=password_hash,
        role=role,
        unit=the_unit,
        point=the_point,
        active=True,
        password_changed_at=utcnow(),
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """A new password: every session and API token of the user ends (`end_sessions`)."""
    user = get_user(session, username)
    user.password_hash = hash_password(password)
    user.password_changed_at = utcnow()
    end_sessions(user)
    session.flush()
    return user


def end_sessions(user: User) -> User:
    """Sign `user` out everywhere: every session cookie and API token made until now is
    refused (they carry the old `User.token_version`).  Caller flushes."""
    user.token_version = (user.token_version or 0) + 1
    return user


def set_active(user: User, active: bool) -> None:
    """Disable or enable `user`.  Either way its tokens made until now end, so that enabling
    an account again does not revive the cookies and API tokens it had before."""
    if user.active != active:
        user.active = active
        end_sessions(user)


def check_credentials(
    session: Session, username: str, password: str, now: datetime | None = None
) -> User | None:
    """The active user with this username and password, or None; records the login."""
    user = session.scalar(select(User).where(User.username == username.strip().lower()))
    if user is None or not user.active:
        verify_password(_dummy_hash(), password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(unicodedata.normalize("NFC", password))
    user.last_login_at = now or utcnow()
    session.flush()
    return user


def _in_subtree(unit: Unit | None, root: Unit) -> bool:
    """True when `unit` is `root` or below it (walks the parent links, at most 3 levels)."""
    seen: set[int] = set()
    while unit is not None and unit.id not in seen:
        if unit.id == root.id:
            return True
        seen.add(unit.id)
        unit = unit.parent
    return False


def can_see(user: User, unit: Unit) -> bool:
    """Whether `user` may see `unit`: its own unit or one below it (admin without unit: all).

    Inactive users see nothing.  Both objects must belong to an open session (the unit's
    parents are loaded as needed).
    """
    if not user.active:
        return False
    if user.unit is None:
        return user.role == "admin"
    return _in_subtree(unit, user.unit)


def ensure_first_admin(session: Session) -> str | None:
    """Create the `admin` account when there is no user at all; return its new password.

    Returns None when a user already exists.  The caller shows the password once; it is not
    stored anywhere in clear.  Two processes racing here: one of them fails on the unique
    username with `IntegrityError` (see `first_run_admin`).
    """
    if session.scalar(select(func.count()).select_from(User)):
        return None
    password = secrets.token_urlsafe(12)
    create_user(
        session,
        username=FIRST_ADMIN,
        password=password,
        role="admin",
        display_name="Quản trị hệ thống",
    )
    return password


def first_run_admin(database: Database) -> str | None:
    """`ensure_first_admin` in its own transaction; None if another process won the race."""
    try:
        return database.call(ensure_first_admin)
    except IntegrityError:
        return None
