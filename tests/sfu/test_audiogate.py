"""The audio gate: which microphones reach their subscribers (conference/sfu/audiogate.py)."""

from __future__ import annotations

from typing import Any

from conference.sfu.audiogate import GATE_FROM, HANGOVER, MAX_OPEN, SOUND_LEVEL, AudioGate

VOICE = 20
NOISE = 57  # the load test's room noise: sound, but far quieter than a voice
SILENCE = 127


def test_a_microphone_is_open_while_it_carries_sound_and_a_moment_after() -> None:
    gate = AudioGate()
    assert gate.admit("a", VOICE, 0.0)
    assert gate.admit("a", SILENCE, 0.5)  # a pause between words
    assert gate.admit("a", SILENCE, HANGOVER - 0.01)
    assert not gate.admit("a", SILENCE, HANGOVER + 0.01)  # silent since: closed
    assert not gate.admit("b", SILENCE, 0.0)  # never carried sound
    assert gate.admit("b", SOUND_LEVEL - 1, 2.0)  # a quiet voice opens it


def test_without_a_level_a_packet_always_passes() -> None:
    gate = AudioGate(max_open=1)
    assert gate.admit("a", VOICE, 0.0)
    assert gate.admit("encoder", None, 0.0)  # no extension: nothing to judge by


def test_at_most_a_few_are_open_and_a_voice_takes_a_noisy_hall_s_place() -> None:
    gate = AudioGate()
    halls = [f"hall-{n}" for n in range(MAX_OPEN + 3)]
    admitted = {hall: gate.admit(hall, NOISE, 0.0) for hall in halls}
    assert sum(admitted.values()) == MAX_OPEN  # the first to make sound hold the places
    for t in (0.02, 0.04, 0.06):
        for hall in halls:  # equally noisy: nobody takes another's place
            assert gate.admit(hall, NOISE, t) == admitted[hall]
    assert gate.evictions == 0
    # a point starts speaking: its first word takes a noisy hall's place at once
    assert gate.admit("speaker", VOICE, 0.1)
    assert gate.evictions == 1
    open_halls = [hall for hall in halls if gate.is_open(hall, 0.1)]
    assert len(open_halls) == MAX_OPEN - 1
    # ... and keeps it through its pauses, while the halls go on making noise
    for step in range(1, 40):
        t = 0.1 + step * 0.02
        for hall in halls:
            gate.admit(hall, NOISE, t)
        assert gate.admit("speaker", VOICE if step % 10 else SILENCE, t)
    # a voice no louder than the open ones waits
    assert not gate.admit("late", NOISE, 1.0)


def test_a_forgotten_microphone_frees_its_place() -> None:
    gate = AudioGate(max_open=1)
    assert gate.admit("a", VOICE, 0.0)
    assert not gate.admit("b", VOICE + 3, 0.0)  # not 6 dB louder: waits
    gate.forget("a")
    assert gate.admit("b", VOICE + 3, 0.02)


async def test_the_room_lets_the_chair_and_the_floor_holder_through_always() -> None:
    """`Room._admit_audio`: four noisy halls hold the places; the chair's microphone and
    the floor holder's (here on another node) still pass, a fifth hall does not."""
    from types import SimpleNamespace

    from conference.sfu.room import Room

    room = Room("gate")
    try:
        members = [
            {"id": f"PA_{n}", "identity": f"xa-{n}", "moderator": False} for n in range(6)
        ] + [{"id": "PA_chair", "identity": "huyen", "moderator": True}]
        room.set_remote_members("node-2", members)
        assert room._admit_audio(SimpleNamespace(id="TR_x", participant_id="PA_0"), NOISE)
        room._microphones = GATE_FROM + 1  # a large meeting: the gate decides
        room.audio_gate.forget("TR_x")

        def mic(participant: str) -> Any:
            return SimpleNamespace(id=f"TR_{participant}", participant_id=participant)

        for n in range(MAX_OPEN):
            assert room._admit_audio(mic(f"PA_{n}"), NOISE)
        assert not room._admit_audio(mic("PA_4"), NOISE)
        assert room._admit_audio(mic("PA_chair"), NOISE)  # a moderator
        room.events.floor = "xa-5"
        assert room._admit_audio(mic("PA_5"), NOISE)  # the floor holder
        room.events.floor = None
        assert not room._admit_audio(mic("PA_5"), NOISE)
    finally:
        await room.close()
