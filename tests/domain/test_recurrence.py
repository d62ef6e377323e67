"""Recurring briefings: RRULE expansion in local time, materialized occurrences, exceptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from conference.domain import db
from conference.domain.errors import SchedulingError
from conference.domain.meetings import (
    ZONE,
    AgendaInput,
    cancel_meeting,
    get_meeting,
    local_time,
    update_meeting,
)
from conference.domain.models import Meeting, Series, SeriesException
from conference.domain.recurrence import (
    HORIZON,
    cancel_occurrence,
    cancel_series,
    change_occurrence,
    create_series,
    expand,
    extend_all,
    parse_rrule,
)

from .meeting_setup import MONDAY_8, hours, make_org

NOW = MONDAY_8 - timedelta(days=3)


def weekly(session: object, **changes: object) -> Series:
    values: dict[str, object] = {
        "title": "Giao ban thứ Hai",
        "unit": "huyen-a",
        "chair": "chu-tich",
        "rrule": "FREQ=WEEKLY;BYDAY=MO",
        "start": MONDAY_8,
        "end": MONDAY_8 + hours(1.5),
        "points": ["ubnd-xa-01", "ubnd-xa-02", "ubnd-xa-03"],
        "agenda": [AgendaInput("Tình hình tuần qua", "Văn phòng")],
        "now": NOW,
    }
    values.update(changes)
    return create_series(session, **values).series  # type: ignore[arg-type]


def test_weekly_series_materialized_to_the_horizon(database: db.Database) -> None:
    with database.session() as session:
        make_org(session)
        series = weekly(session)
        meetings = list(series.meetings)
        starts = [local_time(m.start_at) for m in meetings]
        # every Monday at 08:00 local, from the first start through 8 weeks after it
        assert len(meetings) == 9
        assert all(s.weekday() == 0 and (s.hour, s.minute) == (8, 0) for s in starts)
        assert starts[0] == MONDAY_8
        assert all(m.end_at - m.start_at == hours(1.5) for m in meetings)
        assert all(m.occurrence_start == m.start_at for m in meetings)
        assert len({m.uid for m in meetings}) == 9
        # invitations per occurrence
        assert all(len(m.invitations) == 3 for m in meetings)
        assert [a.title for a in meetings[3].agenda] == ["Tình hình tuần qua"]
        # Extending later adds the following weeks once.
        created = extend_all(session, now=NOW + timedelta(days=17))
        assert len(created) == 2
        assert extend_all(session, now=NOW + timedelta(days=17)) == []
        assert max(m.start_at for m in series.meetings) <= NOW + timedelta(days=17) + HORIZON


def test_expansion_is_wall_clock_in_the_zone(database: db.Database) -> None:
    """BYDAY/BYHOUR apply to local time: 23:30 Sunday local is still Sunday (16:30 UTC)."""
    with database.session() as session:
        make_org(session)
        start = datetime(2030, 1, 6, 23, 30, tzinfo=ZONE)  # a Sunday late evening
        series = weekly(
            session, rrule="FREQ=WEEKLY;BYDAY=SU;COUNT=3", start=start, end=start + hours(0.5)
        )
        starts = expand(series, start, start + timedelta(days=60))
        assert [s.astimezone(UTC) for s in starts] == [
            datetime(2030, 1, 6, 16, 30, tzinfo=UTC),
            datetime(2030, 1, 13, 16, 30, tzinfo=UTC),
            datetime(2030, 1, 20, 16, 30, tzinfo=UTC),
        ]
        assert len(series.meetings) == 3  # COUNT bounds it


def test_until_in_utc_is_inclusive_in_local_time(database: db.Database) -> None:
    """RFC 5545 wants UNTIL in UTC with a zoned DTSTART: 01:00Z is 08:00 local, included."""
    with database.session() as session:
        make_org(session)
        series = weekly(session, rrule="RRULE:FREQ=WEEKLY;BYDAY=MO;UNTIL=20300121T010000Z")
        assert [local_time(m.start_at).day for m in series.meetings] == [7, 14, 21]


@pytest.mark.parametrize(
    "rule",
    [
        "",
        "FREQ=SOMETIMES",
        "FREQ=MINUTELY",
        "FREQ=WEEKLY;BYDAY=XX",
        "DTSTART:2030",
        "BYDAY=MO",
        "FREQ=WEEKLY;UNTIL=20301340T000000Z",
    ],
)
def test_bad_rrule(database: db.Database, rule: str) -> None:
    with database.session() as session:
        make_org(session)
    with pytest.raises(SchedulingError) as info, database.session() as session:
        weekly(session, rrule=rule)
    assert info.value.code == "bad-rrule" and info.value.field == "rrule"
    with database.session() as session:
        assert session.scalars(select(Series)).all() == []
        assert session.scalars(select(Meeting)).all() == []


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;UNTIL=99999999999999999999",
        "FREQ=DAILY;UNTIL=99991231T235959Z",  # past the year 9999 in Asia/Ho_Chi_Minh
        "FREQ=DAILY;UNTIL=2027010\x00\x00000\x00\x00\x00\x00\x000\x00\x0c00Z",
        "FREQ=DAILY;UNTIL=2027h" + "7" * 40,  # decimal.InvalidOperation in dateutil
    ],
)
def test_an_until_out_of_range_is_a_bad_rrule(rule: str) -> None:
    """Found by fuzz/fuzz_rrule.py: dateutil raised OverflowError or
    decimal.InvalidOperation, not ValueError (a 500 from POST /series)."""
    with pytest.raises(SchedulingError) as info:
        parse_rrule(rule, "2026-12-07T08:00+07:00")
    assert info.value.code == "bad-rrule" and info.value.field == "rrule"


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",  # no such day: dateutil searched to 9999
        "FREQ=YEARLY;BYMONTH=4,6;BYMONTHDAY=31,-32",
        "FREQ=DAILY;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
        "FREQ=WEEKLY;BYMINUTE=0,30",
        "FREQ=YEARLY;BYWEEKNO=53;BYDAY=MO",
        "FREQ=YEARLY;BYYEARDAY=366",
        "FREQ=DAILY;INTERVAL=7;BYDAY=TU",  # from a Monday: always a Monday
        "FREQ=YEARLY;INTERVAL=4;BYMONTH=2;BYMONTHDAY=29",  # 2026, 2030...: never a leap year
        "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=5;BYMONTHDAY=1",
    ],
)
def test_rules_without_a_day_or_with_many_a_day_are_refused(rule: str) -> None:
    """Found by fuzz/fuzz_rrule.py: a rule with no occurrence cost 19-35 s of CPU at each
    expansion, and one with BYHOUR x BYMINUTE would make 1,440 meetings a day."""
    with pytest.raises(SchedulingError) as info:
        parse_rrule(rule, "2026-12-07T08:00+07:00")
    assert info.value.code == "bad-rrule" and info.value.field == "rrule"


def test_possible_rules_stay_accepted() -> None:
    for rule in (
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",  # leap years
        "FREQ=MONTHLY;BYMONTHDAY=-1",  # the last day of each month
        "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=1",
        "FREQ=WEEKLY;BYDAY=MO,WE,FR;COUNT=10",
    ):
        assert parse_rrule(rule, "2026-12-07T08:00+07:00") == rule


def test_series_template_is_checked(database: db.Database) -> None:
    with database.session() as session:
        make_org(session)
    for changes, code in [
        ({"points": ["ghost"]}, "unknown-point"),
        ({"chair": "thu-ky"}, "not-chair"),
        ({"start": "2030-01-07T08:00"}, "time-no-zone"),
    ]:
        with pytest.raises(SchedulingError) as info, database.session() as session:
            weekly(session, **changes)
        assert info.value.code == code


def test_cancel_and_change_one_occurrence(database: db.Database) -> None:
    with database.session() as session:
        make_org(session)
        series = weekly(session)
        series_id = series.id
        second = MONDAY_8 + timedelta(days=7)
        third = MONDAY_8 + timedelta(days=14)
    with database.session() as session:
        cancelled = cancel_occurrence(session, series_id, second)
        assert cancelled is not None and cancelled.status == "cancelled"
        assert cancelled.sequence == 1
        moved = change_occurrence(
            session,
            series_id,
            third.isoformat(),
            start=third + timedelta(days=1, hours=6),  # Tuesday 14:00
            end=third + timedelta(days=1, hours=7),
            title="Giao ban (dời sang thứ Ba)",
        )
        assert local_time(moved.meeting.start_at).strftime("%a %H:%M") == "Tue 14:00"
        assert moved.meeting.occurrence_start == third.astimezone(UTC)
        assert moved.meeting.sequence == 1
    # A second exception for the same occurrence is refused, cancel or change.
    for action in (
        lambda s: cancel_occurrence(s, series_id, second),
        lambda s: change_occurrence(s, series_id, third, title="x"),
        lambda s: cancel_occurrence(s, series_id, third),
    ):
        with pytest.raises(SchedulingError) as info, database.session() as session:
            action(session)
        assert info.value.code == "exception-exists" and info.value.status == 409
    # A start that is not an occurrence.
    with pytest.raises(SchedulingError) as info, database.session() as session:
        cancel_occurrence(session, series_id, MONDAY_8 + timedelta(days=1))
    assert info.value.code == "not-an-occurrence"
    with database.session() as session:
        kinds = sorted(e.kind for e in session.scalars(select(SeriesException)))
        assert kinds == ["cancelled", "modified"]
        # The moved occurrence is not re-created at its original time by a later extension.
        extend_all(session, now=NOW + timedelta(days=30))
        at_third = session.scalars(
            select(Meeting).where(Meeting.occurrence_start == third.astimezone(UTC))
        ).all()
        assert len(at_third) == 1


def test_change_beyond_the_horizon_and_cancelled_stays_cancelled(database: db.Database) -> None:
    with database.session() as session:
        make_org(session)
        series_id = weekly(session).id
        far = MONDAY_8 + timedelta(weeks=20)
        much_later = MONDAY_8 + timedelta(weeks=21)
        result = change_occurrence(session, series_id, far, title="Sơ kết 6 tháng")
        assert result.meeting.title == "Sơ kết 6 tháng"
        assert cancel_occurrence(session, series_id, much_later) is None  # not materialized
        created = extend_all(session, now=far)
        starts = {m.occurrence_start for m in created}
        assert much_later.astimezone(UTC) not in starts
        assert far.astimezone(UTC) not in starts  # already there, changed


def test_cancel_series_cancels_future_occurrences(database: db.Database) -> None:
    with database.session() as session:
        make_org(session)
        series = weekly(session)
        now = MONDAY_8 + timedelta(days=10)
        cancelled = cancel_series(session, series.id, now=now)
        assert len(cancelled) == 7  # of 9: the first two are past
        assert get_meeting(session, series.meetings[0].id).status == "scheduled"
        assert extend_all(session, now=now + timedelta(days=30)) == []


def test_direct_edits_of_an_occurrence_are_recorded(database: db.Database) -> None:
    """An edit or cancellation made on the occurrence's meeting keeps the exception record."""
    with database.session() as session:
        make_org(session)
        series = weekly(session)
        second, third = series.meetings[1], series.meetings[2]
        update_meeting(session, second.id, version=second.version, title="Giao ban đặc biệt")
        update_meeting(session, third.id, version=third.version)  # nothing changed: no record

        def kinds() -> dict[datetime, str]:
            return {e.original_start: e.kind for e in session.scalars(select(SeriesException))}

        assert kinds() == {second.start_at: "modified"}
        with pytest.raises(SchedulingError) as info:
            cancel_occurrence(session, series.id, second.start_at)
        assert info.value.code == "exception-exists"
        cancel_meeting(session, second.id, version=second.version)
        assert kinds() == {second.start_at: "cancelled"}
        assert extend_all(session, now=NOW + timedelta(days=60)) != []
        assert len([m for m in series.meetings if m.occurrence_start == second.start_at]) == 1
