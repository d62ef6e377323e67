"""Every rule of conference/domain/permissions.py, for every kind of actor.

A province (tinh) with two districts: the meeting belongs to district A (huyen-a), its
chair is chu-tich, and commune point ubnd-xa-01 is invited (ubnd-xa-02 is not).  The
actors: the meeting's chair, another chair of district A, the chair of district B, the
secretaries of A and B, admins of the province, of district B and without a unit, the
operators of the invited and of the uninvited point, and a secretary without a unit.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.domain.meetings import create_meeting
from conference.domain.models import Meeting, Point, User
from conference.domain.permissions import (
    CurrentUser,
    can_edit_meeting,
    can_edit_minutes,
    can_finalize_minutes,
    can_view_meeting,
    visible_unit_ids,
)

from .meeting_setup import MONDAY_8, add_user, hours, make_org

# actor -> (view meeting, edit meeting, edit minutes, finalize minutes)
EXPECTED = {
    "chu-tich": (True, True, True, False),  # the meeting's own chair
    "pho-chu-tich": (True, False, True, False),  # another chair of the district
    "chu-tich-b": (False, False, False, False),  # a chair of the other district
    "thu-ky": (True, False, True, True),  # the district's secretary
    "thu-ky-b": (False, False, False, False),  # the other district's secretary
    "qt-tinh": (True, True, True, True),  # an admin of the province (the subtree)
    "qt-b": (False, False, False, False),  # an admin of the other district
    "qt": (True, True, True, True),  # an admin without a unit: everything
    "vh-xa-01": (True, False, False, False),  # the operator of the invited point
    "vh-xa-02": (False, False, False, False),  # the operator of a point not invited
    "thu-ky-khong-don-vi": (False, False, False, False),  # a secretary without a unit
}


def actor(user: User) -> CurrentUser:
    return CurrentUser.of(user, "session", "t", datetime(2040, 1, 1, tzinfo=UTC))


@pytest.fixture
def world(session: Session) -> tuple[Meeting, dict[str, CurrentUser]]:
    make_org(session, n_points=2)
    add_user(session, "pho-chu-tich", "chair", "huyen-a")
    add_user(session, "thu-ky-b", "secretary", "huyen-b")
    add_user(session, "qt-tinh", "admin", "tinh")
    add_user(session, "qt-b", "admin", "huyen-b")
    add_user(session, "qt", "admin", None)
    add_user(session, "thu-ky-khong-don-vi", "secretary", None)
    for index in (1, 2):
        operator = add_user(session, f"vh-xa-{index:02d}", "operator", f"xa-{index:02d}")
        point = session.scalar(select(Point).where(Point.code == f"ubnd-xa-{index:02d}"))
        assert point is not None
        operator.point = point
    meeting = create_meeting(
        session,
        title="Giao ban tuần",
        unit="huyen-a",
        chair="chu-tich",
        start=MONDAY_8,
        end=MONDAY_8 + hours(1),
        points=["ubnd-xa-01"],
    ).meeting
    session.flush()
    users = session.scalars(select(User)).all()
    return meeting, {user.username: actor(user) for user in users}


def test_every_rule_for_every_actor(
    session: Session, world: tuple[Meeting, dict[str, CurrentUser]]
) -> None:
    meeting, actors = world
    found = {
        name: (
            can_view_meeting(session, actors[name], meeting),
            can_edit_meeting(session, actors[name], meeting),
            can_edit_minutes(session, actors[name], meeting),
            can_finalize_minutes(session, actors[name], meeting),
        )
        for name in EXPECTED
    }
    assert found == EXPECTED


def test_the_scope_of_units(
    session: Session, world: tuple[Meeting, dict[str, CurrentUser]]
) -> None:
    _, actors = world
    codes = {}
    for name in ("qt-tinh", "thu-ky", "qt", "thu-ky-khong-don-vi", "vh-xa-01"):
        scope = visible_unit_ids(session, actors[name])
        codes[name] = None if scope is None else len(scope)
    # the province and its 2 districts and 2 communes; a district and its 2 communes;
    # an admin without a unit: every unit; another user without a unit: none; an
    # operator: its commune
    assert codes == {"qt-tinh": 5, "thu-ky": 3, "qt": None, "thu-ky-khong-don-vi": 0, "vh-xa-01": 1}
