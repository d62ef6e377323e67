"""The per-subscriber allocator and downlink estimate (conference.sfu.allocator)."""

from __future__ import annotations

from conference.sfu.allocator import (
    FLOOR,
    INITIAL_ESTIMATE,
    MAX_BACKOFF,
    TRIAL_SECONDS,
    DownlinkEstimate,
    VideoWant,
    allocate,
    cost_of,
    next_step,
)

RATES = [150_000.0, 500_000.0, 1_500_000.0]


def want(key: str, priority: int = 2, max_layer: int = 2) -> VideoWant:
    return VideoWant(key, priority, list(RATES), max_layer)


def test_everything_fits() -> None:
    assert allocate(10e6, [want("a"), want("b")]) == {"a": 2, "b": 2}


def test_large_first_then_thumbnails() -> None:
    wants = [want("thumb", priority=0), want("big", priority=2)]
    # 1.5 M for the large one, 150 k for the thumbnail
    assert allocate(1_700_000, wants) == {"big": 2, "thumb": 0}
    # a thumbnail never goes above its own maximum
    wants = [want("thumb", priority=0, max_layer=0), want("big")]
    assert allocate(10e6, wants) == {"big": 2, "thumb": 0}


def test_lowest_layers_for_all_before_upgrades() -> None:
    wants = [want("a"), want("b"), want("c")]
    # 3 x 150 k = 450 k; the remaining 250 k cannot lift anyone by 350 k
    assert allocate(700_000, wants) == {"a": 0, "b": 0, "c": 0}
    # 800 k: the first (in priority order) goes up to the middle layer
    assert allocate(800_000, wants) == {"a": 1, "b": 0, "c": 0}


def test_nothing_fits_pauses_video() -> None:
    assert allocate(100_000, [want("a")]) == {"a": None}
    wants = [want("big"), want("thumb", priority=0)]
    assert allocate(200_000, wants) == {"big": 0, "thumb": None}


def test_audio_only_profile_pauses_everything() -> None:
    assert allocate(10e6, [want("a", max_layer=-1)]) == {"a": None}


def test_cost_and_next_step() -> None:
    wants = [want("a"), want("b", priority=0)]
    chosen = allocate(200_000, wants)
    assert chosen == {"a": 0, "b": None}
    assert cost_of(chosen, wants) == 150_000
    # first improvement: resume the paused thumbnail
    assert next_step(chosen, wants) == 300_000
    chosen = {"a": 0, "b": 0}
    assert next_step(chosen, wants) == 300_000 + 350_000  # then lift the large one
    assert next_step({"a": 2, "b": 2}, wants) is None


def test_estimate_follows_remb_up_and_drops_on_congestion() -> None:
    estimate = DownlinkEstimate()
    assert estimate.value == INITIAL_ESTIMATE
    estimate.on_remb(1_000_000, 0.0)
    estimate.on_remb(1_200_000, 0.5)
    assert estimate.value == 1_200_000
    estimate.on_remb(400_000, 1.0)  # far below the recent maximum: over-use
    assert estimate.value == 400_000 and estimate.congestions == 1


def test_loss_is_congestion() -> None:
    estimate = DownlinkEstimate()
    estimate.on_loss(0.2, 600_000, 1.0)
    assert estimate.value == 0.85 * 600_000
    estimate.on_loss(0.9, 10_000, 2.0)
    assert estimate.value == FLOOR


def test_a_trial_that_holds_keeps_the_higher_value() -> None:
    estimate = DownlinkEstimate(300_000)
    estimate.tick(10.0, 650_000)
    assert estimate.trial is not None and estimate.value == 650_000
    estimate.tick(10.0 + TRIAL_SECONDS, 650_000)
    assert estimate.trial is None and estimate.value == 650_000


def test_a_failed_trial_falls_back_and_waits_longer() -> None:
    estimate = DownlinkEstimate(300_000)
    backoffs = []
    now = 10.0
    for _ in range(4):
        estimate.tick(now, 650_000)
        assert estimate.trial is not None
        estimate.on_remb(900_000, now + 0.1)
        estimate.on_remb(350_000, now + 0.5)  # the link could not carry it
        assert estimate.trial is None and estimate.value <= 350_000
        backoffs.append(estimate.next_trial - (now + 0.5))
        estimate.tick(now + 1.0, 650_000)
        assert estimate.trial is None  # not yet
        now = estimate.next_trial
        estimate._rembs.clear()
    assert backoffs == sorted(backoffs) and max(backoffs) <= MAX_BACKOFF


def test_no_trial_while_losing_packets() -> None:
    estimate = DownlinkEstimate(300_000)
    estimate.on_loss(0.05, 300_000, 1.0)
    estimate.tick(10.0, 650_000)
    assert estimate.trial is None
