"""Accounts: argon2 hashes, roles scoped to a unit, the first-run admin (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from argon2 import extract_parameters, profiles
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conference.domain import accounts, db
from conference.domain.accounts import (
    AccountError,
    can_see,
    check_credentials,
    create_user,
    first_run_admin,
    get_user,
    set_password,
    verify_password,
)
from conference.domain.models import User
from conference.domain.organisation import create_point, get_unit

from ..conftest import PRODUCTION_HASHER
from .test_organisation import make_tree

PASSWORD = "mật-khẩu-đủ-dài"


def test_create_and_verify(session: Session) -> None:
    make_tree(session)
    user = create_user(
        session,
        username="ThuKy.HuyenA",
        password=PASSWORD,
        role="secretary",
        unit="huyen-a",
        display_name="Nguyễn Thị Lan",
    )
    assert user.username == "thuky.huyena"
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert verify_password(user.password_hash, PASSWORD)
    assert not verify_password(user.password_hash, PASSWORD + "x")
    assert not verify_password("not a hash", PASSWORD)
    assert check_credentials(session, "THUKY.huyena", PASSWORD) is user
    assert user.last_login_at is not None
    assert check_credentials(session, "thuky.huyena", "wrong password") is None
    assert check_credentials(session, "nobody", PASSWORD) is None
    user.active = False
    assert check_credentials(session, "thuky.huyena", PASSWORD) is None


def test_production_parameters_and_rehash_at_sign_in(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests hash cheaply (tests/codec_trap.py); the module's own hasher is RFC 9106's
    low-memory profile, and a hash made with other parameters is replaced when its owner
    signs in."""
    assert PRODUCTION_HASHER.time_cost == profiles.RFC_9106_LOW_MEMORY.time_cost
    assert PRODUCTION_HASHER.memory_cost == profiles.RFC_9106_LOW_MEMORY.memory_cost
    assert PRODUCTION_HASHER.parallelism == profiles.RFC_9106_LOW_MEMORY.parallelism
    make_tree(session)
    user = create_user(session, username="chair", password=PASSWORD, role="chair", unit="huyen-a")
    cheap = user.password_hash
    assert extract_parameters(cheap) != profiles.RFC_9106_LOW_MEMORY
    monkeypatch.setattr(accounts, "_hasher", PRODUCTION_HASHER)
    assert check_credentials(session, "chair", "wrong password") is None
    assert user.password_hash == cheap
    assert check_credentials(session, "chair", PASSWORD) is user
    assert extract_parameters(user.password_hash) == profiles.RFC_9106_LOW_MEMORY
    assert verify_password(user.password_hash, PASSWORD)


def test_set_password(database: db.Database) -> None:
    with database.session() as session:
        make_tree(session)
        create_user(session, username="chair", password=PASSWORD, role="chair", unit="huyen-a")
    with database.session() as session:
        set_password(session, "chair", "another password")
    with database.session() as session:
        assert check_credentials(session, "chair", PASSWORD) is None
        assert check_credentials(session, "chair", "another password") is not None
        with pytest.raises(AccountError, match="at least 8"):
            set_password(session, "chair", "short")
        with pytest.raises(AccountError, match="unknown user"):
            set_password(session, "ghost", PASSWORD)


def test_user_rules(session: Session) -> None:
    make_tree(session)
    create_point(session, code="p-lung-cu", name="UBND xã Lũng Cú", unit="xa-a1")
    create_point(session, code="p-pai-lung", name="UBND xã Pải Lủng", unit="xa-b1")
    cases = [
        ({"role": "chair"}, "a chair needs a unit"),
        ({"role": "operator", "unit": "xa-a1"}, "needs the point"),
        ({"role": "chair", "unit": "huyen-a", "point": "p-lung-cu"}, "only an operator"),
        ({"role": "operator", "unit": "huyen-a", "point": "p-pai-lung"}, "not in unit"),
        ({"role": "boss", "unit": "huyen-a"}, "unknown role"),
        ({"role": "chair", "unit": "nowhere"}, "unknown unit"),
        ({"role": "chair", "unit": "huyen-a", "username": "a b"}, "username"),
        ({"role": "chair", "unit": "huyen-a", "password": "short"}, "at least 8"),
    ]
    for kwargs, message in cases:
        args = {"username": "u1", "password": PASSWORD, **kwargs}
        with pytest.raises(ValueError, match=message):  # AccountError or OrganisationError
            create_user(session, **args)
    operator = create_user(
        session, username="op", password=PASSWORD, role="operator", point="p-lung-cu"
    )
    assert operator.unit is not None and operator.unit.code == "xa-a1"
    create_user(session, username="root", password=PASSWORD, role="admin")
    with pytest.raises(AccountError, match="already exists"):
        create_user(session, username="ROOT", password=PASSWORD, role="admin")


def test_can_see_walks_the_unit_tree(session: Session) -> None:
    make_tree(session)
    units = {
        code: get_unit(session, code)
        for code in ("tinh", "huyen-a", "huyen-b", "xa-a1", "xa-a2", "xa-b1")
    }
    secretary = create_user(
        session, username="tk-a", password=PASSWORD, role="secretary", unit="huyen-a"
    )
    assert {c for c, u in units.items() if can_see(secretary, u)} == {"huyen-a", "xa-a1", "xa-a2"}
    province_chair = create_user(
        session, username="ct-tinh", password=PASSWORD, role="chair", unit="tinh"
    )
    assert all(can_see(province_chair, u) for u in units.values())
    commune_admin = create_user(
        session, username="qt-xa", password=PASSWORD, role="admin", unit="xa-b1"
    )
    assert {c for c, u in units.items() if can_see(commune_admin, u)} == {"xa-b1"}
    admin = create_user(session, username="qt", password=PASSWORD, role="admin")
    assert all(can_see(admin, u) for u in units.values())
    secretary.active = False
    assert not can_see(secretary, units["huyen-a"])


def test_first_run_admin_once(database: db.Database) -> None:
    password = first_run_admin(database)
    assert password is not None and len(password) >= 12
    assert first_run_admin(database) is None
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 1
        admin = get_user(session, "admin")
        assert admin.role == "admin" and admin.unit is None
        assert check_credentials(session, "admin", password) is admin
