"""Fuzz the recurrence rules of meeting series (conference/domain/recurrence.py `parse_rrule`).

One input is ``<first start>\\n<rule>`` (UTF-8): the first start as the API and the
forms give it (ISO 8601 with an offset; or a fixed aware time for one input in two) and
the RRULE text.  `parse_rrule` must either refuse with `SchedulingError` or return a
rule that it accepts again unchanged (what the series stores, and re-reads on every
expansion).  Any other exception is a crash.

Expansion is not fuzzed: dateutil walks a rule that has no occurrence (such as
``FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30``) day by day up to the year 9999 before it
answers, which the fuzzer would report as a timeout on every such input (a known issue:
fuzz/README.md).
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import common

with common.instrumented("dateutil"):
    from conference.domain.errors import SchedulingError
    from conference.domain.recurrence import parse_rrule

warnings.simplefilter("ignore")  # dateutil warns of time zone names it does not know
FIXED_START = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)  # 08:00 in Hanoi, a Monday


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    start_text, _, rule = text.partition("\n")
    start: datetime | str = start_text if data[:1] != b"!" else FIXED_START
    try:
        value = parse_rrule(rule, start)
    except SchedulingError as exc:
        assert exc.code in ("bad-rrule", "invalid-time", "time-no-zone"), exc.code
        return
    assert isinstance(value, str) and not value.upper().startswith("RRULE:")
    assert parse_rrule(value, start) == value, "the stored rule is not accepted again"


SEEDS = [
    b"2026-12-07T08:00:00+07:00\nFREQ=WEEKLY;BYDAY=MO",
    b"!\nRRULE:FREQ=MONTHLY;BYDAY=1MO;COUNT=12",
    b"2026-12-07T08:00+07:00\nFREQ=DAILY;UNTIL=20270101T000000Z;BYDAY=MO,TU,WE,TH,FR",
    b"!\nFREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;INTERVAL=1;WKST=SU",
    b"2026-12-07T08:00:00Z\nFREQ=MONTHLY;BYSETPOS=-1;BYDAY=FR",
]

if __name__ == "__main__":
    common.run("rrule", test_one_input, SEEDS)
