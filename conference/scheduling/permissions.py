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

from conference.scheduling.organisation import subtree_ids

__all__ = ["CurrentUser", "visible_unit_ids"]


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
