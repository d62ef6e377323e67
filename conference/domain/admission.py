"""Who may enter a meeting's room: a `MeetingPolicy` (conference/appkeys.py) on the database.

`check_admission(session, claims, settings, now)` refuses, with an `AccessError` (code,
message, HTTP status), unless:

* the token's meeting is a meeting of the database (``unknown-meeting``, 404) that is not
  cancelled (``meeting-cancelled``) or ended (``meeting-ended``);
* now is within its join window: from 30 minutes before the start to
  `Settings.link_hours_after_end` after the end (``too-early``, ``too-late``); a live
  meeting admits until it is ended, whatever its planned end;
* the identity belongs there: role ``point`` -> an invited point (its code);
  role ``chair`` -> the meeting's chair or a chair, secretary or admin whose unit covers
  the meeting's unit (``not-invited``); role ``viewer`` -> either; role ``recorder`` is the
  server's own recorder.  A point is looked up only for a point's identity (``pt:CODE``)
  and an account only for an account's (``u:USERNAME``): a point whose code is a
  username never passes as that account, nor the reverse; guests' and hand-made
  tokens' identities (``g:``, ``t:``) are never invited (conference/core/identity.py).
  A token made before identity kinds (a bare ``sub``) is read by its role, as then:
  ``point`` -> a point, ``chair`` -> an account, ``viewer`` -> either.

The server uses it through `conference.domain.lifecycle.MeetingLifecycle`, which turns
``not-invited`` into a guest waiting in the lobby and unknown meetings into ad-hoc rooms.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.core.errors import AccessError
from conference.domain.invitations import join_window
from conference.domain.models import Invitation, Meeting, Point, User
from conference.domain.organisation import subtree_ids
from conference.settings import Settings
from conference.tokens import Claims

__all__ = ["CHAIR_SIDE_ROLES", "chair_side", "check_admission"]

#: Account roles that count as "the chair's side" of a meeting of their unit.
CHAIR_SIDE_ROLES = ("chair", "secretary", "admin")


def _invited_point(session: Session, meeting: Meeting, code: str) -> bool:
    return (
        session.scalar(
            select(Invitation.id)
            .join(Point, Point.id == Invitation.point_id)
            .where(
                Invitation.meeting_id == meeting.id,
                Invitation.active.is_(True),
                Point.code == code,
            )
        )
        is not None
    )


def _chair_side(session: Session, meeting: Meeting, username: str) -> bool:
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active or user.role not in CHAIR_SIDE_ROLES:
        return False
    if user.id == meeting.chair_id or user.unit_id is None:
        return True
    return meeting.unit_id in subtree_ids(session, user.unit_id)


def chair_side(session: Session, meeting: Meeting, claims: Claims) -> bool:
    """Whether ``claims`` is an account of the meeting's chair side (its role aside)."""
    return claims.kind == "account" and _chair_side(session, meeting, claims.subject)


def check_admission(session: Session, claims: Claims, settings: Settings, now: datetime) -> None:
    """Raise `AccessError` unless `claims` may enter its meeting at `now`."""
    try:
        meeting_id = int(claims.meeting)
    except ValueError:
        meeting_id = 0
    meeting = session.get(Meeting, meeting_id) if meeting_id > 0 else None
    if meeting is None:
        raise AccessError("unknown-meeting", "no such meeting", 404)
    if meeting.status == "cancelled":
        raise AccessError("meeting-cancelled", "this meeting was cancelled", 403)
    if meeting.status == "ended":
        raise AccessError("meeting-ended", "this meeting has ended", 403)
    opens, closes = join_window(meeting, settings)
    if now < opens:
        raise AccessError("too-early", "the meeting room opens 30 minutes before the start", 403)
    if now > closes and meeting.status != "live":
        raise AccessError("too-late", "the meeting is over", 403)
    role = claims.role
    if role == "recorder":
        return
    # a viewer's token of before kinds named a point or an account: either, as then
    point = claims.kind == "point" or (claims.bare and role == "viewer")
    allowed = (
        role in ("point", "viewer") and point and _invited_point(session, meeting, claims.subject)
    ) or (role in ("chair", "viewer") and chair_side(session, meeting, claims))
    if not allowed:
        raise AccessError("not-invited", "this participant is not invited to the meeting", 403)
