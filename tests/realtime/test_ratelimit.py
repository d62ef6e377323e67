"""Message rates per session (conference/realtime/ratelimit.py)."""

from __future__ import annotations

from conference.realtime.ratelimit import DEFAULT, LIMITS, TOTAL, WINDOW, MessageRates


def test_each_type_has_its_limit_in_a_sliding_window():
    rates = MessageRates()
    assert all(rates.refusal("raise-hand", 0.01 * i) is None for i in range(DEFAULT))
    assert rates.refusal("raise-hand", 0.5) == f"at most {DEFAULT} 'raise-hand' messages in 10 s"
    assert rates.refusal("candidate", 0.5) is None  # other types are counted apart
    assert rates.refusal("raise-hand", WINDOW - 0.001) is not None
    assert rates.refusal("raise-hand", WINDOW + 0.001) is None  # the first one left the window
    burst = MessageRates()
    assert all(burst.refusal("candidate", 0.0) is None for _ in range(LIMITS["candidate"]))
    assert burst.refusal("candidate", 0.0) is not None


def test_a_refused_message_does_not_count_and_the_total_is_capped():
    rates = MessageRates()
    for _ in range(DEFAULT + 30):
        rates.refusal("mute", 1.0)
    assert rates.refusal("mute", 1.0 + WINDOW) is None  # refusals were not kept
    total = MessageRates()
    kinds = ["candidate", "subscribe", "unsubscribe"]  # 200 each: 600 > TOTAL
    allowed = sum(total.refusal(kind, 2.0) is None for kind in kinds for _ in range(200))
    assert allowed == TOTAL
    assert total.refusal("ping", 2.0) == f"at most {TOTAL} messages in 10 s"


def test_unknown_types_keep_the_table_small():
    rates = MessageRates()
    for i in range(1000):
        rates.refusal(f"junk-{i}", 0.0)
    assert len(rates._times) <= 64
