"""Who acts, and what they may see: the acting user and its scope of units.

The pages, the JSON API and the minutes all decide with these (one actor, one scope):
a user sees its unit and the units below it; an admin without a unit sees everything;
any other user without a unit sees no unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from conference.domain.models import Meeting, User
from conference.domain.organisation import subtree_ids

__all__ = [
    "MINUTES_EDIT_ROLES",
    "MINUTES_FINAL_ROLES",
    "CurrentUser",
    "can_edit_meeting",
    "can_edit_minutes",
    "can_finalize_minutes",
    "can_view_meeting",
    "in_scope",
    "point_invited",
    "visible_unit_ids",
]

#: who may write a meeting's minutes (biên bản), in scope, and who may make them final
MINUTES_EDIT_ROLES = ("admin", "chair", "secretary")
MINUTES_FINAL_ROLES = ("admin", "secretary")


@dataclass(frozen=True)
class CurrentUser:
    """A snapshot of the signed-in user, taken when the request was authenticated."""

    id: int
    username: str
    display_name: str
    role: str
    unit_id: int | None
    unit_code: str | None
    unit_name: str | None
    point_id: int | None
    point_code: str | None
    #: "session" (browser cookie) or "api" (bearer token).
    via: str
    token_id: str
    expires_at: datetime
    csrf_token: str = field(default="", repr=False)

    @classmethod
    def of(
        cls, user: User, via: str, token_id: str, expires_at: datetime, csrf_token: str = ""
    ) -> CurrentUser:
        """The snapshot of ``user`` (its unit and point loaded) for one request."""
        return cls(
            id=user.id,
            username=user.username,
            display_name=user.display_name,
            role=user.role,
            unit_id=user.unit_id,
            unit_code=user.unit.code if user.unit else None,
            unit_name=user.unit.name if user.unit else None,
            point_id=user.point_id,
            point_code=user.point.code if user.point else None,
            via=via,
            token_id=token_id,
            expires_at=expires_at,
            csrf_token=csrf_token,
        )

    def has_role(self, *roles: str) -> bool:
        return not roles or self.role in roles

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "display_name": self.display_name,
            "role": self.role,
            "unit": self.unit_code,
            "unit_name": self.unit_name,
            "point": self.point_code,
            "expires_at": self.expires_at.isoformat(),
        }


def visible_unit_ids(session: Session, user: CurrentUser) -> set[int] | None:
    """The ids of the units `user` sees (its unit's subtree); None means every unit."""
    if user.unit_id is None:
        return None if user.role == "admin" else set()
    return subtree_ids(session, user.unit_id)


# --- meetings ------------------------------------------------------------------------------


def in_scope(session: Session, actor: CurrentUser, meeting: Meeting) -> bool:
    """Whether the meeting's unit is in `actor`'s scope."""
    scope = visible_unit_ids(session, actor)
    return scope is None or meeting.unit_id in scope


def point_invited(meeting: Meeting, point_id: int | None) -> bool:
    """Whether the point has an active invitation to the meeting."""
    return point_id is not None and any(
        inv.point_id == point_id and inv.active for inv in meeting.invitations
    )


def can_view_meeting(session: Session, actor: CurrentUser, meeting: Meeting) -> bool:
    """An admin, secretary or chair whose scope holds the meeting's unit, the meeting's
    own chair, and a point operator whose point is invited."""
    if actor.role == "operator":
        return point_invited(meeting, actor.point_id)
    return actor.id == meeting.chair_id or in_scope(session, actor, meeting)


def can_edit_meeting(session: Session, actor: CurrentUser, meeting: Meeting) -> bool:
    """The meeting's own chair, and an admin whose scope holds the meeting's unit
    (secretaries and other chairs of the unit see it, they do not change it)."""
    if actor.role == "chair":
        return actor.id == meeting.chair_id
    return actor.role == "admin" and in_scope(session, actor, meeting)


# --- minutes (biên bản) --------------------------------------------------------------------


def can_edit_minutes(session: Session, actor: CurrentUser, meeting: Meeting) -> bool:
    """A secretary, chair or admin of the meeting unit's scope, or the meeting's chair."""
    if actor.role not in MINUTES_EDIT_ROLES:
        return False
    return actor.id == meeting.chair_id or in_scope(session, actor, meeting)


def can_finalize_minutes(session: Session, actor: CurrentUser, meeting: Meeting) -> bool:
    """A secretary or admin of the meeting unit's scope."""
    return actor.role in MINUTES_FINAL_ROLES and in_scope(session, actor, meeting)
