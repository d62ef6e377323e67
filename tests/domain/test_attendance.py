"""Attendance events and the database-backed admission policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conference.appkeys import MeetingPolicy
from conference.domain import db
from conference.domain.admission import check_admission
from conference.domain.attendance import list_events, presence, record_event
from conference.domain.errors import SchedulingError
from conference.domain.meetings import (
    ZONE,
    cancel_meeting,
    create_meeting,
    end_meeting,
    start_meeting,
)
from conference.realtime.access import AccessError
from conference.settings import Settings
from conference.tokens import Claims, Grants

from .meeting_setup import add_user, make_org

START = datetime(2030, 1, 7, 8, 0, tzinfo=ZONE)


def schedule(database: db.Database) -> int:
    with database.session() as session:
        make_org(session)
        return create_meeting(
            session,
            title="Giao ban",
            unit="huyen-a",
            chair="chu-tich",
            start=START,
            end=START + timedelta(hours=2),
            points=["ubnd-xa-01", "ubnd-xa-02"],
        ).meeting.id


def test_attendance_events_and_presence(database: db.Database) -> None:
    meeting_id = schedule(database)
    at = START.astimezone(UTC)
    with database.session() as session:
        record_event(
            session,
            meeting_id,
            identity="ubnd-xa-01",
            participant_id="p1",
            kind="join",
            at=at,
            name="UBND xã số 1",
            role="point",
        )
        record_event(
            session,
            meeting_id,
            identity="chu-tich",
            participant_id="c1",
            kind="join",
            at=at + timedelta(minutes=1),
            name="Ông chu-tich",
            role="chair",
        )
        record_event(
            session,
            meeting_id,
            identity="ubnd-xa-01",
            participant_id="p1",
            kind="leave",
            at=at + timedelta(minutes=30),
            role="point",
        )
        # rejoins from a new connection and stays to the end
        record_event(
            session,
            meeting_id,
            identity="ubnd-xa-01",
            participant_id="p2",
            kind="join",
            at=at + timedelta(minutes=40),
            role="point",
        )
    with database.session() as session:
        events = list_events(session, meeting_id)
        assert [(e.identity, e.kind) for e in events] == [
            ("ubnd-xa-01", "join"),
            ("chu-tich", "join"),
            ("ubnd-xa-01", "leave"),
            ("ubnd-xa-01", "join"),
        ]
        assert events[0].point is not None and events[0].point.code == "ubnd-xa-01"
        assert events[1].point_id is None and events[1].user_id is not None
        rows = {p.identity: p for p in presence(session, meeting_id, until=at + timedelta(hours=1))}
        assert rows["ubnd-xa-01"].connected == timedelta(minutes=50)
        assert rows["ubnd-xa-01"].first_join == at
        assert rows["ubnd-xa-02"].invited and rows["ubnd-xa-02"].first_join is None
        assert not rows["chu-tich"].invited
        assert rows["chu-tich"].connected == timedelta(minutes=59)
        for kwargs, code in [
            ({"kind": "wave"}, "bad-attendance"),
            ({"identity": ""}, "bad-attendance"),
        ]:
            values = {"identity": "ubnd-xa-01", "participant_id": "p9", "kind": "join"}
            values.update(kwargs)
            with pytest.raises(SchedulingError) as info:
                record_event(session, meeting_id, **values)
            assert info.value.code == code
        with pytest.raises(SchedulingError) as info:
            record_event(session, 999999, identity="x", participant_id="y", kind="join")
        assert info.value.code == "unknown-meeting"


def test_a_rejoin_through_another_node_counts_once(database: db.Database) -> None:
    """A point's node died (no leave recorded) and the point came back through another
    node: one continuous presence, not two sessions counted twice."""
    meeting_id = schedule(database)
    at = START.astimezone(UTC)
    with database.session() as session:
        for participant, minute in (("p1", 0), ("p2", 20)):
            record_event(
                session,
                meeting_id,
                identity="ubnd-xa-01",
                participant_id=participant,
                kind="join",
                at=at + timedelta(minutes=minute),
                role="point",
            )
        record_event(
            session,
            meeting_id,
            identity="ubnd-xa-01",
            participant_id="p2",
            kind="leave",
            at=at + timedelta(minutes=50),
            role="point",
        )
    with database.session() as session:
        rows = {p.identity: p for p in presence(session, meeting_id, until=at + timedelta(hours=2))}
        assert rows["ubnd-xa-01"].connected == timedelta(minutes=50)
        kinds = [e.kind for e in list_events(session, meeting_id)]
        assert kinds == ["join", "join", "leave"]  # the rejoin, no leave in between
    # a hall's browser and its WHIP encoder at once (two transports): both count
    with database.session() as session:
        for participant, kind, minute in (
            ("websocket:PA_b", "join", 0),
            ("whip:PA_w", "join", 1),
            ("whip:PA_w", "leave", 5),
            ("websocket:PA_b", "leave", 60),
        ):
            record_event(
                session,
                meeting_id,
                identity="ubnd-xa-02",
                participant_id=participant,
                kind=kind,
                at=at + timedelta(minutes=minute),
                role="point",
            )
    with database.session() as session:
        rows = {p.identity: p for p in presence(session, meeting_id, until=at + timedelta(hours=2))}
        assert rows["ubnd-xa-02"].connected == timedelta(minutes=64)  # each session its time


def claims(meeting: int | str, identity: str, role: str) -> Claims:
    return Claims(
        identity=identity,
        name=identity,
        meeting=str(meeting),
        role=role,
        grants=Grants.for_role(role),
        expires_at=START + timedelta(hours=5),
        not_before=START - timedelta(minutes=30),
        token_id="t",
    )


async def test_database_admission(database: db.Database) -> None:
    meeting_id = schedule(database)
    with database.session() as session:
        add_user(session, "thu-ky-b", "secretary", "huyen-b")
    now = [START - timedelta(minutes=10)]

    class Policy:  # the database's rule, as the server's MeetingLifecycle applies it
        async def admit(self, c: Claims) -> None:
            await database.run(lambda s: check_admission(s, c, Settings(), now[0]))

    policy: MeetingPolicy = Policy()

    async def refused(c: Claims) -> str:
        with pytest.raises(AccessError) as info:
            await policy.admit(c)
        return info.value.code

    await policy.admit(claims(meeting_id, "ubnd-xa-01", "point"))
    await policy.admit(claims(meeting_id, "chu-tich", "chair"))
    await policy.admit(claims(meeting_id, "thu-ky", "chair"))  # secretary of the district
    await policy.admit(claims(meeting_id, "ubnd-xa-02", "viewer"))
    await policy.admit(claims(meeting_id, "recorder", "recorder"))
    assert await refused(claims(meeting_id, "ubnd-xa-03", "point")) == "not-invited"
    assert await refused(claims(meeting_id, "thu-ky-b", "chair")) == "not-invited"
    assert await refused(claims(meeting_id, "ubnd-xa-01", "chair")) == "not-invited"
    assert await refused(claims(meeting_id + 1000, "ubnd-xa-01", "point")) == "unknown-meeting"
    assert await refused(claims("m1", "ubnd-xa-01", "point")) == "unknown-meeting"

    now[0] = START - timedelta(minutes=31)
    assert await refused(claims(meeting_id, "ubnd-xa-01", "point")) == "too-early"
    now[0] = START + timedelta(hours=5, minutes=1)
    assert await refused(claims(meeting_id, "ubnd-xa-01", "point")) == "too-late"
    with database.session() as session:
        start_meeting(session, meeting_id)
    await policy.admit(claims(meeting_id, "ubnd-xa-01", "point"))  # live runs over
    with database.session() as session:
        end_meeting(session, meeting_id)
    assert await refused(claims(meeting_id, "ubnd-xa-01", "point")) == "meeting-ended"

    with database.session() as session:
        other = create_meeting(
            session,
            title="Hủy",
            unit="huyen-a",
            chair="chu-tich",
            start=START,
            end=START + timedelta(hours=1),
            points=["ubnd-xa-01"],
        ).meeting
        cancel_meeting(session, other.id, version=other.version)
    now[0] = START
    assert await refused(claims(other.id, "ubnd-xa-01", "point")) == "meeting-cancelled"
