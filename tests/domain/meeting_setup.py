"""Shared set-up for the meeting tests: a district with communes, points and users."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from conference.domain.meetings import ZONE
from conference.domain.models import User
from conference.domain.organisation import create_point, create_unit, get_unit

#: A Monday, 08:00 in Asia/Ho_Chi_Minh (01:00 UTC).
MONDAY_8 = datetime(2030, 1, 7, 8, 0, tzinfo=ZONE)


@dataclass
class Org:
    district: str
    other_district: str
    points: list[str]
    chair: str
    other_chair: str
    secretary: str


def add_user(session: Session, username: str, role: str, unit: str | None) -> User:
    """A user without an argon2 hash (the meeting tests never log in; hashing is slow)."""
    user = User(
        username=username,
        display_name=f"Ông {username}",
        password_hash="!",
        role=role,
        unit=get_unit(session, unit) if unit else None,
    )
    session.add(user)
    session.flush()
    return user


def make_org(session: Session, n_points: int = 3, email: bool = True) -> Org:
    create_unit(session, code="tinh", name="Tỉnh Lào Cai", kind="province")
    create_unit(session, code="huyen-a", name="Huyện Bắc Hà", kind="district", parent="tinh")
    create_unit(session, code="huyen-b", name="Huyện Sa Pa", kind="district", parent="tinh")
    points = []
    for i in range(1, n_points + 1):
        commune = f"xa-{i:02d}"
        create_unit(session, code=commune, name=f"Xã số {i}", kind="commune", parent="huyen-a")
        code = f"ubnd-xa-{i:02d}"
        create_point(
            session,
            code=code,
            name=f"UBND xã số {i}",
            unit=commune,
            email=f"vanphong{i:02d}@xa{i:02d}.example.vn" if email else None,
        )
        points.append(code)
    add_user(session, "chu-tich", "chair", "huyen-a")
    add_user(session, "chu-tich-b", "chair", "huyen-b")
    add_user(session, "thu-ky", "secretary", "huyen-a")
    return Org("huyen-a", "huyen-b", points, "chu-tich", "chu-tich-b", "thu-ky")


def hours(n: float) -> timedelta:
    return timedelta(hours=n)
