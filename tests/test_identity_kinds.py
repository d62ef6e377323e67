"""Identity kinds (issue 14, item 3): points, accounts, guests and hand-made tokens are
separate identity spaces (conference/core/identity.py).

The report: point ``chair-a`` joined a locked meeting as ``chair-a``; the chair got
``leave: replaced`` and its page did not rejoin.  Here a point whose code is the chair's
username joins the chair's meeting through a real server and real WebSockets, with the
tokens the server handed out before identity kinds (a bare ``sub``, read by its role) and
with the new ones (``pt:``, ``u:``, ``g:``, ``t:``); the admission rules and the attendance
are checked on the database itself.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conference.core.errors import AccessError
from conference.core.identity import Identity
from conference.domain import db
from conference.domain.admission import check_admission
from conference.domain.attendance import list_events, presence, record_event
from conference.domain.meetings import ZONE, AgendaInput, create_meeting, get_meeting
from conference.domain.minutes import build_content
from conference.domain.models import User
from conference.domain.organisation import create_point
from conference.realtime.briefing import Briefings
from conference.recording.manifest import FORMAT, iso, write_manifest
from conference.recording.store import meeting_directory
from conference.settings import Settings
from conference.sfu.participant import Participant
from conference.sfu.room import RoomError, RoomRegistry
from conference.tokens import Claims, Grants
from conference.tools.client import Client

from .conftest import ServerProcess, check_clean_exit, start_server
from .domain.meeting_setup import make_org
from .test_lifecycle import eventually, refused, sqlite_database

CHAIR = "chu-tich"  # the chair's username, and the code of a point of the meeting


def schedule(database: db.Database) -> tuple[str, datetime]:
    """A meeting of ``chu-tich`` in 10 minutes, inviting ``ubnd-xa-01`` and a point whose
    code is the chair's username: (meeting id, start)."""
    start = (datetime.now(ZONE) + timedelta(minutes=10)).replace(second=0, microsecond=0)
    with database.session() as session:
        make_org(session, n_points=2, email=False)
        create_point(session, code=CHAIR, name="UBND điểm cầu Chủ Tịch", unit="xa-02")
        meeting = create_meeting(
            session,
            title="Giao ban tuần",
            unit="huyen-a",
            chair=CHAIR,
            start=start,
            end=start + timedelta(hours=1),
            points=["ubnd-xa-01", CHAIR],
            agenda=[AgendaInput("Ý kiến chỉ đạo", presenter_user=CHAIR)],
        ).meeting
        return str(meeting.id), start


def identities(client: Client) -> list[str]:
    return sorted(p["identity"] for p in client.room.get("participants", []))


async def test_a_point_named_like_the_chair_joins_beside_the_chair(tmp_path: Path) -> None:
    """The tokens e-mailed before identity kinds (bare ``sub``): the point's link and the
    chair's link both say ``chu-tich``.  The point never replaces the chair, nor passes the
    chair's lock; it joins as a second participant; a rejoin replaces its own session only."""
    database = sqlite_database(tmp_path)
    meeting, _ = schedule(database)
    server = start_server(tmp_path)
    clients: list[Client] = []

    def client(identity: str, role: str, **kind: Any) -> Client:
        c = Client(server.url, meeting, server.token(meeting, identity, role, **kind))
        clients.append(c)
        return c

    try:
        chair = client(CHAIR, "chair")
        await chair.connect()  # the chair starts the meeting

        # locked: the point was never let in, sharing the chair's name does not pass
        await chair.send({"type": "lock", "locked": True})
        await chair.wait_for(lambda: chair.room.get("locked") is True)
        await refused(client(CHAIR, "point"), "room-locked")
        await asyncio.sleep(0.5)
        assert not chair.closed.is_set() and chair.left_reason is None
        assert identities(chair) == [f"u:{CHAIR}"]

        await chair.send({"type": "lock", "locked": False})
        await chair.wait_for(lambda: chair.room.get("locked") is False)
        point = client(CHAIR, "point")
        await point.connect()  # invited: it enters once the meeting is live
        await asyncio.sleep(0.5)
        assert not chair.closed.is_set() and chair.left_reason is None, chair.left_reason
        both = [f"pt:{CHAIR}", f"u:{CHAIR}"]
        await chair.wait_for(lambda: identities(chair) == both)
        assert identities(point) == both
        assert chair.participant["identity"] == f"u:{CHAIR}"
        assert point.participant["identity"] == f"pt:{CHAIR}"
        # the chair is still the chair: it moderates, the point does not
        moderators = {p["identity"] for p in chair.room["participants"] if p.get("moderator")}
        assert moderators == {f"u:{CHAIR}"}

        # the point's own rejoin (its page reloads) replaces the point, not the chair
        again = client(CHAIR, "point")
        await again.connect()
        await point.closed.wait()
        assert point.left_reason == "replaced"
        ids = {chair.id, again.id}
        await chair.wait_for(lambda: {p["id"] for p in chair.room["participants"]} == ids)
        assert identities(chair) == both
        assert not chair.closed.is_set() and chair.left_reason is None

        # the attendance has two people: the invited point, and the chair (no point)
        def rows() -> dict[tuple[str, str | None], Any]:
            with database.session() as session:
                return {(p.identity, p.point): p for p in presence(session, meeting)}

        await eventually(lambda: rows()[(CHAIR, None)].first_join is not None)
        await eventually(lambda: rows()[(CHAIR, CHAIR)].first_join is not None)
        assert rows()[(CHAIR, None)].kind == "account" and rows()[(CHAIR, CHAIR)].invited
        assert rows()[(CHAIR, CHAIR)].name == "UBND xã chu-tich"
        with database.session() as session:
            stored = {
                (e.identity, e.point.code if e.point else None)
                for e in list_events(session, meeting)
            }
        assert stored == {(f"u:{CHAIR}", None), (f"pt:{CHAIR}", CHAIR)}
    finally:
        for c in clients:
            await c.close()
        database.close()
        check_clean_exit(server)


async def test_no_kind_passes_as_another(tmp_path: Path) -> None:
    """The new tokens carry the kind (``pt:``, ``u:``, ``g:``, ``t:``): a point's token
    with the chair's role is refused, an account, a guest and a hand-made token named
    ``chu-tich`` wait as three guests beside each other, and none replaces the chair or the
    point of that name."""
    database = sqlite_database(tmp_path)
    meeting, _ = schedule(database)
    server: ServerProcess = start_server(tmp_path)
    clients: list[Client] = []

    def client(identity: str, role: str, kind: str) -> Client:
        c = Client(server.url, meeting, server.token(meeting, identity, role, kind=kind))
        clients.append(c)
        return c

    try:
        chair = client(CHAIR, "chair", "account")
        await chair.connect()
        point = client(CHAIR, "point", "point")
        await point.connect()
        both = [f"pt:{CHAIR}", f"u:{CHAIR}"]
        await chair.wait_for(lambda: identities(chair) == both)

        # a point's token never passes as the chair, whatever role it claims
        await refused(client(CHAIR, "chair", "point"), "not-invited")
        await refused(client("ubnd-xa-01", "chair", "point"), "not-invited")
        # a guest's or a hand-made token never passes as the invited point
        await refused(client(CHAIR, "chair", "guest"), "not-invited")
        await refused(client(CHAIR, "chair", "token"), "not-invited")

        waiting = {kind: client(CHAIR, "point", kind) for kind in ("account", "guest", "token")}
        joining = {kind: asyncio.ensure_future(c.connect()) for kind, c in waiting.items()}
        await eventually(lambda: all(c.lobby is not None for c in waiting.values()))
        assert all(c.lobby is not None and c.lobby["guest"] for c in waiting.values())

        def lobby() -> list[str]:
            states = [m for m in chair.messages if m.get("type") == "lobby-state"]
            return sorted(w["identity"] for w in states[-1]["waiting"]) if states else []

        await eventually(lambda: lobby() == [f"g:{CHAIR}", f"t:{CHAIR}", f"u:{CHAIR}"])
        assert identities(chair) == both and not chair.closed.is_set()

        # the chair admits the guest: it enters as a third participant
        await chair.send({"type": "admit", "identity": f"g:{CHAIR}"})
        await asyncio.wait_for(joining["guest"], 10)
        assert waiting["guest"].participant["identity"] == f"g:{CHAIR}"
        three = [f"g:{CHAIR}", f"pt:{CHAIR}", f"u:{CHAIR}"]
        await chair.wait_for(lambda: identities(chair) == three)
        assert not joining["account"].done() and not joining["token"].done()
        assert not chair.closed.is_set() and not point.closed.is_set()
        assert chair.left_reason is None and point.left_reason is None
        for kind in ("account", "token"):
            joining[kind].cancel()
    finally:
        for c in clients:
            await c.close()
        database.close()
        check_clean_exit(server)


# --- the room and the briefing, in process ------------------------------------------------------


async def test_the_room_and_the_briefing_key_participants_by_kind() -> None:
    """Real `Room`, `Briefing` and `Participant` objects without peer connections: the
    point ``pt:chu-tich`` and the account ``u:chu-tich`` are two participants (the lock,
    a hold and a hand of one are not the other's); a bare identity in a URL (``/whep/M/ID``)
    names a participant only when one kind has it."""
    registry = RoomRegistry(max_rooms=1, max_participants=10)
    briefings = Briefings(registry)
    hung_up: dict[str, list[str]] = {}

    async def join(key: str, role: str) -> Participant:
        who = Identity(identity=key, name=key, role=role, publish=True, moderate=role == "chair")
        participant = Participant(briefing.room, who, "websocket", signal=None)
        reasons = hung_up.setdefault(participant.id, [])

        async def disconnect(reason: str) -> None:
            reasons.append(reason)

        participant.disconnect = disconnect
        await briefing.room.join(participant)
        return participant

    try:
        briefing = briefings.open("m1")
        chair = await join(f"u:{CHAIR}", "chair")
        briefing.set_lock(True)
        with pytest.raises(RoomError) as locked:
            await join(f"pt:{CHAIR}", "point")  # the chair's name is not the chair's pass
        assert locked.value.code == "room-locked"
        briefing.set_lock(False)
        point = await join(f"pt:{CHAIR}", "point")
        assert set(briefing.room.participants) == {chair.id, point.id}
        assert hung_up[chair.id] == []
        assert briefing.room.get(CHAIR) is None  # two kinds have it: ambiguous
        assert briefing.room.get(f"pt:{CHAIR}") is point
        assert briefing.room.get(f"u:{CHAIR}") is chair
        # the point's hold and hand are the point's
        await briefing.hold(f"pt:{CHAIR}", True)
        briefing.raise_hand(point, True)
        assert briefing.held == {f"pt:{CHAIR}"}
        assert [identity for identity, _ in briefing.hands] == [f"pt:{CHAIR}"]
        state = briefing.state()
        hands = {p["identity"]: p["hand"] for p in state["participants"]}
        assert hands == {f"u:{CHAIR}": False, f"pt:{CHAIR}": True}
        # the point's second session replaces the point only
        again = await join(f"pt:{CHAIR}", "point")
        assert set(briefing.room.participants) == {chair.id, again.id}
        assert hung_up[point.id] == ["replaced"] and hung_up[chair.id] == []
        await briefing.room.leave(chair.id)
        assert briefing.room.get(CHAIR) is again  # one kind left: the bare name finds it
    finally:
        await registry.close()


# --- the rules on the database ------------------------------------------------------------------


@pytest.fixture
def scheduled(tmp_path: Path) -> Any:
    database = sqlite_database(tmp_path)
    meeting, start = schedule(database)
    try:
        yield database, meeting, start
    finally:
        database.close()


def claims(meeting: str, identity: str, role: str) -> Claims:
    return Claims(
        identity=identity,
        name=identity,
        meeting=meeting,
        role=role,
        grants=Grants.for_role(role),
        expires_at=datetime.now(ZONE) + timedelta(hours=5),
        not_before=datetime.now(ZONE) - timedelta(hours=1),
        token_id="t",
    )


@pytest.mark.parametrize(
    ("identity", "role", "admitted"),
    [
        # tokens of before identity kinds: read by their role, as they were
        (CHAIR, "point", True),
        (CHAIR, "chair", True),
        (CHAIR, "viewer", True),
        ("ubnd-xa-01", "point", True),
        ("ubnd-xa-01", "viewer", True),  # a viewer's token named a point or an account
        ("ubnd-xa-01", "chair", False),
        ("ubnd-xa-02", "point", False),  # not invited
        # a point is a point, an account an account, whatever the role says
        (f"pt:{CHAIR}", "point", True),
        (f"pt:{CHAIR}", "viewer", True),
        (f"pt:{CHAIR}", "chair", False),
        (f"u:{CHAIR}", "chair", True),
        (f"u:{CHAIR}", "viewer", True),
        (f"u:{CHAIR}", "point", False),
        ("u:ubnd-xa-01", "point", False),
        ("pt:thu-ky", "chair", False),
        ("u:thu-ky", "viewer", True),  # the secretary of the district
        # guests and hand-made tokens are never invited
        (f"g:{CHAIR}", "point", False),
        (f"g:{CHAIR}", "chair", False),
        (f"t:{CHAIR}", "viewer", False),
        ("t:ubnd-xa-01", "point", False),
    ],
)
def test_admission_looks_up_each_kind_in_its_own_space(
    scheduled: Any, identity: str, role: str, admitted: bool
) -> None:
    database, meeting, start = scheduled
    with database.session() as session:
        if admitted:
            check_admission(session, claims(meeting, identity, role), Settings(), start)
        else:
            with pytest.raises(AccessError) as info:
                check_admission(session, claims(meeting, identity, role), Settings(), start)
            assert info.value.code == "not-invited"


def test_attendance_keeps_kinds_apart_and_old_events_count(scheduled: Any) -> None:
    """A point and an account of one name are two rows; an event stored before kinds
    (a bare identity) adds up with the same point's new events."""
    database, meeting, start = scheduled
    with database.session() as session:
        for identity, participant, kind, minute, role in (
            (CHAIR, "websocket:PA_old", "join", 0, "point"),  # stored before identity kinds
            (CHAIR, "websocket:PA_old", "leave", 10, "point"),
            (f"pt:{CHAIR}", "websocket:PA_p", "join", 20, "point"),
            (f"pt:{CHAIR}", "websocket:PA_p", "leave", 25, "point"),
            (f"u:{CHAIR}", "websocket:PA_c", "join", 0, "chair"),
            (f"u:{CHAIR}", "websocket:PA_c", "leave", 30, "chair"),
            (f"g:{CHAIR}", "websocket:PA_g", "join", 5, "point"),
            (f"g:{CHAIR}", "websocket:PA_g", "leave", 6, "point"),
        ):
            record_event(
                session,
                meeting,
                identity=identity,
                participant_id=participant,
                kind=kind,
                at=start + timedelta(minutes=minute),
                name=f"{identity} ({role})",
                role=role,
            )
    with database.session() as session:
        chair = session.scalar(select(User.id).where(User.username == CHAIR))
        events = list_events(session, meeting)
        links = {(e.identity, e.point.code if e.point else None, e.user_id) for e in events}
        assert links == {
            (CHAIR, CHAIR, None),
            (f"pt:{CHAIR}", CHAIR, None),
            (f"u:{CHAIR}", None, chair),  # the account, never the point of that code
            (f"g:{CHAIR}", None, None),  # a guest is neither
        }
        rows = presence(session, meeting, until=start + timedelta(hours=1))
    found = {(r.identity, r.kind, r.point, r.invited): r.connected for r in rows}
    assert found == {
        ("ubnd-xa-01", "point", "ubnd-xa-01", True): timedelta(),
        (CHAIR, "point", CHAIR, True): timedelta(minutes=15),  # old 10 + new 5
        (CHAIR, "account", None, False): timedelta(minutes=30),
        (CHAIR, "guest", None, False): timedelta(minutes=1),
    }


@pytest.mark.parametrize("kinds", [True, False], ids=["keys", "before-kinds"])
def test_minutes_tell_the_point_from_the_chair(scheduled: Any, tmp_path: Path, kinds: bool) -> None:
    """The point ``chu-tich`` speaks first, the chair ``chu-tich`` second: the chair's
    agenda item is found at the chair's turn, the note "Chủ trì" is on the chair's row
    only, and nobody sees a prefix.  A meeting recorded before identity kinds (bare
    identities in the manifest and the attendance) still maps to the minutes: its
    attendance tells the two apart by the point and the account each event was linked
    to; its manifest has one bare name for both speakers (the first row's name)."""
    database, meeting, start = scheduled
    point, chair = (f"pt:{CHAIR}", f"u:{CHAIR}") if kinds else (CHAIR, CHAIR)
    with database.session() as session:
        for identity, role, name, joined, left in (
            (point, "point", "UBND điểm cầu Chủ Tịch", 1, 50),
            (chair, "chair", "Ông chu-tich", 0, 55),
        ):
            for kind, minute in (("join", joined), ("leave", left)):
                record_event(
                    session,
                    meeting,
                    identity=identity,
                    participant_id=f"websocket:{role}",
                    kind=kind,
                    at=start + timedelta(minutes=minute),
                    name=name,
                    role=role,
                )
    root = tmp_path / "recordings"
    began = start + timedelta(minutes=2)
    directory = meeting_directory(root, meeting, began.timestamp())
    directory.mkdir(parents=True)

    def at(seconds: float) -> str | None:
        return iso((began + timedelta(seconds=seconds)).timestamp())

    speakers = [(60, point), (180, chair), (330, None)]
    write_manifest(
        directory / "rec.manifest.json",
        {
            "format": FORMAT,
            "meeting": meeting,
            "state": "complete",
            "started_at": at(0),
            "stopped_at": at(600),
            "tracks": [],
            "speakers": [{"at": at(s), "identity": who} for s, who in speakers],
            "events": [],
        },
    )
    with database.session() as session:
        content = build_content(session, get_meeting(session, meeting), "Thư ký", root)
    turns = [(s["name"], s["seconds"]) for s in content["speaking"]]
    if kinds:
        assert turns == [("UBND điểm cầu Chủ Tịch", 120), ("Ông chu-tich", 150)]
        assert [item["spoke_at"] for item in content["agenda"]] == [content["speaking"][1]["start"]]
        notes = {(r["name"], r["note"]) for r in content["attendance"] if r["code"] == CHAIR}
        assert notes == {("UBND điểm cầu Chủ Tịch", ""), ("Ông chu-tich", "Chủ trì")}
    else:  # one bare name for both: the point's name, as before kinds
        assert [name for name, _ in turns] == ["UBND điểm cầu Chủ Tịch"]
        assert [item["spoke_at"] for item in content["agenda"]] == [content["speaking"][0]["start"]]
    assert all(":" not in r["code"] and ":" not in r["name"] for r in content["attendance"])
