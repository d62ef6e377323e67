"""The chair's powers over the room, enforced by the server."""

from __future__ import annotations

import asyncio

import pytest

from conference.tools.client import Client, ClientError
from conference.tools.testmedia import ToneAudioTrack


async def _counter_packets(client: Client, publication_id: str) -> int:
    counter = client.counters.get(publication_id)
    return counter.packets if counter else 0


async def test_point_may_not_moderate(server):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    point = Client(server.url, "m1", server.token(identity="xa-a"))
    await chair.connect()
    await point.connect()
    await chair.publish({"microphone": ToneAudioTrack()})
    await point.wait_for(lambda: len(point.publications()) == 1)
    try:
        for message in (
            {"type": "remove", "participant": chair.id},
            {
                "type": "mute-participant",
                "participant": chair.id,
                "source": "microphone",
                "muted": True,
            },
        ):
            error = await point.request(message, "error")
            assert error["code"] == "forbidden"
            assert error["message"] == "only a moderator (the chair) may do this"
        # nothing happened to the chair, and the point's session goes on
        assert (await point.request({"type": "ping", "id": 7}, "pong"))["id"] == 7
        assert len(point.room["participants"]) == 2
        assert point.publications()[0]["blocked"] is False
    finally:
        await point.leave()
        await chair.leave()


async def test_chair_mutes_a_point_and_the_server_stops_forwarding(server):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"), decode=False)
    point = Client(server.url, "m1", server.token(identity="xa-a"))
    await chair.connect()
    await point.connect()
    await point.publish({"microphone": ToneAudioTrack(500.0)})
    try:
        await chair.wait_for(lambda: len(chair.counters) == 1)
        publication = next(iter(chair.counters))
        await asyncio.sleep(1.0)
        flowing = await _counter_packets(chair, publication)
        assert flowing > 20

        await chair.send(
            {
                "type": "mute-participant",
                "participant": point.id,
                "source": "microphone",
                "muted": True,
            }
        )
        told = await point.wait_message("muted-by-moderator")
        assert told == {"type": "muted-by-moderator", "source": "microphone", "muted": True}
        await chair.wait_for(lambda: chair.publications()[0]["blocked"] is True)
        await asyncio.sleep(0.3)
        blocked_at = await _counter_packets(chair, publication)
        await asyncio.sleep(1.0)
        assert await _counter_packets(chair, publication) == blocked_at  # nothing forwarded

        await chair.send(
            {
                "type": "mute-participant",
                "participant": point.id,
                "source": "microphone",
                "muted": False,
            }
        )
        await point.wait_for(
            lambda: any(
                m.get("type") == "muted-by-moderator" and m["muted"] is False
                for m in point.messages
            )
        )
        await asyncio.sleep(1.0)
        assert await _counter_packets(chair, publication) > blocked_at + 20
    finally:
        await point.leave()
        await chair.leave()


async def test_removed_point_is_told_and_cannot_rejoin_with_its_token(server):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    token = server.token(identity="xa-b")
    point = Client(server.url, "m1", token)
    await chair.connect()
    await point.connect()
    try:
        await chair.wait_for(lambda: len(chair.room["participants"]) == 2)
        await chair.send({"type": "remove", "participant": point.id})
        await point.closed.wait()
        assert point.left_reason == "removed"
        assert point.ws.close_code == 4410
        await chair.wait_for(lambda: len(chair.room["participants"]) == 1)

        again = Client(server.url, "m1", token)
        with pytest.raises(ClientError) as refused:
            await again.connect()
        assert refused.value.code == "revoked"
        # a fresh token (issued by the office) lets the point back in
        back = Client(server.url, "m1", server.token(identity="xa-b"))
        await back.connect()
        await back.leave()
    finally:
        await point.close()
        await chair.leave()


async def test_moderation_of_unknown_participants_is_an_error(server):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    try:
        error = await chair.request({"type": "remove", "participant": "PA_nobody"}, "error")
        assert error["code"] == "unknown-participant"
        error = await chair.request({"type": "remove", "participant": chair.id}, "error")
        assert error["code"] == "bad-request"
    finally:
        await chair.leave()
