"""Audio slots (conference/sfu/audioslots.py): a page that joins with ``audioSlots``
receives the meeting's microphones on eight fixed audio tracks, whichever are heard,
and never renegotiates for a microphone.  Real server process, aiortc clients."""

from __future__ import annotations

import asyncio

import pytest

from conference.sfu.audioslots import HOLD, SLOTS, AudioSlots
from conference.tools.client import Client
from conference.tools.testmedia import ToneAudioTrack

pytestmark = pytest.mark.media


# -- the map ------------------------------------------------------------------------------
def test_a_microphone_keeps_its_slot_and_a_new_one_takes_a_free_slot() -> None:
    slots = AudioSlots(3)
    assert slots.place("a", 0.0) == (0, True)
    assert slots.place("a", 0.02) == (0, False)
    assert slots.place("b", 0.03) == (1, True)
    assert slots.place("c", 0.04) == (2, True)
    assert slots.keys == ["a", "b", "c"] and slots.moves == 3


def test_a_slot_is_taken_from_the_microphone_silent_longest_never_from_a_speaker() -> None:
    slots = AudioSlots(2)
    slots.place("a", 0.0)
    slots.place("b", 0.1)
    # both heard within HOLD: a third waits (not heard on the slots)
    assert slots.place("c", 0.2) == (None, False)
    slots.place("b", 0.4)  # b goes on speaking; a fell silent at 0.0
    assert slots.place("c", HOLD + 0.01) == (0, True)
    assert slots.keys == ["c", "b"] and slots.slot_of("a") is None
    # a speaks again: b has been silent for HOLD by now, c has not
    assert slots.place("a", 0.4 + HOLD) == (1, True)
    assert slots.keys == ["c", "a"]


def test_only_sound_renews_or_takes_a_slot() -> None:
    """The chair's and the floor holder's microphones always go out, silence too (and
    DTX packets every 400 ms): only packets with sound keep a slot theirs."""
    slots = AudioSlots(1)
    assert slots.place("chair", 0.0, sound=False) == (None, False)  # silence takes none
    assert slots.place("chair", 0.1, sound=True) == (0, True)
    for n in range(20):  # then two seconds of near-silence: still its slot, not renewed
        assert slots.place("chair", 0.2 + n * 0.1, sound=False) == (0, False)
    assert slots.place("point", 2.0, sound=True) == (0, True)  # silent since 0.1
    assert slots.slot_of("chair") is None


def test_a_microphone_gone_frees_its_slot() -> None:
    slots = AudioSlots(2)
    slots.place("a", 0.0)
    slots.place("b", 0.0)
    assert slots.forget("a") == 0 and slots.forget("a") is None
    assert slots.place("c", 0.01) == (0, True)


# -- a meeting ------------------------------------------------------------------------------
def slot_packets(client: Client, slot: int) -> int:
    counter = client.counters.get(f"audio-slot:{slot}")
    return counter.packets if counter else 0


def carried(client: Client) -> dict[int, str]:
    """Slot -> the participant it carries, as the page was told."""
    return {n: m["participant"] for n, m in client.audio_slots.items() if m["participant"]}


async def heard(client: Client, seconds: float = 0.8) -> dict[int, int]:
    """Packets received per slot in ``seconds``."""
    before = {slot: slot_packets(client, slot) for slot in range(SLOTS)}
    await asyncio.sleep(seconds)
    return {slot: slot_packets(client, slot) - before[slot] for slot in range(SLOTS)}


async def test_a_page_hears_every_microphone_in_slots_without_renegotiating(server) -> None:
    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair"), decode=False)
    points = [
        Client(server.url, "m1", server.token(identity=f"xa-{n}"), decode=False) for n in "abc"
    ]
    await chair.connect(audioSlots=True)
    await points[0].connect(audioSlots=True)
    for point in points[1:]:
        await point.connect()  # an ordinary page: one track per microphone
    try:
        # the slots come with the first offer, before anyone publishes
        await chair.wait_for(lambda: len(chair.counters) == SLOTS, 10)
        assert sorted(chair.track_map.values()) == [f"audio-slot:{n}" for n in range(SLOTS)]
        offers = sum(1 for m in chair.messages if m.get("type") == "offer")
        await chair.publish({"microphone": ToneAudioTrack(300.0)})
        for n, point in enumerate(points):
            await point.publish({"microphone": ToneAudioTrack(400.0 + 100 * n)})
        await chair.wait_for(lambda: len(carried(chair)) == 3, 10)
        told = {
            m["participant"]: (slot, m["publication"])
            for slot, m in chair.audio_slots.items()
            if m["participant"]
        }
        assert set(told) == {point.id for point in points}
        assert len({slot for slot, _ in told.values()}) == 3  # each in a slot of its own
        # each point's voice on its slot, nothing on the others
        got = await heard(chair)
        for point in points:
            assert got[told[point.id][0]] > 20, (point.id, got)
        assert sum(got.values()) == sum(got[slot] for slot, _ in told.values())
        # a subscription to a microphone (and its end) changes nothing: it is in its slot
        await chair.subscribe([told[points[1].id][1]])
        await chair.unsubscribe([told[points[1].id][1]])
        await asyncio.sleep(0.5)
        assert sum(1 for m in chair.messages if m.get("type") == "offer") == offers
        assert [m for m in chair.messages if m.get("type") == "error"] == []

        # a page in slots mode never hears itself: its own microphone's slot is silent
        # there, the chair's and the other points' voices come in theirs
        a = points[0]
        await a.wait_for(lambda: len(carried(a)) == 3, 10)
        assert a.id not in carried(a).values() and chair.id in carried(a).values()
        # (its own microphone's slot is named for nobody there)
        assert a.audio_slots[told[a.id][0]]["participant"] is None
        got_a = await heard(a)
        assert got_a[told[a.id][0]] == 0, got_a  # (one map for the whole room)
        assert sum(1 for n in got_a.values() if n > 20) == 3, got_a

        # a page joining now is told in `joined` whom the slots carry
        newcomer = Client(server.url, "m1", server.token(identity="xa-e"), decode=False)
        joined = await newcomer.connect(audioSlots=True)
        chair_slot = next(n for n, m in a.audio_slots.items() if m["participant"] == chair.id)
        expected = {slot: who for who, (slot, _) in told.items()} | {chair_slot: chair.id}
        assert {int(k): v for k, v in joined["audioSlots"].items()} == expected
        await newcomer.leave()

        # an ordinary page still gets one track per microphone
        b = points[1]
        assert not b.audio_slots
        assert not any(key.startswith("audio-slot:") for key in b.track_map.values())

        # a point leaves: its slot is free for the next voice
        c = points[2]
        gone = told[c.id][0]
        await c.leave()
        await chair.wait_for(lambda: chair.audio_slots[gone]["participant"] is None, 10)
        late = Client(server.url, "m1", server.token(identity="xa-d"), decode=False)
        await late.connect()
        await late.publish({"microphone": ToneAudioTrack(800.0)})
        await chair.wait_for(lambda: chair.audio_slots[gone]["participant"] == late.id, 10)
        assert (await heard(chair))[gone] > 20
        assert sum(1 for m in chair.messages if m.get("type") == "offer") == offers
        await late.leave()
    finally:
        for client in [chair, *points]:
            await client.leave()


async def test_a_g711_microphone_comes_on_a_track_of_its_own(server) -> None:
    """A slot's stream is Opus: a microphone of another codec (a G.711 encoder) reaches
    a slots page on its own track, as it did before slots."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.rtcrtpsender import RTCRtpSender

    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair"), decode=False)
    point = Client(server.url, "m1", server.token(identity="xa-g711"), decode=False)
    await chair.connect(audioSlots=True)
    await point.connect()
    try:
        point.publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = point.publisher.addTransceiver(ToneAudioTrack(500.0), direction="sendonly")
        pcmu = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name == "PCMU"]
        transceiver.setCodecPreferences(pcmu)
        await point._publisher_negotiate([(transceiver, "microphone")])
        await chair.wait_for(lambda: len(chair.publications("microphone")) == 1, 10)
        mic = chair.publications("microphone")[0]
        assert mic["codec"] == "pcmu"
        await chair.wait_for(lambda: mic["id"] in chair.track_map.values(), 10)
        counter = chair.counters[mic["id"]]
        before = counter.packets
        await asyncio.sleep(0.8)
        assert counter.packets - before > 20
        assert not carried(chair)  # in no slot
    finally:
        await point.leave()
        await chair.leave()
