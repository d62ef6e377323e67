"""The recordings library: what is on disk, which meeting each belongs to, who may see it.

A recording is a sealed manifest under the recordings root (conference/recording/store.py),
named outside by :func:`~conference.recording.store.recording_id`, never by its path.
:func:`library` lists the recordings a user may see with their meetings (a user sees the
recordings of meetings in its unit scope, see conference/domain/permissions.py), and
the views (timeline, attendance) are what the pages and the API show.  Used by the
library pages (conference/web/pages/library.py) and the JSON API (conference/web/api/library.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from conference.core.identity import shown_identity
from conference.domain.meetings import ZONE
from conference.domain.models import Meeting, Unit
from conference.domain.organisation import subtree_ids
from conference.domain.permissions import CurrentUser, visible_unit_ids
from conference.recording import jobs
from conference.recording.manifest import MANIFEST_SUFFIX, parse_iso, read_manifest
from conference.recording.store import PathError, inside, manifests, recording_id

logger = logging.getLogger(__name__)

LIBRARY_ROLES = ("admin", "chair", "secretary")
ID_PATTERN = re.compile(r"[0-9a-f]{16}")
#: a media file's name inside a recording's folder
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
MAX_ROWS = 500
CONTENT_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska"}


# --- the recordings on disk --------------------------------------------------------------------


@dataclass(frozen=True)
class MediaFile:
    """A file of a recording that may be played or downloaded."""

    name: str
    kind: str  # "composed", "video" or "audio"
    content_type: str
    size: int
    label: str
    #: Seconds from the recording's start to this file's time 0 (for timeline jumps).
    base: float
    path: Path = field(repr=False)


@dataclass
class Recording:
    """One manifest of the recordings directory (times are UTC)."""

    id: str
    relative: str
    path: Path
    manifest: dict[str, Any]

    @property
    def meeting(self) -> str:
        return str(self.manifest.get("meeting") or "")

    @property
    def number(self) -> int | None:
        """The scheduled meeting it recorded; None for an ad-hoc room.  The manifest says
        which (``scheduled``); one written before it did is judged by its meeting id."""
        if self.manifest.get("scheduled") is False:
            return None
        return meeting_number(self.meeting)

    @property
    def stem(self) -> str:
        return self.path.name.removesuffix(MANIFEST_SUFFIX)

    @property
    def started_at(self) -> datetime | None:
        return parse_iso(self.manifest.get("started_at"))

    @property
    def stopped_at(self) -> datetime | None:
        return parse_iso(self.manifest.get("stopped_at")) or parse_iso(
            self.manifest.get("updated_at")
        )

    @property
    def state(self) -> str:
        return str(self.manifest.get("state") or "unknown")

    @property
    def duration(self) -> float | None:
        start, stop = self.started_at, self.stopped_at
        return max(0.0, (stop - start).total_seconds()) if start and stop else None

    def offset(self, when: object) -> float | None:
        """Seconds from the recording's start to the ISO time ``when``."""
        moment, start = parse_iso(when), self.started_at
        return (moment - start).total_seconds() if moment and start else None

    def names(self) -> dict[str, str]:
        """identity -> display name, from the tracks and events."""
        found: dict[str, str] = {}
        for item in [*self.manifest.get("tracks", []), *self.manifest.get("events", [])]:
            if isinstance(item, dict) and item.get("identity") and item.get("name"):
                found.setdefault(str(item["identity"]), str(item["name"]))
        return found

    def composition(self) -> dict[str, Any] | None:
        """The composition job's status (state, progress 0-100, output, error), or None."""
        try:
            status = jobs.job_status(self.path)
        except Exception as exc:  # another module's failure must not break the library
            logger.warning("library: job_status(%s) failed: %r", self.relative, exc)
            return None
        if not isinstance(status, dict) or status.get("state") in (None, "", "none"):
            return None
        progress = status.get("progress")  # percent, 0 to 100
        if isinstance(progress, int | float):
            progress = round(min(100.0, max(0.0, float(progress))), 1)
        else:
            progress = None
        state = str(status.get("state"))
        if state == "done":
            progress = 100.0
        return {
            "state": state,
            "progress": progress,
            "output": status.get("output"),
            "error": status.get("error"),
            # the MP4 of an earlier composition, offered while this one is queued or
            # running, and kept when it failed
            "previous": state != "done" and self._earlier() is not None,
        }

    def _inside(self, candidate: Path) -> Path | None:
        """``candidate`` if it is a file that resolves inside the recording's folder."""
        try:
            resolved = inside(self.path.parent, candidate)
        except (PathError, OSError):
            return None
        return resolved if resolved.is_file() else None

    def _earlier(self) -> Path | None:
        """``<start>.mp4`` when it exists: a composition only ever renames a finished file
        there (conference/recording/compose.py writes ``.mp4.part`` first), so it is whole."""
        return self._inside(self.path.parent / f"{self.stem}.mp4")

    def _composed(self, composition: dict[str, Any] | None) -> Path | None:
        """The composed MP4 to offer: the job's output when it is done; otherwise (no job
        known, or composing again, or a composition again that failed) the earlier one."""
        if composition is None or composition["state"] != "done":
            return self._earlier()
        output = composition.get("output")
        directory = self.path.parent
        candidate = directory / f"{self.stem}.mp4"
        if isinstance(output, str) and output:
            candidate = Path(output) if Path(output).is_absolute() else directory / output
        return self._inside(candidate)

    def files(self, composition: dict[str, Any] | None = None) -> list[MediaFile]:
        """The composed MP4 (when done) then every track file that exists, safely inside."""
        found: list[MediaFile] = []
        composed = self._composed(composition)
        if composed is not None:
            found.append(
                MediaFile(
                    composed.name,
                    "composed",
                    "video/mp4",
                    composed.stat().st_size,
                    "",
                    0.0,
                    composed,
                )
            )
        directory = self.path.parent
        for track in self.manifest.get("tracks", []):
            if not isinstance(track, dict):
                continue
            name = str(track.get("file") or "")
            if not SAFE_NAME.fullmatch(name) or any(f.name == name for f in found):
                continue
            try:
                resolved = inside(directory, directory / name)
            except (PathError, OSError):
                continue
            if not resolved.is_file():
                continue
            kind = "audio" if track.get("kind") == "audio" else "video"
            content_type = CONTENT_TYPES.get(resolved.suffix.lower(), "application/octet-stream")
            if kind == "audio" and content_type == "video/webm":
                content_type = "audio/webm"
            label = " · ".join(
                str(track.get(k)) for k in ("name", "source") if track.get(k) is not None
            )
            base = self.offset(track.get("first_media_utc") or track.get("added_at")) or 0.0
            found.append(
                MediaFile(
                    name,
                    kind,
                    content_type,
                    resolved.stat().st_size,
                    label or name,
                    max(0.0, base),
                    resolved,
                )
            )
        return found


#: Parsed manifests by resolved path, kept while their (mtime, size) stay the same.
_CACHE: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
_CACHE_LIMIT = 5000


def _load(root: Path, path: Path) -> Recording | None:
    """The recording of the manifest ``path`` (None: outside ``root`` or unreadable)."""
    try:
        resolved = inside(root, path)
        relative = path.relative_to(root).as_posix()
        info = resolved.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        cached = _CACHE.get(resolved)
        if cached is not None and cached[0] == stamp:
            manifest = cached[1]
        else:
            manifest = read_manifest(resolved)
            if len(_CACHE) >= _CACHE_LIMIT:
                _CACHE.clear()
            _CACHE[resolved] = (stamp, manifest)
    except (PathError, OSError, ValueError) as exc:
        logger.debug("library: skipping %s: %s", path, exc)
        return None
    # a shallow copy: callers never change the cached manifest's contents
    return Recording(recording_id(relative), relative, resolved, dict(manifest))


def scan(root: Path) -> list[Recording]:
    """Every readable manifest under ``root`` that resolves inside it, newest first."""
    found = [r for path in manifests(root) if (r := _load(root, path)) is not None]
    found.sort(key=lambda r: r.started_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    return found


def find(root: Path, wanted: str) -> Recording | None:
    """The recording with id ``wanted`` (None for a malformed or unknown id).

    Only the manifest whose path hashes to ``wanted`` is read.
    """
    if not ID_PATTERN.fullmatch(wanted):
        return None
    for path in manifests(root):
        if recording_id(path.relative_to(root).as_posix()) == wanted:
            return _load(root, path)
    return None


def continuation(root: Path, recording: Recording) -> tuple[Recording | None, list[Recording]]:
    """The recording ``recording`` carries on (its manifest's ``continues``: another
    node of the meeting was making it and died or shut down) and those that carry it
    on, all of the same meeting and found under ``root`` (a node with recordings of its
    own elsewhere: not found, None)."""
    earlier, later = None, []
    continues = recording.manifest.get("continues")
    wanted = None
    if isinstance(continues, dict):
        directory, stamp = continues.get("directory"), continues.get("recording")
        if isinstance(directory, str) and isinstance(stamp, str):
            wanted = (directory, stamp)
    for other in scan(root):
        if other.meeting != recording.meeting or other.relative == recording.relative:
            continue
        if wanted == (other.manifest.get("directory"), other.manifest.get("recording")):
            earlier = other
        after = other.manifest.get("continues")
        if isinstance(after, dict) and (after.get("directory"), after.get("recording")) == (
            recording.manifest.get("directory"),
            recording.manifest.get("recording"),
        ):
            later.append(other)
    later.sort(key=lambda r: r.started_at or datetime.min.replace(tzinfo=UTC))
    return earlier, later


# --- meetings and access ------------------------------------------------------------------------


@dataclass(frozen=True)
class MeetingInfo:
    """What the library shows of a scheduled meeting."""

    id: int
    title: str
    unit_id: int
    unit_code: str
    unit_name: str
    chair_id: int
    chair_username: str
    chair_name: str
    agenda: tuple[tuple[str, str], ...]


def meeting_number(text: str) -> int | None:
    """The meeting's number in a manifest's ``meeting`` field (None: an ad-hoc room)."""
    return int(text) if text.isdigit() and len(text) < 10 else None


def load_meetings(session: Session, ids: Iterable[int]) -> dict[int, MeetingInfo]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = (
        select(Meeting)
        .where(Meeting.id.in_(wanted))
        .options(
            selectinload(Meeting.unit), selectinload(Meeting.chair), selectinload(Meeting.agenda)
        )
    )
    found = {}
    for m in session.scalars(query):
        agenda = tuple(
            (a.title, a.presenter or (a.presenter_user.display_name if a.presenter_user else ""))
            for a in sorted(m.agenda, key=lambda a: a.position)
        )
        found[m.id] = MeetingInfo(
            m.id,
            m.title,
            m.unit_id,
            m.unit.code,
            m.unit.name,
            m.chair_id,
            m.chair.username,
            m.chair.display_name,
            agenda,
        )
    return found


def may_see(user: CurrentUser, info: MeetingInfo | None, scope: set[int] | None) -> bool:
    """The access rule of the module docstring (``scope``: ``visible_unit_ids``)."""
    if info is None:
        return user.role == "admin" and scope is None
    if user.id == info.chair_id:
        return True
    return user.role in ("admin", "secretary") and (scope is None or info.unit_id in scope)


@dataclass(frozen=True)
class Filters:
    """The list filters; dates are local (Asia/Ho_Chi_Minh), both inclusive."""

    date_from: date | None = None
    date_to: date | None = None
    unit: str = ""
    title: str = ""
    chair: str = ""

    @classmethod
    def parse(cls, query: Any) -> tuple[Filters, list[str]]:
        """Filters from a query mapping, and the names of the ill-formed fields."""
        bad: list[str] = []

        def day(name: str) -> date | None:
            text = str(query.get(name) or "").strip()
            if not text:
                return None
            try:
                return date.fromisoformat(text)
            except ValueError:
                bad.append(name)
                return None

        def text(name: str) -> str:
            return str(query.get(name) or "").strip()[:200]

        return cls(day("from"), day("to"), text("unit"), text("q"), text("chair")), bad


@dataclass
class Row:
    """A recording as the list shows it."""

    recording: Recording
    meeting: MeetingInfo | None

    @property
    def title(self) -> str:
        return self.meeting.title if self.meeting else self.recording.meeting

    @property
    def local_start(self) -> datetime | None:
        start = self.recording.started_at
        return start.astimezone(ZONE) if start else None


@dataclass
class Library:
    """The recordings one user may see, with their meetings (see :func:`library`)."""

    rows: list[Row]
    units: list[tuple[str, str]]  # (code, name) of the units in the user's scope


def library(session: Session, user: CurrentUser, root: Path, filters: Filters) -> Library:
    """The recordings ``user`` may see under ``root``, filtered, newest first."""
    scope = visible_unit_ids(session, user)
    recordings = scan(root)
    ids = [i for r in recordings if (i := r.number) is not None]
    meetings = load_meetings(session, ids)
    unit_query = select(Unit).order_by(Unit.name)
    if scope is not None:
        unit_query = unit_query.where(Unit.id.in_(scope or {-1}))
    units = [(u.code, u.name) for u in session.scalars(unit_query)]
    unit_filter: set[int] | None = None
    if filters.unit:
        unit_id = session.scalar(select(Unit.id).where(Unit.code == filters.unit))
        unit_filter = subtree_ids(session, unit_id) if unit_id is not None else set()
    title = filters.title.casefold()
    chair = filters.chair.casefold()
    rows: list[Row] = []
    for recording in recordings:
        number = recording.number
        info = meetings.get(number) if number is not None else None
        if not may_see(user, info, scope):
            continue
        local = recording.started_at.astimezone(ZONE).date() if recording.started_at else None
        if filters.date_from and (local is None or local < filters.date_from):
            continue
        if filters.date_to and (local is None or local > filters.date_to):
            continue
        if unit_filter is not None and (info is None or info.unit_id not in unit_filter):
            continue
        row = Row(recording, info)
        if title and title not in row.title.casefold():
            continue
        if chair and (
            info is None
            or (chair not in info.chair_name.casefold() and chair not in info.chair_username)
        ):
            continue
        rows.append(row)
        if len(rows) >= MAX_ROWS:
            break
    return Library(rows, units)


# --- views for the templates --------------------------------------------------------------------


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = int(round(max(0.0, seconds)))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _local(value: object) -> str:
    moment = parse_iso(value)
    return moment.astimezone(ZONE).strftime("%H:%M:%S") if moment else ""


def timeline(recording: Recording) -> list[dict[str, Any]]:
    """Speaker segments: who, from (offset, local time), how long."""
    names = recording.names()
    entries = [s for s in recording.manifest.get("speakers", []) if isinstance(s, dict)]
    segments: list[dict[str, Any]] = []
    end = recording.duration
    for index, entry in enumerate(entries):
        start = recording.offset(entry.get("at"))
        if start is None:
            continue
        following = entries[index + 1].get("at") if index + 1 < len(entries) else None
        stop = recording.offset(following) if following else end
        identity = entry.get("identity")
        if not identity:
            continue  # nobody speaking
        segments.append(
            {
                "identity": str(identity),
                "name": names.get(str(identity), shown_identity(str(identity))),
                "offset": round(max(0.0, start), 3),
                "clock": _clock(start),
                "local": _local(entry.get("at")),
                "length": _clock(stop - start) if stop is not None else "",
            }
        )
    return segments


def attendance(recording: Recording) -> list[dict[str, Any]]:
    """Joins, leaves and those present at the start, in order."""
    found = []
    for event in recording.manifest.get("events", []):
        if not isinstance(event, dict) or event.get("type") not in ("present", "join", "leave"):
            continue
        identity = str(event.get("identity") or "")
        found.append(
            {
                "type": str(event["type"]),
                "name": str(event.get("name") or shown_identity(identity)),
                "identity": identity,
                "local": _local(event.get("at")),
                "offset": round(max(0.0, recording.offset(event.get("at")) or 0.0), 3),
                "reason": str(event.get("reason") or ""),
            }
        )
    return found


def clock_text(seconds: float | None) -> str:
    """A duration as a clock, ``1:02:05`` or ``2:05``."""
    return _clock(seconds)
