"""The chaired briefing: the meeting rules on top of a media room.

A `Room` (conference/sfu/room.py) forwards media and knows nothing of chairs and
points: it asks its events object (`RoomEvents`) before a join and reports joins,
departures, new publications, the speaker, simulcast layers and changes.  A
`Briefing` is that object for a meeting: it holds the chair's state (the floor, raised
hands, held microphones, consent to unmute, the lock, the chat and its rate limit),
keeps it across a point's rejoin (by identity, for `REJOIN_GRACE`), and builds the
signaling messages that tell the pages (docs/PROTOCOL.md, "Chairing the meeting").
`Briefings` opens one per live room and remembers ended meetings.

When the meeting spans nodes (conference/cluster), a briefing shares what happens
here (`share`: chat, the chair's state as a snapshot, commands on another node's
point, a declined request to unmute, the end) and takes the other nodes' (`peer_event`): each node enforces the
chair's state on its own points.

Policy refusals raise `RoomError` (an ``error`` message with its code) or
`PermissionError` (``forbidden``); checking a message's shape is the caller's work
(conference/realtime/messages.py).

Size: a little over 600 lines: the chair's rules and their sharing with other nodes are
one state (a rule that holds a microphone must also reach the snapshot); splitting the
sharing out would make each rule live in two modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import jsontext
from ..recording import recorder as recording
from ..sfu.participant import Participant
from ..sfu.publication import Publication
from ..sfu.room import Room, RoomError, RoomEvents, RoomRegistry

logger = logging.getLogger(__name__)

#: the chair's message each command of `Briefing.command_elsewhere` came from
COMMAND_REQUESTS = {
    "remove": "remove",
    "ask-unmute": "ask-unmute",
    "set-profile": "set-profile",
    "mute": "mute-participant",
}

REJOIN_GRACE = 30.0  # a dropped point keeps its raised hand and the floor this long
CHAT_HISTORY = 50  # messages sent to a page when it joins
MAX_CHAT_CHARS = 1000
CHAT_RATE = (10, 10.0)  # at most 10 messages in 10 s per participant
MAX_REASON_CHARS = 200
ENDED_MEMORY = 12 * 3600.0  # an ended meeting refuses joins this long (in memory)
BROADCAST_DELAY = 0.05  # changes within this time go out as one room state


def printable_text(text: str, limit: int, multiline: bool = True) -> str:
    """User text made safe to show and log: NFC, no control or bidi-override characters.

    Pages render it as text (never HTML); this removes what could still mislead a
    reader (a right-to-left override reversing a name, invisible characters) and
    collapses blank lines.  Raises ValueError when nothing is left or it is too long.
    """
    text = unicodedata.normalize("NFC", text)
    kept = []
    for char in text:
        if char == "\n" and multiline:
            kept.append(char)
        elif char in "\t\n\r":
            kept.append(" ")
        elif unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(char)
    lines = [line.rstrip() for line in "".join(kept).strip().split("\n")]
    cleaned = "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))
    if not cleaned:
        raise ValueError("the text is empty")
    if len(cleaned) > limit:
        raise ValueError(f"the text is longer than {limit} characters")
    return cleaned


def muted_notice(source: str, muted: bool) -> dict[str, Any]:
    return {"type": "muted-by-moderator", "source": source, "muted": muted}


@dataclass(frozen=True)
class Chair:
    """Who gives a chair's command: its session id and name (on this node or another)."""

    id: str
    name: str

    @classmethod
    def of(cls, participant: Participant) -> Chair:
        return cls(participant.id, participant.who.name)


class Briefing(RoomEvents):
    """The chair's rules for one room; its state is kept by identity across rejoins."""

    def __init__(
        self,
        room: Room,
        on_removed: Callable[[Participant], None] | None = None,
        on_closed: Callable[[Briefing], None] | None = None,
    ) -> None:
        self.room = room
        #: called before the chair removes a participant (the server revokes its token)
        self.on_removed = on_removed
        self._on_closed = on_closed
        self.ended = False  # the chair ended the meeting for everyone
        #: a scheduled meeting's room (the lobby says so), not an ad-hoc room
        self.scheduled = False
        self.locked = False
        self.floor: str | None = None  # identity of the floor holder
        self.hands: list[tuple[str, float]] = []  # (identity, time raised), in order
        self.held: set[str] = set()  # identities whose microphone the chair holds muted
        #: the room holds the points (since `mute_all` or a floor, until `release_all`):
        #: a point that comes in is held too, unless the chair released it
        self.holding = False
        #: identities the chair released (or that consented to unmute) while holding
        self.released: set[str] = set()
        self.invited: set[str] = set()  # held identities asked to unmute (consent lifts it)
        self.admitted: set[str] = set()  # identities that joined (may rejoin a locked room)
        #: identities the chair removed (on any node): not learnt as admitted from another
        #: node's list, which may still show them for a moment
        self.removed: set[str] = set()
        self.absent_since: dict[str, float] = {}  # identity -> monotonic time it left
        self.chat: deque[dict[str, Any]] = deque(maxlen=CHAT_HISTORY)
        self._chat_times: dict[str, deque[float]] = {}
        self._chat_seq = 0
        self._broadcast_handle: asyncio.TimerHandle | None = None
        #: Tells the meeting's other nodes what happened here (a chat message, the chair's
        #: state, the end), when the meeting spans nodes (set by the composition root);
        #: see `peer_event`.
        self.share: Callable[[dict[str, Any]], None] | None = None
        #: the chair's state as last shared with or taken from the other nodes:
        #: (its time, the snapshot), see `_share_control`; a new room's empty state
        #: is never shared (it would undo the meeting's)
        self._control: tuple[float, dict[str, Any]] = (0.0, self._control_state())

    @property
    def meeting_id(self) -> str:
        return self.room.meeting_id

    # -- what the room reports (RoomEvents) ------------------------------------------
    def admit(self, participant: Participant) -> None:
        identity = participant.who.identity
        if self.locked and not participant.who.moderate and identity not in self.admitted:
            raise RoomError("room-locked", "the chair has locked the meeting")

    def joined(self, participant: Participant) -> None:
        self.admitted.add(participant.who.identity)
        self.removed.discard(participant.who.identity)
        self.absent_since.pop(participant.who.identity, None)

    async def departed(self, participant: Participant, reason: str, message: str | None) -> None:
        identity = participant.who.identity
        if not any(p.who.identity == identity for p in self.room.participants.values()):
            self.absent_since[identity] = time.monotonic()
        self._chat_times.pop(participant.id, None)
        if reason != "left":  # it did not ask to leave: tell it why
            notice: dict[str, Any] = {"type": "leave", "reason": reason}
            if message:
                notice["message"] = message
            await participant.send(notice)

    def publication_added(self, publication: Publication) -> None:
        """A held point's new microphone is held before anyone receives it."""
        owner = self.room.participants.get(publication.participant_id)
        if publication.source != "microphone" or owner is None:
            return
        identity = owner.who.identity
        if (
            self.holding
            and identity != self.floor
            and not owner.who.moderate
            and identity not in self.held
            and identity not in self.released
        ):
            # a point coming in while the room holds the points (after mute-all or
            # during the floor) is held too
            self.held.add(identity)
            self.changed()
        if identity in self.held:
            publication.blocked = True
            asyncio.ensure_future(owner.send(muted_notice("microphone", True)))

    async def speaker_changed(self, participant_id: str | None) -> None:
        await self.broadcast({"type": "speaker", "participant": participant_id})

    def layers_changed(self, publication: Publication, active: list[bool]) -> None:
        """Dynacast: tell the publisher which simulcast layers to encode."""
        owner = self.room.participants.get(publication.participant_id)
        if owner is not None:
            message = {
                "type": "layers",
                "publication": publication.id,
                "rids": [layer.rid for layer in publication.layers],
                "active": active,
            }
            asyncio.ensure_future(owner.send(message))

    def changed(self) -> None:
        """Send the room state to every page, once for the changes of `BROADCAST_DELAY`."""
        if self._broadcast_handle is not None or self.room.closed:
            return

        def fire() -> None:
            self._broadcast_handle = None
            asyncio.ensure_future(self.broadcast(self.state()))
            self._share_control()

        self._broadcast_handle = asyncio.get_running_loop().call_later(BROADCAST_DELAY, fire)

    def tick(self, now: float) -> None:
        """A point gone longer than `REJOIN_GRACE` loses its hand and the floor."""
        elsewhere = {member.get("identity") for member in self._remote_members()}
        # a point present on another node was admitted there: it may come back here (a
        # reconnection lands on any node) when the chair has locked the meeting since
        self.admitted |= {
            identity
            for identity in elsewhere
            if isinstance(identity, str) and identity not in self.removed
        }
        for identity, since in list(self.absent_since.items()):
            if identity in elsewhere:  # it rejoined on another node of the meeting
                del self.absent_since[identity]
            elif now - since > REJOIN_GRACE:
                admitted = identity in self.admitted
                self._forget(identity)
                if admitted:  # gone, but it may still rejoin a locked room
                    self.admitted.add(identity)

    def closed(self) -> None:
        if self._broadcast_handle is not None:
            self._broadcast_handle.cancel()
            self._broadcast_handle = None
        if self._on_closed is not None:
            self._on_closed(self)

    # -- the chair's actions -----------------------------------------------------------
    async def hold(self, identity: str, held: bool) -> None:
        """Hold (or release) the microphones of ``identity``; tell each changed session."""
        self._set_held(identity, held)
        for participant in list(self.room.participants.values()):
            if participant.who.identity == identity:
                await self._enforce_hold(participant, held)
        self.changed()

    @staticmethod
    async def _enforce_hold(participant: Participant, held: bool) -> None:
        """Block (or unblock) a session's microphones; tell it if that changed anything."""
        changed = False
        for publication in participant.publications.values():
            if publication.source == "microphone" and publication.blocked != held:
                publication.blocked = held
                changed = True
        if changed:
            await participant.send(muted_notice("microphone", held))

    async def mute(self, target: Participant, source: str, muted: bool) -> None:
        """The chair mutes (or releases) one source of one session.

        A held microphone stays held across the point's rejoins (by identity).
        """
        if not self.room.block(target.id, source, muted):
            raise RoomError("unknown-publication", f"nothing published from {source}")
        if source == "microphone":
            self._set_held(target.who.identity, muted)
        self.changed()
        await target.send(muted_notice(source, muted))

    def _set_held(self, identity: str, held: bool) -> None:
        """Remember a hold by identity; a released point is no longer asked to unmute
        (and, while the room holds the points, stays released when it comes back)."""
        if held:
            self.held.add(identity)
            self.released.discard(identity)
        else:
            self.held.discard(identity)
            self.invited.discard(identity)
            if self.holding:
                self.released.add(identity)

    def _chair_side(self, identity: str) -> bool:
        """The chair's own sessions (moderate grant) are never muted by the room."""
        return any(
            p.who.moderate for p in self.room.participants.values() if p.who.identity == identity
        ) or any(
            m.get("moderator") is True
            for m in self._remote_members()
            if m.get("identity") == identity
        )

    def _remote_members(self) -> list[dict[str, Any]]:
        """The meeting's participants on other nodes (as their nodes describe them)."""
        return self.room.remote_participants()

    def _identities(self) -> set[str]:
        """Everyone in the meeting, on this node or another."""
        here = {p.who.identity for p in self.room.participants.values()}
        return here | {str(m.get("identity")) for m in self._remote_members()}

    async def give_floor(self, participant: Participant | dict[str, Any]) -> None:
        """``participant`` speaks: released and shown large; every other point is held.

        ``participant`` may be on another node (its description, see `remote_member`).
        """
        if isinstance(participant, dict):
            publish, identity = participant.get("publish") is True, str(participant["identity"])
            participant_id = str(participant["id"])
        else:
            publish, identity = participant.who.publish, participant.who.identity
            participant_id = participant.id
        if not publish:
            raise RoomError("bad-request", "this participant cannot speak (no publish grant)")
        self.floor = identity
        self.holding = True
        self.released.clear()  # a point away now is held when it comes back
        self.hands = [hand for hand in self.hands if hand[0] != identity]
        for other in self._identities():
            if other != identity and not self._chair_side(other):
                await self.hold(other, True)
        await self.hold(identity, False)
        await self.broadcast({"type": "floor", "participant": participant_id})
        self.room.program.refresh()

    async def take_floor(self) -> None:
        """End the floor: its holder is held again (unless it is the chair side)."""
        if self.floor is None:
            raise RoomError("bad-request", "nobody has the floor")
        identity, self.floor = self.floor, None
        if self.holding and not self._chair_side(identity):  # (not after release-all)
            await self.hold(identity, True)
        await self.broadcast({"type": "floor", "participant": None})
        self.changed()

    async def mute_all(self) -> None:
        """Hold every microphone but the chair side's, and those of points coming in
        later, until `release_all`; ends the floor."""
        self.holding = True
        self.released.clear()
        if self.floor is not None:
            self.floor = None
            await self.broadcast({"type": "floor", "participant": None})
        for identity in self._identities():
            if not self._chair_side(identity):
                await self.hold(identity, True)
        self.changed()

    async def release_all(self) -> None:
        """Lift every hold and stop holding points that come in (the floor stays).

        As with one point's release, the pages stay muted: each point unmutes itself.
        """
        self.holding = False
        self.released.clear()
        for identity in sorted(self.held):
            await self.hold(identity, False)
        self.changed()

    async def unmute(self, participant: Participant, source: str) -> None:
        """A point unmutes itself: a held microphone speaks only if asked or given the floor.

        Unmuting after the chair's request is its consent, and lifts the hold.
        """
        held = any(p.source == source and p.blocked for p in participant.publications.values())
        if source != "microphone" or not held:
            return
        identity = participant.who.identity
        if identity not in self.invited and self.floor != identity:
            raise RoomError(
                "muted-by-moderator",
                "the chair has muted your microphone: raise your hand to ask to speak",
            )
        await self.hold(identity, False)

    async def ask_unmute(self, target: Participant, by: Chair) -> None:
        if target.who.moderate or not target.who.publish:
            raise RoomError("bad-request", "only a point can be asked to unmute")
        self.invited.add(target.who.identity)
        await target.send({"type": "unmute-request", "by": by.id, "name": by.name})

    async def decline_unmute(self, participant: Participant) -> None:
        self.invited.discard(participant.who.identity)
        await self._tell_chairs(participant.id)
        self.changed()
        if self.share is not None:  # the chair may be on another node
            self.share({"kind": "declined", "participant": participant.id})

    async def _tell_chairs(self, participant_id: str) -> None:
        for other in list(self.room.participants.values()):
            if other.who.moderate:
                await other.send({"type": "unmute-declined", "participant": participant_id})

    async def recording_failed(self, reason: str, message: str) -> None:
        """The recording stopped by itself (a full disk): everyone sees it stopped, the
        chair's side is told why (``recording-failed``); the meeting goes on."""
        await self.broadcast({"type": "recording", "recording": False, "failed": reason})
        for other in list(self.room.participants.values()):
            if other.who.moderate:
                await other.send({"type": "recording-failed", "reason": reason, "message": message})
        self.changed()

    def carry_on_recording(self, recorded: dict[str, str]) -> None:
        """Another node of the meeting was recording it and died or shut down (the
        cluster chose this node to carry on): record here from now, the new manifest
        naming the one it continues; the pages are told (``recording`` with
        ``continued``)."""
        continued = {"node": recorded["node"], "reason": recorded["reason"]}
        try:
            recording.start(
                self.room,
                started_by={"continued": continued},
                scheduled=self.scheduled,
                continues=recorded,
            )
        except recording.RecordingError as exc:
            logger.error(
                "briefing %s: cannot carry on the recording of node %s: %s",
                self.meeting_id,
                recorded["node"],
                exc.message,
            )
            return
        if recorded["reason"] == "node-failure":  # (a node shutting down seals its own)
            recording.seal_orphan(recorded)
        message = {"type": "recording", "recording": True, "continued": continued}
        asyncio.ensure_future(self.broadcast(message))

    def stop_recording_elsewhere(self, by: Chair) -> None:
        """A chair here stops the recording another node makes (`peer_event`)."""
        if self.share is not None:
            self.share({"kind": "record-stop", "by": {"id": by.id, "name": by.name}})

    async def _stop_recording(self, event: dict[str, Any]) -> None:
        """A chair of another node stopped the recording: this node's, if it makes one."""
        by = event.get("by")
        chair = str(by.get("id")) if isinstance(by, dict) else "?"
        if recording.stop(self.room, f"stopped by {chair} on another node") is not None:
            await self.broadcast({"type": "recording", "recording": False, "by": chair})

    def raise_hand(self, participant: Participant, raised: bool) -> None:
        """A point asks to speak (or withdraws)."""
        if not participant.who.publish:
            raise PermissionError("this token may not speak in the meeting")
        self._set_hand(participant.who.identity, raised)

    def lower_hand(self, target: Participant | dict[str, Any]) -> None:
        """The chair lowers someone's hand (``target`` may be on another node)."""
        identity = target.who.identity if isinstance(target, Participant) else target["identity"]
        if not self._set_hand(str(identity), False):
            raise RoomError("bad-request", "this participant has not raised a hand")

    def _set_hand(self, identity: str, raised: bool) -> bool:
        """Add to (or take off) the queue of requests to speak; False if nothing changed."""
        queued = any(hand[0] == identity for hand in self.hands)
        if raised == queued:
            return False
        if raised:
            self.hands.append((identity, time.time()))
        else:
            self.hands = [hand for hand in self.hands if hand[0] != identity]
        self.changed()
        return True

    async def set_profile(self, target: Participant, profile: str, by: Chair) -> None:
        """The chair sets a point's link profile (the page applies it)."""
        target.profile = profile
        await target.send({"type": "profile", "profile": profile, "by": by.id})
        self.changed()

    def set_lock(self, locked: bool) -> None:
        self.locked = locked
        self.changed()

    # -- the chair's state across nodes ------------------------------------------------
    def _control_state(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "hands": [[identity, at] for identity, at in self.hands],
            "held": sorted(self.held),
            "invited": sorted(self.invited),
            "locked": self.locked,
            "holding": self.holding,
            "released": sorted(self.released),
        }

    def _share_control(self) -> None:
        """Tell the other nodes the chair's state if it changed here (last change wins:
        each snapshot carries its time; a node takes one only if it is newer)."""
        if self.share is None:
            return
        state = self._control_state()
        if self._control[1] == state:
            return
        at = max(time.time(), self._control[0] + 1e-6)
        self._control = (at, state)
        self.share({"kind": "control", "at": at, "state": state})

    async def _apply_control(self, event: dict[str, Any]) -> None:
        """Take another node's snapshot of the chair's state and enforce it here: hold or
        release this node's microphones, tell its pages of a new floor."""
        try:
            at, state = event["at"], event["state"]
            floor, locked = state["floor"], state["locked"]
            if not isinstance(at, float) or not isinstance(locked, bool):
                raise ValueError("at, locked")
            if floor is not None and not isinstance(floor, str):
                raise ValueError("floor")
            hands = [(str(identity), float(raised)) for identity, raised in state["hands"]]
            held = {str(identity) for identity in state["held"]}
            invited = {str(identity) for identity in state["invited"]}
            # a node of the previous version sends neither: this node's own stand
            holding = state.get("holding", self.holding)
            if not isinstance(holding, bool):
                raise ValueError("holding")
            released = {str(identity) for identity in state.get("released", self.released)}
        except (KeyError, TypeError, ValueError):
            logger.warning("briefing %s: a malformed state from another node", self.meeting_id)
            return
        if at <= self._control[0]:
            return  # older than what this node has
        floor_changed = floor != self.floor
        self.floor, self.hands, self.held, self.invited, self.locked = (
            floor,
            hands,
            held,
            invited,
            locked,
        )
        self.holding, self.released = holding, released
        for participant in list(self.room.participants.values()):
            await self._enforce_hold(participant, participant.who.identity in held)
        if floor_changed:
            holder = self._identity_ids().get(floor) if floor is not None else None
            await self.broadcast({"type": "floor", "participant": holder})
            self.room.program.refresh()
        self._control = (at, self._control_state())
        self.changed()

    async def chat_message(self, participant: Participant, text: str) -> None:
        """Record a chat message (rate-limited per session) and send it to everyone."""
        limit, window = CHAT_RATE
        now = time.monotonic()
        times = self._chat_times.setdefault(participant.id, deque())
        while times and now - times[0] > window:
            times.popleft()
        if len(times) >= limit:
            raise RoomError("rate-limited", f"at most {limit} chat messages in {window:.0f} s")
        cleaned = printable_text(text, MAX_CHAT_CHARS)
        times.append(now)
        self._chat_seq += 1
        message = {
            "type": "chat",
            "id": self._chat_seq,
            "participant": participant.id,
            "identity": participant.who.identity,
            "name": participant.who.name,
            "role": participant.who.role,
            "text": cleaned,
            "at": int(time.time() * 1000),
        }
        self.chat.append(message)
        await self.broadcast(message)
        if self.share is not None:
            self.share({"kind": "chat", "message": message})

    async def peer_event(self, event: dict[str, Any]) -> None:
        """What another node of the meeting shared (`share`): its chat messages (each
        node numbers its own), the chair's state (`_share_control`).  Anything else, or
        malformed, is ignored."""
        kind = event.get("kind")
        if kind == "control":
            await self._apply_control(event)
        elif kind == "command":
            await self._carry_out(event)
        elif kind == "refused":
            await self._refused(event)
        elif kind == "forget" and isinstance(identity := event.get("identity"), str):
            if not any(p.who.identity == identity for p in self.room.participants.values()):
                self._forget(identity)  # removed by the chair on another node
                self.removed.add(identity)
        elif kind == "declined" and isinstance(event.get("participant"), str):
            await self._tell_chairs(event["participant"])
        elif kind == "end":
            await self.end(shared=False)
        elif kind == "record-stop":
            await self._stop_recording(event)
        elif kind == "chat" and isinstance(message := event.get("message"), dict):
            fields = {"participant": str, "identity": str, "name": str, "role": str, "text": str}
            if all(isinstance(message.get(key), expected) for key, expected in fields.items()):
                shown = {key: message[key] for key in fields} | {
                    "type": "chat",
                    "id": message.get("id") if type(message.get("id")) is int else 0,
                    "at": message.get("at") if type(message.get("at")) is int else 0,
                    "text": printable_text(message["text"], MAX_CHAT_CHARS),
                }
                self.chat.append(shown)
                await self.broadcast(shown)

    # -- a chair's command on a point of another node ---------------------------------
    def command_elsewhere(self, participant_id: str, command: dict[str, Any], by: Chair) -> None:
        """Send a chair's command on a point of another node to that node (`_carry_out`).

        ``command`` is checked by the caller: ``{"action": "remove", "reason"}``,
        ``{"action": "ask-unmute"}``, ``{"action": "set-profile", "profile"}`` or
        ``{"action": "mute", "source", "muted"}``.  What that node refuses comes back to
        the chair as an ``error`` (`_refused`).
        """
        if self.share is None:  # no other node: the participant cannot be elsewhere
            raise RoomError("unknown-participant", "no such participant in the meeting")
        by_fields = {"id": by.id, "name": by.name}
        self.share(
            {"kind": "command", "participant": participant_id, "command": command, "by": by_fields}
        )

    async def _carry_out(self, event: dict[str, Any]) -> None:
        """Carry out another node's chair command if its target is a session here."""
        target = self.room.participants.get(str(event.get("participant")))
        command, by = event.get("command"), event.get("by")
        if target is None or not isinstance(command, dict) or not isinstance(by, dict):
            return
        chair = Chair(str(by.get("id")), str(by.get("name")))
        action = command.get("action")
        try:
            if action == "remove":
                reason = command.get("reason")
                await self.remove(target, reason if isinstance(reason, str) else None)
            elif action == "ask-unmute":
                await self.ask_unmute(target, by=chair)
            elif action == "set-profile" and command.get("profile") in ("high", "low", "audio"):
                await self.set_profile(target, str(command["profile"]), by=chair)
            elif action == "mute" and isinstance(command.get("muted"), bool):
                await self.mute(target, str(command.get("source")), command["muted"])
            else:
                raise RoomError("bad-message", f"unknown command {action!r}")
        except RoomError as exc:
            logger.info(
                "briefing %s: %s's command %s on %s refused: %s",
                self.meeting_id,
                chair.id,
                action,
                target.id,
                exc.message,
            )
            if self.share is not None:  # the chair hears it as if the point were here
                self.share(
                    {
                        "kind": "refused",
                        "chair": chair.id,
                        "request": COMMAND_REQUESTS.get(str(action), "command"),
                        "code": exc.code,
                        "message": exc.message,
                    }
                )

    async def _refused(self, event: dict[str, Any]) -> None:
        """Another node refused a command of a chair of this node: its error, to it."""
        chair = self.room.participants.get(str(event.get("chair")))
        fields = ("request", "code", "message")
        if chair is None or not all(isinstance(event.get(key), str) for key in fields):
            return
        await chair.send(
            {
                "type": "error",
                "code": event["code"],
                "message": printable_text(event["message"], 300, multiline=False),
                "request": event["request"],
            }
        )

    async def remove(self, participant: Participant, reason: str | None = None) -> None:
        """The chair removes a participant; its token cannot rejoin."""
        message = printable_text(reason, MAX_REASON_CHARS, multiline=False) if reason else None
        if self.on_removed is not None:
            self.on_removed(participant)
        await self.room.leave(participant.id, "removed", close_room=False, message=message)
        self._forget(participant.who.identity)
        self.removed.add(participant.who.identity)
        if self.share is not None:  # no node lets it back into a locked meeting
            self.share({"kind": "forget", "identity": participant.who.identity})

    async def end(self, shared: bool = True) -> None:
        """The chair ends the meeting for everyone (on every node, unless ``shared`` is
        false: another node's end); the meeting refuses joins from now on."""
        self.ended = True
        if shared and self.share is not None:
            self.share({"kind": "end"})
        await self.room.close("meeting-ended")

    def _forget(self, identity: str) -> None:
        """Drop the chairing state of an identity that is gone for good."""
        self.hands = [hand for hand in self.hands if hand[0] != identity]
        if self.floor == identity:
            self.floor = None
        self.invited.discard(identity)
        self.released.discard(identity)  # held if it comes back while the room holds
        self.admitted.discard(identity)
        self.absent_since.pop(identity, None)
        self.changed()

    # -- state to the pages ------------------------------------------------------------
    def _identity_ids(self) -> dict[str, str]:
        """identity -> participant id of its browser session (else any session)."""
        ids: dict[str, str] = {}
        for participant in self.room.participants.values():
            if participant.transport == "websocket" or participant.who.identity not in ids:
                ids[participant.who.identity] = participant.id
        for member in self._remote_members():  # on another node of the meeting
            identity = member.get("identity")
            if isinstance(identity, str) and identity not in ids:
                ids[identity] = str(member.get("id"))
        return ids

    def remote_member(self, participant_id: str) -> dict[str, Any] | None:
        """The description of a participant on another node of the meeting."""
        return self.room.remote_member(participant_id)

    def state(self) -> dict[str, Any]:
        """The ``room`` message: who is here, what they publish, the chair's state."""
        ids = self._identity_ids()
        hands = [identity for identity, _ in self.hands if identity in ids]
        return {
            "type": "room",
            "meeting": self.room.meeting_id,
            "participants": [
                p.describe()
                | {
                    "moderator": p.who.moderate,
                    "hand": p.who.identity in hands,
                    "floor": p.who.identity == self.floor,
                }
                for p in self.room.participants.values()
            ]
            + [  # on other nodes of the meeting (conference/cluster)
                member
                | {
                    "remote": True,
                    "hand": member.get("identity") in hands,
                    "floor": member.get("identity") == self.floor,
                }
                for member in self._remote_members()
            ],
            "speaker": self.room.speaker.current,
            "recording": self.room.recording or bool(self.room.recorded_by),
            "recording_failed": self.room.recording_failure,
            "floor": ids.get(self.floor) if self.floor is not None else None,
            "hands": [
                {"participant": ids[identity], "at": int(at * 1000)}
                for identity, at in self.hands
                if identity in ids
            ],
            "locked": self.locked,
            "holding": self.holding,
        }

    async def broadcast(self, message: dict[str, Any]) -> None:
        encoded = jsontext.Encoded(message)  # one encoding for every page
        for participant in list(self.room.participants.values()):
            await participant.send(encoded)


class Briefings:
    """The briefing of every live room, and the meetings the chair ended."""

    def __init__(self, rooms: RoomRegistry) -> None:
        self.rooms = rooms
        rooms.on_created = self._attach
        self.ended: dict[str, float] = {}  # meeting id -> monotonic time the chair ended it
        #: called before the chair removes a participant (the server revokes its token)
        self.on_removed: Callable[[Participant], None] | None = None
        #: called with every new briefing (conference/realtime/lobby.py observes it)
        self.on_created: Callable[[Briefing], None] | None = None

    def open(self, meeting_id: str) -> Briefing:
        """The briefing of a meeting's room, opened if needed.

        Raises `RoomError`: meeting-ended (for `ENDED_MEMORY`), server-full.
        """
        now = time.monotonic()
        for ended, at in list(self.ended.items()):
            if now - at > ENDED_MEMORY:
                del self.ended[ended]
        if meeting_id in self.ended and self.rooms.get(meeting_id) is None:
            raise RoomError("meeting-ended", "the chair has ended this meeting")
        return of(self.rooms.get_or_create(meeting_id))

    @staticmethod
    def recording_failed(room: Room, reason: str, message: str) -> None:
        """A `recording.failure_listeners` entry: the room's briefing tells its people."""
        if isinstance(room.events, Briefing) and not room.closed:
            asyncio.ensure_future(room.events.recording_failed(reason, message))

    def _attach(self, room: Room) -> None:
        briefing = Briefing(room, on_removed=self._removed, on_closed=self._closed)
        room.events = briefing
        if self.on_created is not None:
            self.on_created(briefing)

    def _removed(self, participant: Participant) -> None:
        if self.on_removed is not None:
            self.on_removed(participant)

    def _closed(self, briefing: Briefing) -> None:
        if briefing.ended:
            self.ended[briefing.meeting_id] = time.monotonic()


def of(room: Room) -> Briefing:
    """The briefing of a room opened by `Briefings`."""
    if not isinstance(room.events, Briefing):
        raise RuntimeError(f"room {room.meeting_id} has no briefing")
    return room.events
