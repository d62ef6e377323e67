"""The chair's rules (conference/realtime/briefing.py) on a real room, in process.

Participants are real `Participant` objects of a real `Room` without peer
connections: what the briefing sends to each page is collected from its signaling
callback, what it does to media is read from the publications' ``blocked`` switch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conference.core.identity import Identity
from conference.realtime import briefing as briefing_module
from conference.realtime.briefing import Briefing, Briefings, Chair
from conference.sfu.bridge import ForwardingReceiver
from conference.sfu.participant import Participant
from conference.sfu.publication import Publication
from conference.sfu.room import RoomError, RoomRegistry


class Page:
    """A joined participant and what its page received."""

    def __init__(self, participant: Participant, inbox: list[dict[str, Any]]) -> None:
        self.participant = participant
        self.inbox = inbox
        self.hung_up: list[str] = []

    @property
    def id(self) -> str:
        return self.participant.id

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.inbox if m["type"] == kind]

    def microphone(self) -> Publication:
        return next(p for p in self.participant.publications.values() if p.source == "microphone")


@pytest.fixture
async def briefings() -> AsyncIterator[Briefings]:
    registry = RoomRegistry(max_rooms=2, max_participants=10)
    briefings = Briefings(registry)
    yield briefings
    await registry.close()


async def join(
    briefing: Briefing, identity: str, chair: bool = False, publish: bool = True
) -> Page:
    inbox: list[dict[str, Any]] = []

    async def signal(message: dict[str, Any]) -> None:
        inbox.append(message)

    who = Identity(
        identity=identity,
        name=f"UBND {identity}",
        role="chair" if chair else "point",
        publish=publish,
        moderate=chair,
    )
    participant = Participant(briefing.room, who, "websocket", signal=signal)
    page = Page(participant, inbox)

    async def disconnect(reason: str) -> None:
        page.hung_up.append(reason)

    participant.disconnect = disconnect
    await briefing.room.join(participant)
    return page


def publish_microphone(briefing: Briefing, page: Page) -> Publication:
    receiver = ForwardingReceiver("audio", None)  # type: ignore[arg-type]  # no connection
    publication = Publication(f"PU_{page.id}", page.id, "microphone", receiver, "opus", 48000)
    page.participant.publications[publication.id] = publication
    briefing.room.publication_added(publication)
    return publication


async def test_the_floor_holds_every_point_but_its_holder_and_never_the_chair(
    briefings: Briefings,
) -> None:
    briefing = briefings.open("m1")
    chair, first, second = [
        await join(briefing, n, chair=n == "chair") for n in ("chair", "a", "b")
    ]
    for page in (chair, first, second):
        publish_microphone(briefing, page)
    await briefing.give_floor(first.participant)
    assert briefing.floor == "a"
    assert second.microphone().blocked and not first.microphone().blocked
    assert not chair.microphone().blocked
    assert second.received("muted-by-moderator")[-1]["muted"] is True
    assert chair.received("floor")[-1] == {"type": "floor", "participant": first.id}
    late = await join(briefing, "c")
    assert publish_microphone(briefing, late).blocked  # joined during the floor: held too
    await briefing.take_floor()
    assert briefing.floor is None and first.microphone().blocked
    with pytest.raises(RoomError, match="nobody has the floor"):
        await briefing.take_floor()
    listener = await join(briefing, "viewer", publish=False)
    with pytest.raises(RoomError, match="no publish grant"):
        await briefing.give_floor(listener.participant)


async def test_a_held_point_speaks_again_only_when_asked_or_given_the_floor(
    briefings: Briefings,
) -> None:
    briefing = briefings.open("m1")
    chair, point = await join(briefing, "chair", chair=True), await join(briefing, "a")
    publish_microphone(briefing, point)
    await briefing.mute_all()
    assert point.microphone().blocked and "a" in briefing.held
    with pytest.raises(RoomError) as refused:
        await briefing.unmute(point.participant, "microphone")
    assert refused.value.code == "muted-by-moderator"
    await briefing.unmute(point.participant, "camera")  # nothing held there: allowed
    await briefing.ask_unmute(point.participant, by=Chair.of(chair.participant))
    assert point.received("unmute-request")[-1]["by"] == chair.id
    await briefing.decline_unmute(point.participant)
    assert chair.received("unmute-declined")[-1]["participant"] == point.id
    with pytest.raises(RoomError):
        await briefing.unmute(point.participant, "microphone")  # declined: asked no more
    await briefing.ask_unmute(point.participant, by=Chair.of(chair.participant))
    await briefing.unmute(point.participant, "microphone")  # consent lifts the hold
    assert not point.microphone().blocked and "a" not in briefing.held
    with pytest.raises(RoomError, match="only a point"):
        await briefing.ask_unmute(chair.participant, by=Chair.of(chair.participant))


async def test_after_mute_all_points_coming_in_are_held_until_release_all(
    briefings: Briefings,
) -> None:
    """A late commune is held as the others are; a point the chair released stays
    released when it comes back; the chair side never; release-all ends it all.  The
    state reaches another node of the meeting with the rest of the chair's."""
    briefing = briefings.open("m1")
    await join(briefing, "chair", chair=True)
    a = await join(briefing, "a")
    publish_microphone(briefing, a)
    assert briefing.state()["holding"] is False
    await briefing.mute_all()
    assert briefing.holding and briefing.state()["holding"] is True and a.microphone().blocked
    late = await join(briefing, "late")
    assert publish_microphone(briefing, late).blocked  # nobody hears it come in
    await asyncio.sleep(0)  # the page is told in a task of its own
    assert late.received("muted-by-moderator")[-1]["muted"] is True
    deputy = await join(briefing, "deputy", chair=True)  # the chair side: never held
    assert not publish_microphone(briefing, deputy).blocked
    await briefing.mute(a.participant, "microphone", False)  # the chair releases a
    assert not a.microphone().blocked and briefing.released == {"a"}
    await briefing.room.leave(a.participant.id)
    again = await join(briefing, "a")
    assert not publish_microphone(briefing, again).blocked  # released: still released
    await briefing.mute(again.participant, "microphone", True)
    assert briefing.released == set()

    # another node of the meeting takes the state and holds its own newcomers
    shared: list[dict[str, Any]] = []
    briefing.share = shared.append
    briefing._share_control()
    registry = RoomRegistry(max_rooms=1, max_participants=10)
    try:
        other = Briefings(registry).open("m1")
        await other.peer_event(shared[-1])
        assert other.holding and other.held == {"a", "late"}
        there = await join(other, "elsewhere")
        assert publish_microphone(other, there).blocked
    finally:
        await registry.close()

    await briefing.release_all()
    assert not briefing.holding and briefing.held == set() and briefing.state()["holding"] is False
    assert not late.microphone().blocked and not again.microphone().blocked
    assert late.received("muted-by-moderator")[-1]["muted"] is False  # told; its page stays muted
    opened = await join(briefing, "opened")
    assert not publish_microphone(briefing, opened).blocked
    # after release-all, taking the floor back holds nobody: the meeting is open
    await briefing.give_floor(opened.participant)
    await briefing.release_all()
    await briefing.take_floor()
    assert not opened.microphone().blocked
    # a floor holds the points again, and those coming in after it ends
    await briefing.give_floor(opened.participant)
    await briefing.take_floor()
    after = await join(briefing, "after")
    assert publish_microphone(briefing, after).blocked
    # a new floor forgets earlier releases: a released point away now is held on return
    await briefing.mute(opened.participant, "microphone", False)
    await briefing.room.leave(opened.participant.id)
    await briefing.give_floor(after.participant)
    back = await join(briefing, "opened")
    assert publish_microphone(briefing, back).blocked
    # a floor holder gone past the grace is forgotten: held when it comes back
    await briefing.room.leave(after.participant.id)
    briefing.tick(time.monotonic() + briefing_module.REJOIN_GRACE + 1)
    assert briefing.floor is None and "after" not in briefing.released
    returning = await join(briefing, "after")
    assert publish_microphone(briefing, returning).blocked


async def test_a_snapshot_without_the_new_fields_keeps_this_node_holding(
    briefings: Briefings,
) -> None:
    """A node of the previous version shares no ``holding`` or ``released``: a raised
    hand there must not switch this node's holding off."""
    briefing = briefings.open("m1")
    await briefing.mute_all()
    old = {"floor": None, "hands": [["x", 1.0]], "held": ["x"], "invited": [], "locked": False}
    await briefing.peer_event({"kind": "control", "at": time.time() + 1, "state": old})
    assert briefing.holding and briefing.hands == [("x", 1.0)]


async def test_the_chairs_mute_of_one_microphone_is_kept_by_identity(
    briefings: Briefings,
) -> None:
    briefing = briefings.open("m1")
    point = await join(briefing, "a")
    publish_microphone(briefing, point)
    await briefing.mute(point.participant, "microphone", True)
    assert point.received("muted-by-moderator")[-1] == {
        "type": "muted-by-moderator",
        "source": "microphone",
        "muted": True,
    }
    with pytest.raises(RoomError, match="nothing published from camera"):
        await briefing.mute(point.participant, "camera", True)
    again = await join(briefing, "a")  # the page rejoins: replaces its session
    assert point.hung_up == ["replaced"]
    assert publish_microphone(briefing, again).blocked


async def test_hands_queue_in_order_and_the_chair_lowers_them(briefings: Briefings) -> None:
    briefing = briefings.open("m1")
    chair, first, second = [
        await join(briefing, n, chair=n == "chair") for n in ("chair", "a", "b")
    ]
    briefing.raise_hand(second.participant, True)
    briefing.raise_hand(first.participant, True)
    briefing.raise_hand(first.participant, True)  # twice: still once in the queue
    state = briefing.state()
    assert [hand["participant"] for hand in state["hands"]] == [second.id, first.id]
    assert [p["hand"] for p in state["participants"]] == [False, True, True]
    briefing.lower_hand(second.participant)
    with pytest.raises(RoomError, match="has not raised a hand"):
        briefing.lower_hand(second.participant)
    await briefing.give_floor(first.participant)  # the floor takes its hand down
    assert briefing.hands == [] and briefing.state()["floor"] == first.id
    viewer = await join(briefing, "viewer", publish=False)
    with pytest.raises(PermissionError):
        briefing.raise_hand(viewer.participant, True)


async def test_a_dropped_point_keeps_hand_and_floor_for_the_grace_time(
    briefings: Briefings,
) -> None:
    briefing = briefings.open("m1")
    await join(briefing, "chair", chair=True)
    point = await join(briefing, "a")
    briefing.raise_hand(point.participant, True)
    await briefing.room.leave(point.id, "connection-failed")
    assert point.received("leave") == [{"type": "leave", "reason": "connection-failed"}]
    assert point.hung_up == ["connection-failed"]
    assert briefing.hands and "a" in briefing.absent_since
    briefing.set_lock(True)
    back = await join(briefing, "a")  # admitted before: it may rejoin a locked room
    assert briefing.state()["hands"][0]["participant"] == back.id
    await briefing.room.leave(back.id, "left")
    assert back.received("leave") == []  # it asked to leave: no notice
    since = briefing.absent_since["a"]
    briefing.tick(since + briefing_module.REJOIN_GRACE + 1)
    assert briefing.hands == [] and "a" not in briefing.absent_since
    await join(briefing, "a")  # forgotten, but still admitted to the locked room
    with pytest.raises(RoomError) as refused:
        await join(briefing, "stranger")
    assert refused.value.code == "room-locked"
    await join(briefing, "chair-2", chair=True)  # the chair's side always enters


async def test_chat_is_cleaned_kept_for_late_joiners_and_rate_limited(
    briefings: Briefings,
) -> None:
    briefing = briefings.open("m1")
    point, other = await join(briefing, "a"), await join(briefing, "b")
    await briefing.chat_message(point.participant, "  Xin chào\u202e\x07 \n\n\nhội nghị ")
    sent = other.received("chat")[-1]
    assert sent["text"] == "Xin chào\n\nhội nghị" and sent["identity"] == "a"
    with pytest.raises(ValueError, match="empty"):
        await briefing.chat_message(point.participant, "\u200b\n ")
    limit, _ = briefing_module.CHAT_RATE
    for n in range(limit - 1):
        await briefing.chat_message(point.participant, f"message {n}")
    with pytest.raises(RoomError) as refused:
        await briefing.chat_message(point.participant, "one too many")
    assert refused.value.code == "rate-limited"
    await briefing.chat_message(other.participant, "the limit is per participant")
    assert len(briefing.chat) == limit + 1


async def test_removal_revokes_tells_why_and_forgets_the_identity(
    briefings: Briefings,
) -> None:
    removed: list[str] = []
    briefings.on_removed = lambda participant: removed.append(participant.who.identity)
    briefing = briefings.open("m1")
    await join(briefing, "chair", chair=True)
    point = await join(briefing, "a")
    briefing.raise_hand(point.participant, True)
    await briefing.remove(point.participant, "Sai\u202e điểm cầu\n")
    assert removed == ["a"]
    assert point.received("leave") == [
        {"type": "leave", "reason": "removed", "message": "Sai điểm cầu"}
    ]
    assert point.hung_up == ["removed"]
    assert briefing.hands == [] and "a" not in briefing.admitted
    assert point.id not in briefing.room.participants


async def test_an_ended_meeting_refuses_joins_and_the_registry_its_cap(
    briefings: Briefings,
) -> None:
    briefing = briefings.open("m1")
    point = await join(briefing, "a")
    await briefing.end()
    assert point.received("leave") == [{"type": "leave", "reason": "meeting-ended"}]
    assert point.hung_up == ["meeting-ended"]
    with pytest.raises(RoomError) as refused:
        briefings.open("m1")
    assert refused.value.code == "meeting-ended"
    briefings.open("m2"), briefings.open("m3")
    with pytest.raises(RoomError) as full:
        briefings.open("m4")
    assert full.value.code == "server-full"


async def test_changes_reach_every_page_as_one_room_state(briefings: Briefings) -> None:
    briefing = briefings.open("m1")
    chair, point = await join(briefing, "chair", chair=True), await join(briefing, "a")
    chair.inbox.clear()
    briefing.set_lock(True)
    briefing.raise_hand(point.participant, True)
    await briefing.set_profile(point.participant, "low", by=Chair.of(chair.participant))
    await asyncio.sleep(briefing_module.BROADCAST_DELAY * 3)
    states = chair.received("room")
    assert len(states) == 1, states
    state = states[0]
    assert state["locked"] and state["hands"][0]["participant"] == point.id
    assert [p["profile"] for p in state["participants"]] == ["high", "low"]
    assert [p["moderator"] for p in state["participants"]] == [True, False]
    assert point.received("profile") == [{"type": "profile", "profile": "low", "by": chair.id}]
