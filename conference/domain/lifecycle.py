"""The meeting lifecycle as the media plane sees it: who enters now, start, end, attendance.

Database side of the lobby (conference/realtime/lobby.py).  Everything here is a synchronous
function on a `Session`, run by `MeetingLifecycle` through `Database.run`.

Scheduled and ad-hoc meetings
-----------------------------
A token's meeting id that names a meeting of the database (an integer id) is a
*scheduled* meeting and gets the full policy of `conference.domain.admission`:
not cancelled or ended, within the join window, an invited point or the chair's side.
Any other meeting id ("m1", "demo", or an integer that is not in the database) is an
*ad-hoc* room, admitted by its signed token alone, as before scheduling existed
(`Settings.adhoc_meetings`, true by default; when false, such a token is refused with
``unknown-meeting``).

Verdicts
--------
`evaluate` does not refuse what the lobby handles: an identity that is not invited is a
*guest* (it waits until the chair admits it), and a point that arrives while the meeting
is still ``scheduled`` waits until the chair starts it.  The room page (conference/web/site.py)
and the WebSocket both authenticate through `MeetingLifecycle.admit`, so the page of a
waiting point loads and shows the lobby; WHIP/WHEP sessions cannot wait and are refused
unless `Verdict.enters_now`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.core.errors import AccessError
from conference.domain.admission import chair_side as account_of_chair_side
from conference.domain.admission import check_admission
from conference.domain.attendance import record_event
from conference.domain.db import Database, DatabaseError
from conference.domain.errors import SchedulingError
from conference.domain.invitations import join_window
from conference.domain.meetings import end_meeting, start_meeting
from conference.domain.models import Meeting
from conference.settings import Settings
from conference.tokens import Claims

__all__ = ["MeetingLifecycle", "Verdict", "evaluate", "scheduled_id"]

logger = logging.getLogger(__name__)

#: Seconds a verdict on one token is reused (the WebSocket join asks twice in a row).
VERDICT_REUSE = 2.0


@dataclass(frozen=True)
class Verdict:
    """What the lifecycle says about one token, now."""

    #: The meeting is in the database (False: an ad-hoc room, no lobby, no attendance).
    scheduled: bool
    #: The meeting's status: "scheduled" or "live" ("adhoc" for an ad-hoc room).
    status: str = "adhoc"
    #: The chair, or a chair/secretary/admin of the meeting's unit (never waits).
    chair_side: bool = False
    #: Not invited: waits in the lobby until the chair admits or refuses it.
    guest: bool = False
    #: Planned start and the end of the join window (scheduled meetings).
    starts: datetime | None = None
    closes: datetime | None = None
    title: str = ""
    #: The meeting's recording policy ("none", "auto", "ask").
    recording_policy: str = "none"

    @property
    def enters_now(self) -> bool:
        """True when nobody has to let this participant in."""
        if not self.scheduled or self.chair_side:
            return True
        return not self.guest and self.status == "live"


def scheduled_id(meeting: str) -> int | None:
    """The database id a meeting id may name (a positive decimal integer), else None."""
    if not meeting.isascii() or not meeting.isdecimal() or len(meeting) > 18:
        return None
    value = int(meeting)
    return value if value > 0 else None


def evaluate(
    session: Session, claims: Claims, settings: Settings, now: datetime, adhoc: bool = True
) -> Verdict:
    """The verdict on `claims` at `now`; raises `AccessError` for a refusal."""
    meeting_id = scheduled_id(claims.meeting)
    meeting = session.get(Meeting, meeting_id) if meeting_id is not None else None
    if meeting is None:
        if adhoc and meeting_id is None:
            return Verdict(scheduled=False)
        # a number names a scheduled meeting only: as an ad-hoc room it would record into
        # what the library shows as that meeting (of whatever district it is)
        raise AccessError("unknown-meeting", "no such meeting", 404)
    guest = False
    try:
        check_admission(session, claims, settings, now)
    except AccessError as exc:
        if exc.code != "not-invited" or claims.role not in ("point", "viewer"):
            raise
        guest = True
    chair_side = claims.role in ("chair", "viewer") and account_of_chair_side(
        session, meeting, claims
    )
    if claims.role == "recorder":
        chair_side = True  # the server's own recorder, started by the chair
    starts, closes = join_window(meeting, settings)
    return Verdict(
        scheduled=True,
        status=meeting.status,
        chair_side=chair_side,
        guest=guest and not chair_side,
        starts=meeting.start_at,
        closes=closes,
        title=meeting.title,
        recording_policy=meeting.recording_policy,
    )


def _start(session: Session, meeting_id: int) -> tuple[str, str]:
    meeting = start_meeting(session, meeting_id)
    return meeting.status, meeting.recording_policy


def _end(session: Session, meeting_id: int) -> str:
    meeting = session.get(Meeting, meeting_id)
    if meeting is None or meeting.status in ("ended", "cancelled"):
        return meeting.status if meeting is not None else "unknown"
    return end_meeting(session, meeting_id).status


def upkeep_view(
    session: Session, ids: list[int], ended_before: datetime | None
) -> tuple[dict[int, str], list[int]]:
    """(status of each meeting of ``ids``, the live meetings whose scheduled end is
    before ``ended_before``) for the server's upkeep (conference/realtime/upkeep.py)."""
    statuses: dict[int, str] = {}
    if ids:
        rows = session.execute(select(Meeting.id, Meeting.status).where(Meeting.id.in_(ids)))
        statuses = {meeting_id: status for meeting_id, status in rows}
    overdue: list[int] = []
    if ended_before is not None:
        overdue = list(
            session.scalars(
                select(Meeting.id).where(Meeting.status == "live", Meeting.end_at < ended_before)
            )
        )
    return statuses, overdue


class MeetingLifecycle:
    """`MeetingPolicy` (conference/appkeys.py) of the server, and the lobby's database calls.

    ``admit`` raises for a refusal and lets through what the lobby decides (guests, early
    points); `verdict` gives the lobby the details.  Verdicts are remembered per meeting
    id only as "is scheduled" (`is_scheduled`), for the attendance hooks.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.scheduled: set[str] = set()
        # token id -> (monotonic time, verdict): a join asks twice (authenticate, the lobby)
        self._recent: dict[str, tuple[float, Verdict]] = {}

    async def verdict(self, claims: Claims) -> Verdict:
        if scheduled_id(claims.meeting) is None:
            if not self.settings.adhoc_meetings:
                raise AccessError("unknown-meeting", "no such meeting", 404)
            return Verdict(scheduled=False)
        key = f"{claims.meeting}/{claims.token_id}"
        recent = self._recent.get(key)
        if recent is not None and time.monotonic() - recent[0] < VERDICT_REUSE:
            return recent[1]
        now = self.clock()
        adhoc = self.settings.adhoc_meetings
        try:
            verdict = await self.database.run(
                lambda s: evaluate(s, claims, self.settings, now, adhoc)
            )
        except DatabaseError as exc:
            logger.error("admission of %s: %s", claims.meeting, exc)
            raise AccessError("unavailable", "the meetings database is unavailable", 503) from None
        if verdict.scheduled:
            self.scheduled.add(claims.meeting)
            if len(self._recent) > 1000:
                self._recent.clear()
            self._recent[key] = (time.monotonic(), verdict)
        return verdict

    async def admit(self, claims: Claims) -> None:
        await self.verdict(claims)

    def forget(self, meeting: str) -> None:
        """Drop the remembered verdicts of ``meeting`` (it was changed: cancelled,
        moved, its points edited): the next join is judged on the database again."""
        prefix = f"{meeting}/"
        for key in [k for k in self._recent if k.startswith(prefix)]:
            del self._recent[key]

    def is_scheduled(self, meeting: str) -> bool:
        return meeting in self.scheduled

    async def start(self, meeting: str) -> tuple[str, str]:
        """Mark the meeting live (keeps the point-busy-live check); its status and its
        recording policy (``none``, ``auto``, ``ask``).

        Raises `SchedulingError` (e.g. ``point-busy-live``, ``meeting-closed``).
        """
        meeting_id = scheduled_id(meeting)
        if meeting_id is None:
            raise SchedulingError("not-found", "no such meeting", status=404)
        return await self.database.run(lambda s: _start(s, meeting_id))

    async def upkeep_view(
        self, meetings: list[str], ended_before: datetime | None
    ) -> tuple[dict[str, str], list[str]]:
        ids = [i for i in (scheduled_id(m) for m in meetings) if i is not None]
        statuses, overdue = await self.database.run(lambda s: upkeep_view(s, ids, ended_before))
        return {str(k): v for k, v in statuses.items()}, [str(i) for i in overdue]

    async def end(self, meeting: str) -> str:
        """Mark the meeting ended (nothing if it already is); its status.

        Every node of a meeting ends it at once (conference/cluster): the one that
        loses the race on the meeting's version finds it ended on its second read."""
        meeting_id = scheduled_id(meeting)
        if meeting_id is None:
            return "adhoc"
        try:
            return await self.database.run(lambda s: _end(s, meeting_id))
        except SchedulingError as exc:
            if exc.code != "conflict-stale":
                raise
            return await self.database.run(lambda s: _end(s, meeting_id))

    async def record(
        self,
        meeting: str,
        *,
        identity: str,
        participant_id: str,
        kind: str,
        at: datetime,
        name: str,
        role: str,
    ) -> None:
        """Store an attendance event (join or leave)."""
        await self.database.run(
            lambda s: record_event(
                s,
                meeting,
                identity=identity,
                participant_id=participant_id,
                kind=kind,
                at=at,
                name=name,
                role=role,
            )
        )
