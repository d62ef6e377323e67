"""The per-subscriber allocator and downlink estimate (conference.sfu.allocator)."""

from __future__ import annotations

from conference.sfu.allocator import (
    DECREASE_INTERVAL,
    FLOOR,
    INITIAL_ESTIMATE,
    MAX_BACKOFF,
    MAX_DECREASE,
    MIN_BACKOFF,
    PROBE_GROWTH,
    PROBE_SECONDS,
    PROBE_SETTLE,
    UPGRADE_MARGIN,
    DownlinkEstimate,
    VideoWant,
    allocate,
    cost_of,
    next_step,
)

RATES = [150_000.0, 500_000.0, 1_500_000.0]


def want(key: str, priority: int = 2, max_layer: int = 2, current: int | None = 2) -> VideoWant:
    return VideoWant(key, priority, list(RATES), max_layer, current)


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
    wants = [want("a", current=0), want("b", current=0), want("c", current=0)]
    # 3 x 150 k = 450 k; the remaining 250 k cannot lift anyone to the middle layer
    assert allocate(700_000, wants) == {"a": 0, "b": 0, "c": 0}
    # 900 k: the first (in priority order) goes up to the middle layer
    assert allocate(900_000, wants) == {"a": 1, "b": 0, "c": 0}


def test_nothing_fits_pauses_video() -> None:
    assert allocate(100_000, [want("a", current=None)]) == {"a": None}
    # a video on its lowest layer is kept down to 60 % of its cost (150 kbit/s): a
    # pause loses the picture; loss brings the estimate lower if the link cannot carry it
    assert allocate(90_000, [want("a", current=0)]) == {"a": 0}
    assert allocate(85_000, [want("a", current=0)]) == {"a": None}
    wants = [want("big", current=None), want("thumb", priority=0, current=None)]
    assert allocate(200_000, wants) == {"big": 0, "thumb": None}


def test_audio_only_profile_pauses_everything() -> None:
    assert allocate(10e6, [want("a", max_layer=-1)]) == {"a": None}


def test_upgrades_and_resumes_need_a_margin() -> None:
    # it has the low layer: the middle one costs 15 % more than its rate
    low = [want("a", current=0)]
    assert allocate(560_000, low) == {"a": 0}
    assert allocate(500_000 * UPGRADE_MARGIN, low) == {"a": 1}
    # it has the middle layer already: 80 % of its rate is enough to keep it
    assert allocate(400_000, [want("a", current=1)]) == {"a": 1}
    assert allocate(390_000, [want("a", current=1)]) == {"a": 0}
    # a paused video resumes only with the margin
    assert allocate(160_000, [want("a", current=None)]) == {"a": None}
    assert allocate(150_000 * UPGRADE_MARGIN, [want("a", current=None)]) == {"a": 0}


def test_cost_and_next_step() -> None:
    wants = [want("a"), want("b", priority=0)]
    chosen = allocate(200_000, wants)
    assert chosen == {"a": 0, "b": None}
    assert cost_of(chosen, wants) == 150_000
    # first improvement: resume the paused thumbnail
    assert next_step(chosen, wants) == 150_000 + 150_000 * UPGRADE_MARGIN
    chosen = {"a": 0, "b": 0}
    assert next_step(chosen, wants) == 150_000 + 500_000 * UPGRADE_MARGIN  # then lift the large one
    assert next_step({"a": 2, "b": 2}, wants) is None


def test_remb_counts_once_it_has_caught_up_with_what_is_sent() -> None:
    estimate = DownlinkEstimate()
    estimate.on_remb(60_000, 0.0, sending=190_000)  # libwebrtc's start: audio alone
    estimate.on_remb(50_000, 0.5, sending=190_000)  # a dip while ramping: not congestion
    assert estimate.value == INITIAL_ESTIMATE and estimate.congestions == 0
    estimate.on_remb(160_000, 1.0, sending=190_000)  # caught up
    estimate.on_remb(100_000, 1.5, sending=190_000)  # now a fall is congestion
    assert estimate.remb_valid and estimate.congestions == 1
    assert estimate.value == MAX_DECREASE * 190_000  # at most 15 % below what was sent


def test_estimate_follows_remb_up_and_drops_on_congestion() -> None:
    estimate = DownlinkEstimate()
    assert estimate.value == INITIAL_ESTIMATE
    estimate.on_remb(1_000_000, 0.0, sending=600_000)
    estimate.on_remb(1_200_000, 0.5, sending=600_000)
    assert estimate.value == 1_200_000
    estimate.on_remb(400_000, 1.0, sending=600_000)  # far below the recent maximum: over-use
    assert estimate.value == MAX_DECREASE * 600_000 and estimate.congestions == 1
    estimate.on_remb(300_000, 1.2, sending=600_000)  # too soon after the last decrease
    assert estimate.value == MAX_DECREASE * 600_000 and estimate.congestions == 1
    estimate.on_remb(300_000, 1.0 + DECREASE_INTERVAL, sending=500_000)  # still falling
    assert estimate.value == MAX_DECREASE * 500_000
    assert estimate.congestions == 2


def test_a_collapsed_remb_lowers_the_estimate_by_15_percent_at_a_time() -> None:
    """After a burst, libwebrtc's REMB can fall far below what the link carries
    for a moment (here 40 kbit/s on a 400 kbit/s link carrying 180) and climb
    back slowly: the estimate falls by 15 % of what was sent, so the lowest layer
    is not paused on one report.  A link that really fell also loses packets,
    and loss brings the estimate down."""
    estimate = DownlinkEstimate(300_000)
    estimate.on_remb(300_000, 0.0, sending=180_000)
    now = 0.1
    for _ in range(10):  # the collapsed REMB, climbing back at ~8 % a second
        estimate.on_remb(40_000 * 1.08 ** (now - 0.1), now, sending=180_000)
        estimate.on_loss(0.0, 180_000, now)
        now += DECREASE_INTERVAL
    assert estimate.value == MAX_DECREASE * 180_000
    for _ in range(4):  # the link fell: most packets are lost
        estimate.on_loss(0.7, estimate.value, now)
        now += 1.0
    assert estimate.value < 60_000


def test_loss_is_congestion() -> None:
    estimate = DownlinkEstimate(600_000)
    estimate.on_loss(0.05, 500_000, 1.0)  # a few per cent: no congestion, but no probe
    assert estimate.value == 600_000 and estimate.congestions == 0
    estimate.on_loss(0.2, 500_000, 2.0)  # what was sent, less half the loss
    assert estimate.value == 0.9 * 500_000
    estimate.on_loss(0.9, 10_000, 3.0)
    assert estimate.value == FLOOR


def test_a_probe_pads_and_then_raises_the_estimate() -> None:
    estimate = DownlinkEstimate(300_000)
    estimate.tick(10.0, 2_000_000, 200_000)
    assert estimate.probe is not None
    target = 300_000 * PROBE_GROWTH  # one step at a time, not straight to 2 Mbit/s
    assert estimate.padding(200_000) == target - 200_000
    assert estimate.value == 300_000  # the layers do not change during the probe
    estimate.tick(10.0 + PROBE_SECONDS, 2_000_000, 200_000)
    assert estimate.probe is None and estimate.value == target
    assert estimate.padding(200_000) == 0


def test_a_failed_probe_stops_and_waits_longer() -> None:
    estimate = DownlinkEstimate(300_000)
    backoffs = []
    now = 10.0
    for _ in range(4):
        estimate.tick(now, 650_000, 200_000)
        assert estimate.probe is not None
        estimate.on_remb(280_000, now + 0.1, sending=200_000)
        estimate.on_remb(200_000, now + 0.3, sending=200_000)  # the link could not carry it
        assert estimate.probe is None and estimate.padding(200_000) == 0
        assert estimate.value == 300_000  # the padding caused it: the estimate stays
        backoffs.append(estimate.next_probe - (now + 0.3))
        estimate.tick(now + 1.0, 650_000, 200_000)
        assert estimate.probe is None  # not yet
        now = estimate.next_probe
        estimate._rembs.clear()
    assert backoffs == sorted(backoffs) and max(backoffs) <= MAX_BACKOFF
    assert estimate.probes_failed == 4


def test_no_probe_while_losing_packets() -> None:
    estimate = DownlinkEstimate(300_000)
    estimate.on_loss(0.05, 300_000, 1.0)
    estimate.tick(10.0, 650_000, 300_000)
    assert estimate.probe is None


def test_a_remb_falling_after_a_pause_is_not_congestion() -> None:
    """libwebrtc caps its REMB at 1.5 times what arrives: once video is paused it
    falls towards 1.5 x the audio rate.  Still above what is sent, that is no
    congestion, and it must not hold the estimate down (the paused video could
    never resume)."""
    estimate = DownlinkEstimate(400_000)
    estimate.on_remb(400_000, 0.0, sending=250_000)
    estimate.on_remb(150_000, 0.5, sending=33_000)  # paused: audio alone is sent
    estimate.on_remb(60_000, 1.0, sending=33_000)
    assert estimate.congestions == 0 and estimate.value == 400_000
    estimate.on_remb(25_000, 1.5, sending=33_000)  # below what is sent: over-use
    assert estimate.congestions == 1 and estimate.value == FLOOR


def test_nacks_during_a_probe_stop_it_and_keep_the_estimate() -> None:
    estimate = DownlinkEstimate(300_000)
    estimate.on_probe_loss(9.0)  # no probe: nothing to stop
    assert estimate.congestions == 0
    estimate.tick(10.0, 650_000, 200_000)
    assert estimate.probe is not None
    estimate.on_probe_loss(10.2)
    assert estimate.probe is None and estimate.probes_failed == 1
    assert estimate.value == 300_000 and estimate.next_probe >= 10.2 + MIN_BACKOFF


def test_after_a_failed_probe_a_lower_remb_is_its_aftermath() -> None:
    """The probe's queueing cut libwebrtc's estimate, which climbs back slowly: for
    REMB_SETTLE seconds a REMB below the estimate lowers nothing (loss still does)."""
    estimate = DownlinkEstimate(300_000)
    estimate.on_remb(300_000, 9.0, sending=200_000)
    estimate.tick(10.0, 650_000, 200_000)
    estimate.on_probe_loss(10.3)
    for step in range(5):
        estimate.on_remb(150_000 + 10_000 * step, 10.5 + 0.5 * step, sending=200_000)
    assert estimate.value == 300_000 and estimate.congestions == 1  # the failed probe
    estimate.on_loss(0.3, 200_000, 10.3 + PROBE_SETTLE)
    assert estimate.value == 0.85 * 200_000 and estimate.congestions == 2
