from collections.abc import Callable

import pytest

from conference.sfu.speaker import SpeakerDetector

Level = Callable[[float], int | None]
STEP = 0.02  # one audio packet every 20 ms
SILENCE = 127


def talk(*intervals: tuple[float, float], level: int = 30) -> Level:
    """Loud during the intervals, silence (but packets) otherwise."""

    def f(t: float) -> int | None:
        for a, b in intervals:
            if a <= t < b:
                return level
        return SILENCE

    return f


def dtx(*intervals: tuple[float, float], level: int = 30) -> Level:
    """Loud during the intervals, no packets at all otherwise."""

    def f(t: float) -> int | None:
        for a, b in intervals:
            if a <= t < b:
                return level
        return None

    return f


def run(
    det: SpeakerDetector,
    script: dict[str, Level],
    start: float,
    end: float,
    update_every: int = 5,
) -> list[tuple[float, str | None]]:
    """Feed observations every 20 ms and call update every 100 ms; return
    the (time, new current) of every change reported."""
    changes = []
    k0 = round(start / STEP)
    for k in range(k0, round(end / STEP)):
        t = k * STEP
        for name, f in script.items():
            level = f(t)
            if level is not None:
                det.observe(name, level, t)
        if k % update_every == 0 and det.update(t):
            changes.append((t, det.current))
    return changes


def test_nobody_at_first() -> None:
    det = SpeakerDetector()
    assert det.current is None
    assert not det.update(0.0)
    assert run(det, {"a": talk(), "b": talk()}, 0.0, 5.0) == []


def test_first_speaker_needs_min_speech() -> None:
    det = SpeakerDetector()
    # Speech from the very first packet: speaking at once, current 0.6 s later.
    changes = run(det, {"a": talk((0.0, 3.0))}, 0.0, 3.0)
    assert len(changes) == 1
    t, who = changes[0]
    assert who == "a"
    assert t == pytest.approx(0.6, abs=0.11)


def test_cough_does_not_switch() -> None:
    det = SpeakerDetector()
    script = {"a": talk((1.0, 1.3), level=10), "b": talk()}
    assert run(det, script, 0.0, 4.0) == []
    assert det.current is None


def test_cough_does_not_steal_from_current() -> None:
    det = SpeakerDetector()
    script = {"a": talk((0.0, 3.0)), "b": talk((2.0, 2.3), (3.5, 3.8), level=5)}
    changes = run(det, script, 0.0, 5.0)
    assert [who for _, who in changes] == ["a"]
    assert changes[0][0] == pytest.approx(0.6, abs=0.11)


def test_one_second_utterance_switches() -> None:
    det = SpeakerDetector()
    script = {"a": talk((0.0, 3.0)), "b": talk((5.0, 6.0))}
    changes = run(det, script, 0.0, 7.0)
    assert [who for _, who in changes] == ["a", "b"]
    t = changes[1][0]
    # b needs 0.5 s to reach half of its window, then 0.6 s of min_speech.
    assert 5.9 <= t <= 6.4


def test_short_utterance_after_silence_does_not_switch() -> None:
    det = SpeakerDetector()
    script = {"a": talk((0.0, 3.0)), "b": talk((5.0, 5.5))}
    changes = run(det, script, 0.0, 7.0)
    assert [who for _, who in changes] == ["a"]


def test_alternating_speakers_switch_each_time_without_flapping() -> None:
    det = SpeakerDetector()
    script = {
        "a": talk((0.0, 5.0), (10.0, 15.0)),
        "b": talk((5.0, 10.0), (15.0, 20.0)),
        "c": talk(),
    }
    changes = run(det, script, 0.0, 20.0)
    assert [who for _, who in changes] == ["a", "b", "a", "b"]
    for (t, _), expected in zip(changes, [0.6, 6.1, 11.1, 16.1], strict=True):
        assert t == pytest.approx(expected, abs=0.25)


def test_talking_over_each_other_keeps_current() -> None:
    det = SpeakerDetector()
    script = {"a": talk((0.0, 10.0), level=30), "b": talk((2.0, 10.0), level=33)}
    changes = run(det, script, 0.0, 10.0)
    assert [who for _, who in changes] == ["a"]
    # Slightly louder (< 6 dB) is not enough either.
    det = SpeakerDetector()
    script = {"a": talk((0.0, 10.0), level=30), "b": talk((2.0, 10.0), level=26)}
    assert [who for _, who in run(det, script, 0.0, 10.0)] == ["a"]


def test_much_louder_challenger_takes_over() -> None:
    det = SpeakerDetector()
    script = {"a": talk((0.0, 10.0), level=40), "b": talk((3.0, 10.0), level=20)}
    changes = run(det, script, 0.0, 10.0)
    assert [who for _, who in changes] == ["a", "b"]
    assert 3.9 <= changes[1][0] <= 4.4


def test_loudest_challenger_wins() -> None:
    det = SpeakerDetector()
    script = {"a": talk((0.0, 10.0), level=35), "b": talk((0.0, 10.0), level=25)}
    assert [who for _, who in run(det, script, 0.0, 3.0)] == ["b"]


def test_silence_leads_to_none_after_idle_timeout() -> None:
    det = SpeakerDetector(idle_timeout=4.0)
    script = {"a": talk((0.0, 2.0)), "b": talk()}
    changes = run(det, script, 0.0, 10.0)
    assert [who for _, who in changes] == ["a", None]
    # a stops counting as speaking about 0.5 s after it falls silent.
    assert 6.3 <= changes[1][0] <= 6.8


def test_idle_timeout_with_dtx() -> None:
    det = SpeakerDetector(idle_timeout=4.0)
    changes = run(det, {"a": dtx((0.0, 2.0))}, 0.0, 10.0)
    assert [who for _, who in changes] == ["a", None]
    # No packets at all: silent 0.3 s after the last one.
    assert 6.2 <= changes[1][0] <= 6.5


def test_current_stays_during_short_pauses() -> None:
    det = SpeakerDetector()
    # Pauses of 0.2 s between phrases keep a above the 50 % mark.
    phrases = tuple((x * 1.0, x * 1.0 + 0.8) for x in range(10))
    changes = run(det, {"a": talk(*phrases)}, 0.0, 10.0)
    assert [who for _, who in changes] == ["a"]


def test_remove_current_speaker() -> None:
    det = SpeakerDetector()
    run(det, {"a": talk((0.0, 5.0)), "b": talk()}, 0.0, 2.0)
    assert det.current == "a"
    det.remove("a")
    assert det.current is None
    assert det.update(2.0)
    assert det.current is None
    assert not det.update(2.1)
    # b speaks and takes over.
    changes = run(det, {"b": talk((2.2, 5.0))}, 2.2, 5.0)
    assert [who for _, who in changes] == ["b"]


def test_remove_current_while_other_is_speaking() -> None:
    det = SpeakerDetector()
    script = {"a": talk((0.0, 5.0), level=30), "b": talk((1.0, 5.0), level=30)}
    run(det, script, 0.0, 3.0)
    assert det.current == "a"
    det.remove("a")
    det.observe("b", 30, 3.0)
    assert det.update(3.0)
    assert det.current == "b"


def test_remove_other_participant() -> None:
    det = SpeakerDetector()
    run(det, {"a": talk((0.0, 5.0)), "b": talk()}, 0.0, 2.0)
    det.remove("b")
    det.remove("nobody")
    assert det.current == "a"
    assert not det.update(2.0)


def test_levels_are_clamped() -> None:
    det = SpeakerDetector()
    for k in range(50):
        det.observe("a", -5, k * STEP)
        det.observe("b", 500, k * STEP)
    assert det.update(0.98)
    assert det.current == "a"
