"""The chair's powers, enforced by the server: mute, remove, hands, floor, mute all, lock, end, chat.

Real server process, real aiortc peers over 127.0.0.1 (conference.tools.client).  The
chair receives with ``decode=False`` so that the tests count the packets the
server forwards: a held microphone must really stop reaching the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conference.tools.client import Client, ClientError
from conference.tools.testmedia import ToneAudioTrack

from .conftest import check_clean_exit, start_server

# counts the packets that reach each participant in short windows: shares the machine
pytestmark = pytest.mark.media


def packets(client: Client, publication_id: str) -> int:
    counter = client.counters.get(publication_id)
    return counter.packets if counter else 0


async def flowing(client: Client, publication_id: str, seconds: float = 1.0) -> int:
    """Packets of ``publication_id`` received by ``client`` in ``seconds``."""
    before = packets(client, publication_id)
    await asyncio.sleep(seconds)
    return packets(client, publication_id) - before


def microphone_of(client: Client, participant_id: str) -> dict[str, Any]:
    for participant in client.room["participants"]:
        if participant["id"] == participant_id:
            return next(p for p in participant["publications"] if p["source"] == "microphone")
    raise AssertionError(f"{participant_id} not in the room")


class Briefing:
    """A chair and two points, each point publishing a tone."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.chair = Client(
            server.url, "m1", server.token(identity="huyen", role="chair"), decode=False
        )
        self.a = Client(server.url, "m1", server.token(identity="xa-a"), decode=False)
        self.b = Client(server.url, "m1", server.token(identity="xa-b"), decode=False)

    async def start(self) -> None:
        for client in (self.chair, self.a, self.b):
            await client.connect()
        await self.chair.publish({"microphone": ToneAudioTrack(300.0)})
        await self.a.publish({"microphone": ToneAudioTrack(500.0)})
        await self.b.publish({"microphone": ToneAudioTrack(700.0)})
        await self.chair.wait_for(lambda: len(self.chair.counters) == 2, 15)
        await self.a.wait_for(lambda: len(self.a.counters) == 2, 15)
        for client in (self.chair, self.a, self.b):
            await client.wait_for(lambda c=client: len(c.publications("microphone")) == 2, 10)
        self.pub_a = microphone_of(self.chair, self.a.id)["id"]
        self.pub_b = microphone_of(self.chair, self.b.id)["id"]
        self.pub_chair = microphone_of(self.a, self.chair.id)["id"]
        await self.chair.wait_for(lambda: packets(self.chair, self.pub_b) > 10, 10)
        await self.a.wait_for(lambda: packets(self.a, self.pub_chair) > 10, 10)

    async def stop(self) -> None:
        for client in (self.a, self.b, self.chair):
            await client.leave()


@pytest.fixture
async def briefing(server: Any) -> AsyncIterator[Briefing]:
    meeting = Briefing(server)
    try:
        await meeting.start()
        yield meeting
    finally:
        await meeting.stop()


async def test_raised_hands_queue_in_order(server):
    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair"))
    points = [Client(server.url, "m1", server.token(identity=f"xa-{i}")) for i in range(3)]
    viewer = Client(server.url, "m1", server.token(identity="tv", role="viewer"))
    for client in (chair, *points, viewer):
        await client.connect(auto_subscribe=False)
    try:
        for point in (points[2], points[0], points[1]):
            await point.send({"type": "raise-hand"})
            await asyncio.sleep(0.02)
        order = [points[2].id, points[0].id, points[1].id]

        def queue() -> list[str]:
            return [hand["participant"] for hand in chair.room.get("hands", [])]

        await chair.wait_for(lambda: queue() == order)
        hands = chair.room["hands"]
        assert hands[0]["at"] <= hands[1]["at"] <= hands[2]["at"]
        flags = {p["id"]: p["hand"] for p in chair.room["participants"]}
        assert flags[points[1].id] is True and flags[chair.id] is False
        # raising twice keeps the place in the queue
        await points[2].send({"type": "raise-hand"})
        await points[0].send({"type": "lower-hand"})
        await chair.wait_for(lambda: queue() == [points[2].id, points[1].id])
        # the chair lowers someone else's hand; a point may not
        error = await points[1].request(
            {"type": "lower-hand", "participant": points[2].id}, "error"
        )
        assert error["code"] == "forbidden"
        await chair.send({"type": "lower-hand", "participant": points[2].id})
        await chair.wait_for(lambda: queue() == [points[1].id])
        error = await chair.request({"type": "lower-hand", "participant": points[2].id}, "error")
        assert error["code"] == "bad-request"
        # a viewer cannot ask to speak
        error = await viewer.request({"type": "raise-hand"}, "error")
        assert error["code"] == "forbidden"
        # a point that leaves for good is no longer in the queue shown
        await points[1].leave()
        await chair.wait_for(lambda: queue() == [])
    finally:
        for client in (viewer, *points, chair):
            await client.leave()


async def test_floor_lets_one_point_speak_and_holds_the_others(briefing: Briefing):
    chair, a, b = briefing.chair, briefing.a, briefing.b
    await b.send({"type": "raise-hand"})
    await a.send({"type": "raise-hand"})
    await chair.wait_for(lambda: len(chair.room.get("hands", [])) == 2)

    since_b = len(b.messages)
    since_a = len(a.messages)
    await chair.send({"type": "give-floor", "participant": a.id})
    floor = await a.wait_message("floor", since=since_a)
    assert floor["participant"] == a.id
    told = await b.wait_message("muted-by-moderator", since=since_b)
    assert told["muted"] is True and told["source"] == "microphone"
    await chair.wait_for(lambda: chair.room.get("floor") == a.id)
    # a's hand left the queue; b's stays
    assert [h["participant"] for h in chair.room["hands"]] == [b.id]
    assert microphone_of(chair, b.id)["blocked"] is True
    assert microphone_of(chair, a.id)["blocked"] is False
    assert next(p for p in chair.room["participants"] if p["id"] == a.id)["floor"] is True
    await asyncio.sleep(0.3)
    # b's audio no longer reaches anyone; a's and the chair's still do
    assert await flowing(chair, briefing.pub_b) == 0
    assert await flowing(a, briefing.pub_b) == 0
    assert await flowing(chair, briefing.pub_a) > 20
    assert await flowing(b, briefing.pub_chair) > 20

    # b cannot unmute itself while held
    error = await b.request({"type": "mute", "source": "microphone", "muted": False}, "error")
    assert error["code"] == "muted-by-moderator"
    assert await flowing(chair, briefing.pub_b) == 0

    # the chair gives the floor to b: a is held now, b speaks
    await chair.send({"type": "give-floor", "participant": b.id})
    await chair.wait_for(lambda: chair.room.get("floor") == b.id)
    await chair.wait_for(lambda: microphone_of(chair, a.id)["blocked"] is True)
    await asyncio.sleep(0.3)
    assert await flowing(chair, briefing.pub_b) > 20
    assert await flowing(chair, briefing.pub_a) == 0

    # taking the floor back holds b again
    since_b = len(b.messages)
    await chair.send({"type": "take-floor"})
    await b.wait_for(
        lambda: any(
            m.get("type") == "muted-by-moderator" and m["muted"] for m in b.messages[since_b:]
        )
    )
    await chair.wait_for(lambda: chair.room.get("floor") is None)
    await asyncio.sleep(0.3)
    assert await flowing(chair, briefing.pub_b) == 0
    error = await chair.request({"type": "take-floor"}, "error")
    assert error["code"] == "bad-request"


async def test_subscription_changes_in_a_burst_share_offers(briefing: Briefing):
    """A province's briefing opens with a hundred points joining: each adds a microphone
    to every page, and each change renegotiates the page's subscriber connection.  The
    server makes at most one offer per OFFER_SPACING (changes meanwhile join the next
    offer), so the page's answers are never refused for their rate (the refusal used to
    leave the connection waiting for its answer: a chair's cameras stayed black)."""
    chair = briefing.chair
    since = len(chair.messages)
    started = asyncio.get_running_loop().time()
    for _ in range(30):  # 60 changes over 2.4 s, as points join at 25 a second
        await chair.unsubscribe([briefing.pub_a])
        await asyncio.sleep(0.04)
        await chair.subscribe([briefing.pub_a])
        await asyncio.sleep(0.04)
    elapsed = asyncio.get_running_loop().time() - started
    await chair.wait_for(lambda: chair.subscriber is not None and briefing.pub_a in {
        chair.track_map.get(t.mid or "") for t in chair.subscriber.getTransceivers()
        if t.currentDirection in ("sendrecv", "recvonly")
    }, 10)  # fmt: skip
    await asyncio.sleep(0.6)  # the last offer answered
    errors = [m for m in chair.messages[since:] if m.get("type") == "error"]
    assert errors == []
    offers = [m for m in chair.messages[since:] if m.get("type") == "offer"]
    # one offer per 0.25 s at most (and the last one after the burst)
    assert 2 <= len(offers) <= elapsed / 0.25 + 2, len(offers)
    assert await flowing(chair, briefing.pub_a) > 20


class _LongAnswers(Client):
    """Answers as long as a province chair's (~1.7 KB per track, 200 tracks and more)."""

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("type") == "answer":
            sdp = message["sdp"]
            at = sdp.index("m=")
            padding = "".join(f"a=x-padding:{i:06d}{'x' * 90}\r\n" for i in range(3000))
            message = message | {"sdp": sdp[:at] + padding + sdp[at:]}
        await super().send(message)


async def test_an_answer_as_long_as_a_province_chair_s_is_taken(server):
    chair = _LongAnswers(
        server.url, "m1", server.token(identity="huyen", role="chair"), decode=False
    )
    point = Client(server.url, "m1", server.token(identity="xa-a"), decode=False)
    await chair.connect()
    await point.connect()
    try:
        await point.publish({"microphone": ToneAudioTrack(500.0)})
        await chair.wait_for(lambda: len(chair.counters) == 1, 15)
        publication = next(iter(chair.counters))
        assert await flowing(chair, publication) > 20
        assert [m for m in chair.messages if m.get("type") == "error"] == []
    finally:
        await point.leave()
        await chair.leave()


async def test_mute_all_then_ask_a_point_to_unmute(briefing: Briefing):
    chair, a, b = briefing.chair, briefing.a, briefing.b
    await chair.send({"type": "mute-all"})
    await chair.wait_for(
        lambda: microphone_of(chair, a.id)["blocked"] and microphone_of(chair, b.id)["blocked"]
    )
    await a.wait_message("muted-by-moderator", since=0)
    await asyncio.sleep(0.3)
    assert await flowing(chair, briefing.pub_a) == 0
    assert await flowing(chair, briefing.pub_b) == 0
    assert await flowing(a, briefing.pub_chair) > 20  # the chair side is never muted
    assert microphone_of(a, chair.id)["blocked"] is False

    # asking is not unmuting: nothing flows until the point agrees
    since = len(a.messages)
    await chair.send({"type": "ask-unmute", "participant": a.id})
    request = await a.wait_message("unmute-request", since=since)
    assert request["by"] == chair.id and request["name"]
    assert await flowing(chair, briefing.pub_a) == 0
    await a.send({"type": "mute", "source": "microphone", "muted": False})
    await chair.wait_for(lambda: microphone_of(chair, a.id)["blocked"] is False)
    await asyncio.sleep(0.3)
    assert await flowing(chair, briefing.pub_a) > 20

    # b declines: the chair is told, b stays held and cannot unmute later on its own
    await chair.send({"type": "ask-unmute", "participant": b.id})
    await b.wait_message("unmute-request", since=0)
    since = len(chair.messages)
    await b.send({"type": "unmute-decline"})
    declined = await chair.wait_message("unmute-declined", since=since)
    assert declined["participant"] == b.id
    error = await b.request({"type": "mute", "source": "microphone", "muted": False}, "error")
    assert error["code"] == "muted-by-moderator"
    assert await flowing(chair, briefing.pub_b) == 0


async def test_points_coming_in_after_mute_all_are_held_until_release_all(briefing: Briefing):
    """A province's briefing: the chair mutes everyone, and a commune that comes in late
    is held too (not heard in every hall), a released point stays released when its
    link drops and comes back, and release-all opens every microphone again."""
    chair, a, b, server = briefing.chair, briefing.a, briefing.b, briefing.server

    def shown(participant_id: str, blocked: bool | None = None) -> bool:
        """The chair's room state lists the participant's microphone (as held or not)."""
        try:
            microphone = microphone_of(chair, participant_id)
        except (AssertionError, StopIteration):  # not (yet) in the room, or no microphone
            return False
        return blocked is None or microphone["blocked"] is blocked

    assert chair.room.get("holding") is False
    await chair.send({"type": "mute-all"})
    await chair.wait_for(
        lambda: microphone_of(chair, a.id)["blocked"] and microphone_of(chair, b.id)["blocked"]
    )
    await chair.wait_for(lambda: chair.room.get("holding") is True)
    # a agrees to speak when asked: released
    await chair.send({"type": "ask-unmute", "participant": a.id})
    await a.wait_message("unmute-request", since=0)
    await a.send({"type": "mute", "source": "microphone", "muted": False})
    await chair.wait_for(lambda: microphone_of(chair, a.id)["blocked"] is False)

    late = Client(server.url, "m1", server.token(identity="xa-c"), decode=False)
    back = Client(server.url, "m1", server.token(identity="xa-a"), decode=False)
    opened = Client(server.url, "m1", server.token(identity="xa-d"), decode=False)
    try:
        # a commune comes in late: held before anyone hears it
        await late.connect()
        await late.publish({"microphone": ToneAudioTrack(900.0)})
        told = await late.wait_message("muted-by-moderator", since=0)
        assert told["muted"] is True
        await chair.wait_for(lambda: shown(late.id, blocked=True))
        pub_late = microphone_of(chair, late.id)["id"]
        await asyncio.sleep(0.5)
        assert packets(chair, pub_late) == 0
        error = await late.request(
            {"type": "mute", "source": "microphone", "muted": False}, "error"
        )
        assert error["code"] == "muted-by-moderator"

        # a's link drops and it comes back: still released, heard at once
        await a.close()
        await back.connect()
        await back.publish({"microphone": ToneAudioTrack(500.0)})
        await chair.wait_for(lambda: shown(back.id), 10)
        await chair.wait_for(lambda: packets(chair, microphone_of(chair, back.id)["id"]) > 10, 10)
        assert microphone_of(chair, back.id)["blocked"] is False
        assert not any(m.get("type") == "muted-by-moderator" for m in back.messages)

        # release-all: every hold lifted, the points told; a newcomer now comes in open
        since_b = len(b.messages)
        await chair.send({"type": "release-all"})
        await chair.wait_for(lambda: chair.room.get("holding") is False)
        await chair.wait_for(
            lambda: (
                not microphone_of(chair, b.id)["blocked"]
                and not microphone_of(chair, late.id)["blocked"]
            )
        )
        released = await b.wait_message("muted-by-moderator", since=since_b)
        assert released["muted"] is False
        await asyncio.sleep(0.3)
        assert await flowing(chair, pub_late) > 20
        await opened.connect()
        await opened.publish({"microphone": ToneAudioTrack(1100.0)})
        await chair.wait_for(lambda: shown(opened.id), 10)
        await chair.wait_for(lambda: packets(chair, microphone_of(chair, opened.id)["id"]) > 10, 10)
        assert not any(m.get("type") == "muted-by-moderator" for m in opened.messages)
    finally:
        for client in (opened, back, late):
            await client.leave()


async def test_lock_refuses_new_points_but_lets_members_rejoin(server):
    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair"))
    member = Client(server.url, "m1", server.token(identity="xa-a"))
    await chair.connect()
    await member.connect()
    try:
        await chair.send({"type": "lock", "locked": True})
        await chair.wait_for(lambda: chair.room.get("locked") is True)
        stranger = Client(server.url, "m1", server.token(identity="xa-moi"))
        with pytest.raises(ClientError) as refused:
            await stranger.connect()
        assert refused.value.code == "room-locked"
        # a member that drops comes back (its new session replaces the old one)
        again = Client(server.url, "m1", server.token(identity="xa-a"))
        await again.connect()
        await member.closed.wait()
        assert member.left_reason == "replaced"
        # a point may not unlock
        error = await again.request({"type": "lock", "locked": False}, "error")
        assert error["code"] == "forbidden"
        error = await chair.request({"type": "lock", "locked": "no"}, "error")
        assert error["code"] == "bad-message"
        await chair.send({"type": "lock", "locked": False})
        await chair.wait_for(lambda: chair.room.get("locked") is False)
        await stranger.connect()
        await stranger.leave()
        await again.leave()
    finally:
        await member.close()
        await chair.leave()


async def test_end_meeting_for_everyone(server):
    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair"))
    point_token = server.token(identity="xa-a")
    point = Client(server.url, "m1", point_token)
    await chair.connect()
    await point.connect()
    try:
        error = await point.request({"type": "end-meeting"}, "error")
        assert error["code"] == "forbidden"
        await chair.send({"type": "end-meeting"})
        await point.closed.wait()
        await chair.closed.wait()
        assert point.left_reason == "meeting-ended"
        assert chair.left_reason == "meeting-ended"
        assert point.ws is not None and point.ws.close_code == 4410
        for token in (point_token, server.token(identity="huyen", role="chair")):
            late = Client(server.url, "m1", token)
            with pytest.raises(ClientError) as refused:
                await late.connect()
            assert refused.value.code == "meeting-ended"
        # another meeting of the same server is not affected
        other = Client(server.url, "m2", server.token(meeting="m2", identity="xa-a"))
        await other.connect()
        await other.leave()
    finally:
        await point.close()
        await chair.close()


async def test_chat_fans_out_with_history(server):
    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair", name="Chủ trì"))
    point = Client(server.url, "m1", server.token(identity="xa-a", name="UBND xã Tân Thịnh"))
    await chair.connect()
    await point.connect()
    try:
        since = len(chair.messages)
        await point.send({"type": "chat", "text": "  Xin chào\u202e <b>huyện</b>\x07\n\n\n\nhết  "})
        message = await chair.wait_message("chat", since=since)
        assert message["text"] == "Xin chào <b>huyện</b>\n\nhết"  # no control characters
        assert message["participant"] == point.id
        assert message["name"] == "UBND xã Tân Thịnh"
        assert isinstance(message["at"], int)
        await point.wait_for(lambda: any(m.get("type") == "chat" for m in point.messages))
        await chair.send({"type": "chat", "text": "Đã nhận"})

        for bad, code in (
            ({"type": "chat"}, "bad-message"),
            ({"type": "chat", "text": 5}, "bad-message"),
            ({"type": "chat", "text": " \n\x00 "}, "bad-request"),
            ({"type": "chat", "text": "a" * 1001}, "bad-request"),
        ):
            error = await point.request(bad, "error")
            assert error["code"] == code, bad
            assert error["request"] == "chat"

        late = Client(server.url, "m1", server.token(identity="xa-b"))
        joined = await late.connect()
        assert [m["text"] for m in joined["chat"]] == ["Xin chào <b>huyện</b>\n\nhết", "Đã nhận"]
        await late.leave()

        # at most 10 messages in 10 s per session
        codes = []
        for i in range(12):
            await point.send({"type": "chat", "text": f"tin {i}"})
        await asyncio.sleep(0.5)
        codes = [m["code"] for m in point.messages if m.get("type") == "error"]
        assert codes.count("rate-limited") >= 1
    finally:
        await point.leave()
        await chair.leave()


async def test_chair_actions_need_the_moderate_grant_and_good_payloads(server):
    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair"))
    point = Client(server.url, "m1", server.token(identity="xa-a"))
    await chair.connect()
    await point.connect()
    try:
        await chair.wait_for(lambda: len(chair.room["participants"]) == 2)
        for message in (
            {"type": "give-floor", "participant": chair.id},
            {"type": "take-floor"},
            {"type": "mute-all"},
            {"type": "release-all"},
            {"type": "ask-unmute", "participant": chair.id},
            {"type": "lock", "locked": True},
            {"type": "end-meeting"},
        ):
            error = await point.request(message, "error")
            assert error["code"] == "forbidden", message
            assert error["request"] == message["type"]
        for message, code in (
            ({"type": "give-floor"}, "unknown-participant"),
            ({"type": "give-floor", "participant": ["x"]}, "unknown-participant"),
            ({"type": "ask-unmute", "participant": "PA_nobody"}, "unknown-participant"),
            ({"type": "ask-unmute", "participant": chair.id}, "bad-request"),
            ({"type": "remove", "participant": point.id, "reason": 3}, "bad-message"),
            ({"type": "lock"}, "bad-message"),
        ):
            error = await chair.request(message, "error")
            assert error["code"] == code, message
        # nothing changed, and both sessions go on
        assert chair.room.get("floor") is None and chair.room.get("locked") is False
        assert chair.room.get("holding") is False
        assert len(chair.room["participants"]) == 2

        # removal with a reason: the point is told why
        await chair.send({"type": "remove", "participant": point.id, "reason": "Sai điểm cầu\x00"})
        await point.closed.wait()
        leave = next(m for m in point.messages if m.get("type") == "leave")
        assert leave == {"type": "leave", "reason": "removed", "message": "Sai điểm cầu"}
    finally:
        await point.close()
        await chair.leave()


async def test_a_rejoining_point_keeps_its_hand_and_its_hold(server):
    chair = Client(server.url, "m1", server.token(identity="huyen", role="chair"))
    a = Client(server.url, "m1", server.token(identity="xa-a"))
    b = Client(server.url, "m1", server.token(identity="xa-b"))
    for client in (chair, a, b):
        await client.connect(auto_subscribe=False)
    await b.publish({"microphone": ToneAudioTrack()})
    rejoined: list[Client] = []
    try:
        await a.send({"type": "raise-hand"})
        await asyncio.sleep(0.02)
        await b.send({"type": "raise-hand"})
        await chair.wait_for(lambda: len(chair.room.get("hands", [])) == 2)
        await chair.wait_for(lambda: len(chair.publications("microphone")) == 1)
        await chair.send({"type": "mute-all"})
        await chair.wait_for(lambda: chair.publications("microphone")[0]["blocked"] is True)

        # a's connection drops (no leave): its hand is kept while it comes back
        await a.close()
        await chair.wait_for(lambda: len(chair.room["participants"]) == 2)
        assert [h["participant"] for h in chair.room["hands"]] == [b.id]
        a2 = Client(server.url, "m1", server.token(identity="xa-a"))
        rejoined.append(a2)
        await a2.connect(auto_subscribe=False)
        await chair.wait_for(
            lambda: [h["participant"] for h in chair.room.get("hands", [])] == [a2.id, b.id]
        )

        # b opens the meeting again while its old session is still up: replaced,
        # and the new session's microphone is held like the old one
        b2 = Client(server.url, "m1", server.token(identity="xa-b"))
        rejoined.append(b2)
        await b2.connect(auto_subscribe=False)
        await b.closed.wait()
        assert b.left_reason == "replaced"
        await b2.publish({"microphone": ToneAudioTrack()})
        told = await b2.wait_message("muted-by-moderator", since=0)
        assert told["muted"] is True
        await chair.wait_for(
            lambda: any(
                p["participant"] == b2.id and p["blocked"] for p in chair.publications("microphone")
            )
        )
        assert [h["participant"] for h in chair.room["hands"]] == [a2.id, b2.id]
        error = await b2.request({"type": "mute", "source": "microphone", "muted": False}, "error")
        assert error["code"] == "muted-by-moderator"
    finally:
        for client in (*rejoined, b, a, chair):
            await client.leave()


# -- moderation of one participant (was tests/test_moderation.py) ----------------------


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
        flowing = packets(chair, publication)
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
        blocked_at = packets(chair, publication)
        await asyncio.sleep(1.0)
        assert packets(chair, publication) == blocked_at  # nothing forwarded

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
        assert packets(chair, publication) > blocked_at + 20
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


async def test_a_removed_point_s_token_stays_refused_after_a_restart(tmp_path):
    """The revocation is kept in the database (conference/domain/authstate.py)."""
    server = start_server(tmp_path)
    try:
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
        finally:
            await point.close()
            await chair.leave()
        check_clean_exit(server)
        server = start_server(tmp_path)  # the same data directory
        again = Client(server.url, "m1", token)
        with pytest.raises(ClientError) as refused:
            await again.connect()
        assert refused.value.code == "revoked"
    finally:
        check_clean_exit(server)


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
