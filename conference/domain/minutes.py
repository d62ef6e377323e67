"""The minutes (biên bản) of a meeting: the draft built from the meeting, then edited and final.

The draft
---------
:func:`build_content` makes the whole document as JSON (stored in ``minutes.content``,
model :class:`conference.domain.models.Minutes`), in the Vietnamese administrative
layout: the issuing units (the meeting unit's parent over the unit, upper case, "UBND "
added before an administrative unit's name), "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM" /
"Độc lập - Tự do - Hạnh phúc" (fixed, in the export), the place and date line, the title,
the times (local, Asia/Ho_Chi_Minh: the real start/end when the meeting ran, else the
scheduled ones), the place of the meeting, chair and secretary, the agenda with its
presenters, the attendance of every invited point (first join, last leave; never joined =
absent, "báo vắng" when it declined the invitation) and of the other participants
(the chair's side, guests), who spoke when and for how long, and the recording links.

Speaking comes from the active-speaker timeline of the meeting's recording manifests
(``speakers``: a change of active speaker at ``at``; a turn lasts until the next change or
the end of the recording; consecutive turns of one identity are merged, turns under
:data:`MIN_TURN` seconds dropped).  Without a recording, ``speaking_source`` is
``attendance`` and the document says that speaking was not measured.

An agenda item links to the recording at the first turn of its presenter (a presenter
user by username, a free-text presenter by name) after the previous item's link, else to
the recording start.  The link is the recordings library page (:func:`recording_link`).

Editing, finality, access
-------------------------
The draft is made on first access (page or API) with the user who opens it as the
secretary (editable).  Edits carry ``version`` (optimistic concurrency: an older version is
:class:`MinutesError` ``stale``, nothing written).  Who: a secretary, chair or admin whose
unit scope contains the meeting's unit (and the meeting's own chair); operators and other
districts are refused.  :func:`finalize` (secretary or admin only) makes the minutes
read-only (edits are ``final``) and sets ``minutes_final: true`` in every recording
manifest of the meeting (outside the manifest's signature, so the recording still
verifies and ``conference recordings prune`` may delete it after the retention period).
A meeting still being recorded cannot have final minutes (``recording-active``).

Size: over 600 lines: the draft of the biên bản (its fixed administrative layout) and its
versioned edits are one document's rules; the HTTP side is web/pages/minutes.py and web/api/minutes.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from conference.core.errors import Forbidden, Refused
from conference.core.identity import identity_key, shown_identity, split_identity
from conference.domain import attendance
from conference.domain import meetings as svc
from conference.domain.db import Database
from conference.domain.errors import SchedulingError
from conference.domain.meeting_services import MeetingNotFound
from conference.domain.meetings import ZONE, local_time
from conference.domain.models import Meeting, Minutes, Point, Unit, User, utcnow
from conference.domain.permissions import (
    CurrentUser,
    can_edit_minutes,
    can_finalize_minutes,
)
from conference.recording.manifest import MANIFEST_SUFFIX, parse_iso, read_manifest, write_manifest
from conference.recording.store import recording_id, safe_component

__all__ = [
    "FORMAT",
    "TEXT_FIELDS",
    "MeetingNotFound",
    "MinutesError",
    "NotAllowed",
    "MinutesResult",
    "build_content",
    "date_line",
    "finalize",
    "finalize_and_mark",
    "load_minutes",
    "mark_recordings_final",
    "open_minutes",
    "refresh_minutes",
    "meeting_manifests",
    "recording_link",
    "save_minutes",
]

logger = logging.getLogger(__name__)

FORMAT = "conference-minutes/1"
#: A speaking turn shorter than this (seconds) is noise of the active-speaker detection.
MIN_TURN = 2.0
#: Free-text fields of the document the secretary may change, and their maximum length.
TEXT_FIELDS: dict[str, int] = {
    "issuer_parent": 200,
    "issuer": 200,
    "number": 100,
    "place": 100,
    "title": 300,
    "location": 300,
    "chair": 200,
    "secretary": 200,
    "content": 50_000,
    "conclusions": 50_000,
}
ROW_FIELDS: dict[str, int] = {"joined": 20, "left": 20, "note": 300}
_UNIT_PREFIXES = ("UBND", "ỦY BAN", "UỶ BAN", "HĐND", "HỘI ĐỒNG", "VĂN PHÒNG", "SỞ", "PHÒNG")
_PLACE_PREFIXES = ("thành phố ", "thị xã ", "thị trấn ", "huyện ", "tỉnh ", "xã ", "phường ")


class MinutesError(Refused):
    """A refused minutes operation: ``code`` (stable), English ``message``, HTTP ``status``."""


class NotAllowed(Forbidden):
    """The user sees the meeting but may not do this with its minutes (403)."""

    message = "only a secretary or an admin of the meeting's unit may do this"


@dataclass(frozen=True)
class MinutesResult:
    """A minutes row as plain data (safe to use after the session closed)."""

    meeting_id: int
    version: int
    state: str
    content: dict[str, Any]
    secretary: str | None
    finalized_at: datetime | None
    finalized_by: str | None
    updated_at: datetime
    can_edit: bool
    can_finalize: bool
    recordings_marked: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "meeting_id": self.meeting_id,
            "version": self.version,
            "state": self.state,
            "content": self.content,
            "secretary": self.secretary,
            "finalized_at": _iso(self.finalized_at),
            "finalized_by": self.finalized_by,
            "updated_at": _iso(self.updated_at),
            "can_edit": self.can_edit and self.state == "draft",
            "can_finalize": self.can_finalize and self.state == "draft",
        }


def _iso(value: datetime | None) -> str | None:
    return local_time(value).isoformat() if value is not None else None


# --- access -----------------------------------------------------------------------------------


def _meeting_for(session: Session, actor: CurrentUser, meeting_id: int | str) -> Meeting:
    try:
        meeting = svc.get_meeting(session, meeting_id)
    except SchedulingError:
        raise MeetingNotFound(str(meeting_id)) from None
    if actor.role == "operator":
        raise NotAllowed(str(meeting_id))
    if not can_edit_minutes(session, actor, meeting):
        raise MeetingNotFound(str(meeting_id))  # another district: do not leak it
    return meeting


# --- recordings -------------------------------------------------------------------------------


def meeting_manifests(root: Path, meeting_id: int) -> list[tuple[Path, dict[str, Any]]]:
    """The recording manifests of a meeting (``<root>/YYYY/MM/<id>/*.manifest.json``)."""
    if not root.is_dir():
        return []
    name = safe_component(str(meeting_id))
    found = []
    for path in sorted(root.glob(f"[0-9][0-9][0-9][0-9]/[0-9][0-9]/{name}/*{MANIFEST_SUFFIX}")):
        try:
            manifest = read_manifest(path)
        except ValueError as exc:
            logger.warning("minutes: %s", exc)
            continue
        if str(manifest.get("meeting")) == str(meeting_id):
            found.append((path, manifest))
    found.sort(key=lambda item: str(item[1].get("started_at")))
    return found


def recording_link(
    meeting_id: int, relative: str | None = None, offset: float | None = None
) -> str:
    """The library page of the recording whose manifest is at ``relative`` (under the
    recordings directory), at ``offset`` seconds (``#t=``) when given; without a manifest,
    the library's list for the meeting."""
    if relative is None:
        return f"/recordings?meeting={quote(str(meeting_id))}"
    link = f"/recordings/{recording_id(relative)}"
    if offset is not None:
        link += f"#t={max(0, int(offset))}"
    return link


def mark_recordings_final(root: Path, meeting_id: int) -> list[Path]:
    """Set ``minutes_final: true`` in every manifest of the meeting; the paths changed."""
    marked = []
    for path, manifest in meeting_manifests(root, meeting_id):
        if manifest.get("minutes_final") is True:
            continue
        manifest["minutes_final"] = True
        write_manifest(path, manifest)
        marked.append(path)
    return marked


@dataclass
class _Turn:
    identity: str
    start: datetime
    end: datetime
    offset: float  # seconds from the start of its recording
    relative: str  # its manifest, relative to the recordings directory


def _turns(manifests: list[tuple[str, dict[str, Any]]]) -> list[_Turn]:
    turns: list[_Turn] = []
    for relative, manifest in manifests:
        started = parse_iso(manifest.get("started_at"))
        end = parse_iso(manifest.get("stopped_at")) or parse_iso(manifest.get("updated_at"))
        changes = [
            (when, entry.get("identity"))
            for entry in manifest.get("speakers") or []
            if isinstance(entry, dict) and (when := parse_iso(entry.get("at"))) is not None
        ]
        changes.sort(key=lambda change: change[0])
        if started is None:
            continue
        mine: list[_Turn] = []
        for index, (when, identity) in enumerate(changes):
            until = changes[index + 1][0] if index + 1 < len(changes) else (end or when)
            if not identity or until <= when:
                continue
            if mine and mine[-1].identity == identity and (when - mine[-1].end).total_seconds() < 1:
                mine[-1].end = until
                continue
            offset = (when - started).total_seconds()
            mine.append(_Turn(str(identity), when, until, offset, relative))
        turns += [t for t in mine if (t.end - t.start).total_seconds() >= MIN_TURN]
    turns.sort(key=lambda t: t.start)
    return turns


def _of_kind(identities: list[str], kind: str) -> dict[str, list[str]]:
    """subject -> the identities among ``identities`` that may be a ``kind``'s: its keys,
    and bare ones (manifests recorded before identity kinds)."""
    found: dict[str, list[str]] = {}
    for identity in identities:
        whose, subject = split_identity(identity)
        if whose in (None, kind):
            found.setdefault(subject, []).append(identity)
    return found


def _names(session: Session, manifests: list[dict[str, Any]]) -> dict[str, str]:
    """identity (as the manifests have it) -> name: a point's own name for a point."""
    names: dict[str, str] = {}
    for manifest in manifests:
        for item in [*(manifest.get("events") or []), *(manifest.get("tracks") or [])]:
            if isinstance(item, dict) and item.get("identity") and item.get("name"):
                names.setdefault(str(item["identity"]), str(item["name"]))
    points = _of_kind(list(names), "point")
    for point in session.scalars(select(Point).where(Point.code.in_(list(points) or [""]))):
        for identity in points[point.code]:
            names[identity] = point.name
    return names


# --- the draft --------------------------------------------------------------------------------


def _issuer(unit: Unit | None) -> str:
    if unit is None:
        return ""
    name = unit.name.strip().upper()
    return name if name.startswith(_UNIT_PREFIXES) else f"UBND {name}"


def _place(unit: Unit) -> str:
    name = unit.name.strip()
    for prefix in _PLACE_PREFIXES:
        if name.lower().startswith(prefix):
            return name[len(prefix) :].strip() or name
    return name


def date_line(content: dict[str, Any]) -> str:
    """``"<place>, ngày dd tháng mm năm yyyy"`` of a minutes document."""
    try:
        day = datetime.strptime(str(content.get("date", "")), "%Y-%m-%d")
    except ValueError:
        return str(content.get("place", ""))
    return f"{content.get('place', '')}, ngày {day:%d} tháng {day:%m} năm {day:%Y}"


def _hm(value: datetime | None, seconds: bool = False) -> str:
    if value is None:
        return ""
    return local_time(value).strftime("%H:%M:%S" if seconds else "%H:%M")


def _matches(presenter: str, username: str | None, identity: str, name: str) -> bool:
    whose, subject = split_identity(identity)
    if username is not None:  # an account: never a point or a guest of that name
        return whose in (None, "account") and subject == username
    wanted = presenter.strip().casefold()
    if not wanted:
        return False
    return wanted in (subject.casefold(), name.strip().casefold()) or (
        len(wanted) >= 4 and wanted in name.casefold()
    )


def build_content(
    session: Session, meeting: Meeting, secretary: str, recordings_root: Path | None
) -> dict[str, Any]:
    """The generated draft of ``meeting`` (see the module documentation)."""
    start = meeting.started_at or meeting.start_at
    end = meeting.ended_at or meeting.end_at
    local_start = local_time(start)
    answers = {inv.point.code: inv.answer for inv in meeting.invitations if inv.active}
    rows: list[dict[str, Any]] = []
    absent: list[dict[str, Any]] = []
    known: dict[str, str] = {}  # identity key -> name, from the attendance
    for who in attendance.presence(session, meeting.id):
        if who.identity == "recorder" and who.kind == "token":
            continue
        known.setdefault(identity_key(who.kind, who.identity), who.name or who.identity)
        row: dict[str, Any] = {
            "code": who.identity,
            "name": who.name or who.identity,
            "invited": who.invited,
            "present": who.first_join is not None,
            "joined": _hm(who.first_join),
            "left": _hm(who.last_leave),
            "minutes": int(who.connected.total_seconds() // 60),
            "note": "",
        }
        if who.invited and who.first_join is None:
            declined = answers.get(who.identity) == "declined"
            row["note"] = "Vắng mặt (có báo vắng)" if declined else "Vắng mặt"
            absent.append(row)
        else:
            if not who.invited:
                chair = who.kind == "account" and who.identity == meeting.chair.username
                row["note"] = "Chủ trì" if chair else ""
            rows.append(row)
    manifests: list[tuple[str, dict[str, Any]]] = []
    if recordings_root is not None:
        manifests = [
            (path.relative_to(recordings_root).as_posix(), manifest)
            for path, manifest in meeting_manifests(recordings_root, meeting.id)
        ]
    turns = _turns(manifests)
    names = _names(session, [m for _, m in manifests])
    for key, name in known.items():
        names.setdefault(key, name)
    for row in rows:  # manifests recorded before identity kinds name people bare
        names.setdefault(row["code"], row["name"])
    accounts = _of_kind([t.identity for t in turns], "account")
    user_names = {
        identity: u.display_name
        for u in session.scalars(select(User).where(User.username.in_(list(accounts) or [""])))
        for identity in accounts[u.username]
    }
    names = {**user_names, **names}
    speaking = [
        {
            "identity": t.identity,
            "name": names.get(t.identity, shown_identity(t.identity)),
            "start": _hm(t.start, seconds=True),
            "seconds": round((t.end - t.start).total_seconds()),
            "link": recording_link(meeting.id, t.relative, t.offset),
        }
        for t in turns
    ]
    agenda = []
    after = None
    for item in meeting.agenda:
        username = item.presenter_user.username if item.presenter_user else None
        found = next(
            (
                t
                for t in turns
                if (after is None or t.start >= after)
                and _matches(item.presenter_name, username, t.identity, names.get(t.identity, ""))
            ),
            None,
        )
        if found is not None:
            after = found.start
        agenda.append(
            {
                "title": item.title,
                "presenter": item.presenter_name,
                "spoke_at": _hm(found.start, seconds=True) if found else "",
                "link": (
                    recording_link(meeting.id, found.relative, found.offset)
                    if found
                    else recording_link(meeting.id, manifests[0][0], 0)
                    if manifests
                    else None
                ),
            }
        )
    location = (
        f"Trực tuyến: điểm cầu chính tại {meeting.unit.name}, kết nối {len(answers)} điểm cầu"
        if answers
        else "Trực tuyến"
    )
    return {
        "format": FORMAT,
        "issuer_parent": _issuer(meeting.unit.parent),
        "issuer": _issuer(meeting.unit),
        "number": "Số:       /BB",
        "place": _place(meeting.unit),
        "date": local_start.date().isoformat(),
        "title": meeting.title,
        "day": local_start.strftime("%d/%m/%Y"),
        "start": _hm(start),
        "end": _hm(end),
        "location": location,
        "chair": meeting.chair.display_name,
        "secretary": secretary,
        "agenda": agenda,
        "attendance": rows + absent,
        "present_count": sum(1 for r in rows if r["invited"]),
        "invited_count": len(answers),
        "speaking_source": "recording" if manifests else "attendance",
        "speaking": speaking,
        "recording_link": recording_link(meeting.id, manifests[0][0]) if manifests else None,
        "recordings": len(manifests),
        "content": "",
        "conclusions": "",
        "generated_at": datetime.now(ZONE).isoformat(timespec="seconds"),
    }


# --- loading, saving, finalizing --------------------------------------------------------------


def _result(
    session: Session, actor: CurrentUser, minutes: Minutes, marked: int = 0
) -> MinutesResult:
    return MinutesResult(
        meeting_id=minutes.meeting_id,
        version=minutes.version,
        state=minutes.state,
        content=dict(minutes.content),
        secretary=minutes.secretary.display_name if minutes.secretary else None,
        finalized_at=minutes.finalized_at,
        finalized_by=minutes.finalized_by.display_name if minutes.finalized_by else None,
        updated_at=minutes.updated_at,
        can_edit=can_edit_minutes(session, actor, minutes.meeting),
        can_finalize=can_finalize_minutes(session, actor, minutes.meeting),
        recordings_marked=marked,
    )


def _row(session: Session, actor: CurrentUser, meeting_id: int | str) -> Minutes | None:
    meeting = _meeting_for(session, actor, meeting_id)
    return session.scalar(select(Minutes).where(Minutes.meeting_id == meeting.id))


def load_minutes(
    session: Session, actor: CurrentUser, meeting_id: int | str, recordings_root: Path | None
) -> MinutesResult:
    """The meeting's minutes; the draft is generated (``actor`` its secretary) when missing."""
    meeting = _meeting_for(session, actor, meeting_id)
    minutes = session.scalar(select(Minutes).where(Minutes.meeting_id == meeting.id))
    if minutes is None:
        minutes = Minutes(
            meeting=meeting,
            secretary_id=actor.id,
            content=build_content(session, meeting, actor.display_name, recordings_root),
            state="draft",
        )
        session.add(minutes)
        session.flush()
    return _result(session, actor, minutes)


def _check_open(minutes: Minutes | None, version: int) -> Minutes:
    if minutes is None:
        raise MinutesError("no-minutes", "open the minutes first (GET) to generate the draft", 404)
    if minutes.state == "final":
        raise MinutesError("final", "the minutes are final: they can no longer be changed")
    if minutes.version != version:
        raise MinutesError(
            "stale",
            f"the minutes changed since version {version} (now {minutes.version}): "
            "reload them and apply your changes again",
        )
    return minutes


def _clean(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise MinutesError("invalid", f"{field} must be text", 422, field)
    value = value.replace("\r\n", "\n").replace("\x00", "")
    if len(value) > limit:
        raise MinutesError("invalid", f"{field} must have at most {limit} characters", 422, field)
    return value if field in ("content", "conclusions") else value.strip()


def save_minutes(
    session: Session,
    actor: CurrentUser,
    meeting_id: int | str,
    version: int,
    changes: dict[str, Any],
) -> MinutesResult:
    """Apply ``changes`` (:data:`TEXT_FIELDS`, and ``attendance``: a list of
    ``{"code", "joined"?, "left"?, "note"?}``) to the draft of version ``version``."""
    minutes = _check_open(_row(session, actor, meeting_id), version)
    content = dict(minutes.content)
    for field, value in changes.items():
        if field in TEXT_FIELDS:
            content[field] = _clean(value, field, TEXT_FIELDS[field])
        elif field == "attendance":
            content["attendance"] = _attendance(content.get("attendance") or [], value)
        else:
            raise MinutesError("invalid", f"{field} cannot be changed", 422, field)
    minutes.content = content
    minutes.updated_at = utcnow()
    _flush(session, version)
    return _result(session, actor, minutes)


def _flush(session: Session, version: int) -> None:
    """Flush; a row changed by a concurrent transaction meanwhile is ``stale``."""
    try:
        session.flush()
    except StaleDataError:
        raise MinutesError(
            "stale", f"the minutes changed since version {version}: reload them"
        ) from None


#: Notes the draft writes itself: a refresh replaces them (other notes are the secretary's).
_GENERATED_NOTES = ("", "Vắng mặt", "Vắng mặt (có báo vắng)", "Chủ trì")


def refresh_minutes(
    session: Session,
    actor: CurrentUser,
    meeting_id: int | str,
    version: int,
    recordings_root: Path | None,
) -> MinutesResult:
    """Generate the draft again from the meeting, its attendance and recordings (e.g. when
    it was opened during the meeting), keeping the text fields and the secretary's notes."""
    minutes = _check_open(_row(session, actor, meeting_id), version)
    old = dict(minutes.content)
    content = build_content(
        session, minutes.meeting, str(old.get("secretary", "")), recordings_root
    )
    for field in TEXT_FIELDS:
        if field in old:
            content[field] = old[field]
    notes = {str(r.get("code")): r.get("note", "") for r in old.get("attendance") or []}
    for row in content["attendance"]:
        note = notes.get(row["code"], "")
        if note not in _GENERATED_NOTES:
            row["note"] = note
    minutes.content = content
    minutes.updated_at = utcnow()
    _flush(session, version)
    return _result(session, actor, minutes)


async def open_minutes(
    database: Database, actor: CurrentUser, meeting_id: int | str, recordings_root: Path | None
) -> MinutesResult:
    """:func:`load_minutes` in a transaction; when two users open a new draft at once, the
    second insert fails on the unique meeting and is retried (it then reads the first)."""
    try:
        return await database.run(lambda s: load_minutes(s, actor, meeting_id, recordings_root))
    except IntegrityError:
        return await database.run(lambda s: load_minutes(s, actor, meeting_id, recordings_root))


def _attendance(rows: list[dict[str, Any]], changes: Any) -> list[dict[str, Any]]:
    if not isinstance(changes, list):
        raise MinutesError("invalid", "attendance must be a list", 422, "attendance")
    by_code = {str(row.get("code")): dict(row) for row in rows}
    for index, change in enumerate(changes):
        where = f"attendance[{index}]"
        if not isinstance(change, dict) or str(change.get("code")) not in by_code:
            raise MinutesError("invalid", f"{where}: unknown point code", 422, where)
        row = by_code[str(change["code"])]
        for name, value in change.items():
            if name == "code":
                continue
            if name not in ROW_FIELDS:
                raise MinutesError("invalid", f"{where}.{name} cannot be changed", 422, where)
            row[name] = _clean(value, f"{where}.{name}", ROW_FIELDS[name])
    return [by_code[str(row.get("code"))] for row in rows]


def finalize(
    session: Session,
    actor: CurrentUser,
    meeting_id: int | str,
    version: int,
    recordings_root: Path | None,
) -> MinutesResult:
    """Mark the minutes final (read-only from now on), in the database only.

    Call :func:`finalize_and_mark` (or :func:`mark_recordings_final` after the commit):
    the manifests are marked only once the final state is committed, so a failed commit
    never leaves a recording deletable whose minutes are not final.
    """
    minutes = _row(session, actor, meeting_id)
    if minutes is not None and not can_finalize_minutes(session, actor, minutes.meeting):
        raise NotAllowed(str(meeting_id))
    minutes = _check_open(minutes, version)
    manifests = meeting_manifests(recordings_root, minutes.meeting_id) if recordings_root else []
    if any(m.get("state") in ("recording", "finalizing") for _, m in manifests):
        raise MinutesError(
            "recording-active", "the meeting is still being recorded: stop the recording first"
        )
    minutes.state = "final"
    minutes.finalized_at = utcnow()
    minutes.finalized_by_id = actor.id
    minutes.updated_at = minutes.finalized_at
    _flush(session, version)
    return _result(session, actor, minutes)


async def finalize_and_mark(
    database: Database,
    actor: CurrentUser,
    meeting_id: int | str,
    version: int,
    recordings_root: Path | None,
) -> MinutesResult:
    """:func:`finalize` (committed), then ``minutes_final: true`` in the meeting's manifests.

    A manifest that cannot be written is logged and left as it was (the recording is then
    kept: the safe side); ``recordings_marked`` counts those changed.
    """
    result = await database.run(lambda s: finalize(s, actor, meeting_id, version, recordings_root))
    if recordings_root is None:
        return result
    try:
        marked = await asyncio.to_thread(mark_recordings_final, recordings_root, result.meeting_id)
    except OSError as exc:
        logger.error("minutes of meeting %s: cannot mark the recordings: %r", meeting_id, exc)
        marked = []
    return replace(result, recordings_marked=len(marked))
