"""The lobby of scheduled meetings: waiting points, the chair's start, guests, attendance.

The media plane's side of the meeting lifecycle (the database side is
conference/domain/lifecycle.py).  Ad-hoc rooms (meeting ids that are not meetings of
the database) never see any of this.

* **Waiting.**  A WebSocket join (conference/realtime/signaling.py) goes through `gate` after the
  token is verified.  A point that arrives while its meeting is still ``scheduled`` gets
  ``{"type": "lobby", ...}`` and waits; it may send ``ping`` or ``leave`` meanwhile.
  The wait ends when the chair starts the meeting (admitted: the usual ``joined``
  follows), the chair refuses it (error ``refused``, close 4403), the meeting is ended
  (``meeting-ended``, 4410) or the join window closes (``lobby-timeout``, 4408).
* **Start.**  The first join of the chair's side with the moderate grant starts the
  meeting (`start_meeting`, which refuses when an invited point is live elsewhere);
  a chair that joined with ``"start": false``, or whose start was refused, sends
  ``meeting-start``.  Starting releases every waiting point.
* **Guests.**  A token of the meeting whose identity is not invited waits as a guest,
  also in a live meeting, until a moderator sends ``admit`` (the identity is added to the
  room's in-memory allow list; it enters at once if the meeting is live, at the start
  otherwise) or ``refuse``.  Moderators get ``lobby-state`` (who waits) on every change.
  Identities are keys (``pt:CODE``, ``u:USERNAME``, ``g:``, ``t:``: conference/core/identity.py):
  one waiting place per key, so a point never takes an account's place; an ``admit`` with
  a bare identity (as clients sent it before kinds) names the one key of it waiting.
* **End.**  When the chair ends the room for everyone (``end-meeting``, `Briefing.end`), the
  meeting is marked ended in the database; waiting participants are told and new joins
  are refused.
* **Several nodes.**  With ``redis_url`` (conference/cluster/, ``serve --workers``) a
  point may wait on one node while the chair sits on another.  Each node tells the others
  who waits there (`LobbyShare.lobby_waiting`: the moderators' ``lobby-state`` lists every
  node's waiting participants, ``remote: true``), and the chair's decisions (start,
  admit/refuse an identity, end) reach every node (`LobbyShare.lobby_decide`) and are kept
  in Redis for a node that starts later (`LobbyShare.lobby_load`).
* **The meeting changes while points wait.**  Cancelled (or deleted), moved so that the
  join window is no longer open, or a point no longer invited: each waiting point is
  judged again and told (``meeting-cancelled`` / ``meeting-moved`` / ``not-invited``,
  4403).  A change committed by this process (API, pages, series edits) reaches the
  lobby at once (`Lobby.watch_database`: the database's listeners of changed meetings
  wake the upkeep, conference/realtime/upkeep.py); one made by another process or node
  is found by the upkeep's next sweep (every 5 s), which judges every waiting point
  again (`Lobby.recheck`).  Remembered verdicts of a changed meeting are dropped, so a join right
  after a cancellation is refused.
* **Attendance.**  Every join and leave of a scheduled meeting's room (WebSocket and
  WHIP/WHEP sessions alike) is stored by `record_event` in a background task; a failure
  is logged, never raised into the room.

Size: one lifecycle (waiting, start, guests, end, changes, several nodes, attendance)
whose parts share the `MeetingLobby` state; split, they would pass it around.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from ..appkeys import MEETING_POLICY, SETTINGS
from ..core import jsontext
from ..core.identity import Identity, shown_identity, split_identity
from ..domain.db import Database
from ..domain.errors import SchedulingError
from ..domain.lifecycle import MeetingLifecycle, Verdict
from ..recording import recorder as recording
from ..sfu.participant import Participant
from ..sfu.room import Room, RoomError
from ..tokens import Claims, TokenError, verify_token
from .access import AccessError
from .briefing import Briefing

__all__ = [
    "LOBBY",
    "LOBBY_MESSAGES",
    "Lobby",
    "direct",
    "gate",
    "handle_message",
    "joined",
    "setup_lobby",
]

logger = logging.getLogger(__name__)

#: Chair messages handled here (see docs/PROTOCOL.md, "Lobby").
LOBBY_MESSAGES = ("admit", "refuse", "meeting-start")
#: The longest a participant waits in the lobby (the join window may be longer).
MAX_WAIT = 6 * 3600.0
#: The most sessions waiting in one meeting's lobby.
MAX_WAITING = 200
#: participants waiting in one meeting's lobby from one network address (halls behind
#: one NAT share an address; one identity takes one place anyway)
MAX_WAITING_PER_ADDRESS = 50
#: Who waits here reaches the other nodes this long after a change (grouped).
SAY_DELAY = 0.1


def withdrawn(exc: AccessError) -> AccessError:
    """What a waiting point is told when the meeting it waits for no longer admits it
    (``unknown-meeting``: deleted)."""
    code = exc.code
    if code in ("meeting-cancelled", "unknown-meeting"):
        return AccessError("meeting-cancelled", "this meeting was cancelled", 403)
    if code in ("too-early", "too-late"):
        return AccessError(
            "meeting-moved", "the meeting was moved to another time: join again then", 403
        )
    if code == "meeting-ended":
        return AccessError("meeting-ended", "this meeting has ended", 410)
    return exc


def address_full(waiting: Iterable[Waiter], address: str | None) -> bool:
    """Whether ``address`` has its `MAX_WAITING_PER_ADDRESS` places taken.  A loopback
    address is a reverse proxy on this machine (every hall then shares it: see
    OPERATIONS.md): only the per-meeting limit applies to it."""
    if address is None:
        return False
    try:
        if ipaddress.ip_address(address).is_loopback:
            return False
    except ValueError:
        pass  # a unix socket path or the like: counted as one address
    return sum(w.address == address for w in waiting) >= MAX_WAITING_PER_ADDRESS


@dataclass
class Waiter:
    """A participant waiting in the lobby."""

    id: str
    identity: str
    name: str
    role: str
    guest: bool
    since: float
    decision: asyncio.Future[str]
    #: what the waiter joined with (the lobby judges it again when the meeting changes)
    claims: Claims | None = None
    #: why the meeting no longer lets it wait (decision "withdrawn")
    refusal: AccessError | None = None
    #: the network address it waits from
    address: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identity": self.identity,
            "name": self.name,
            "role": self.role,
            "guest": self.guest,
            "since": int(self.since * 1000),
        }


class LobbyShare(Protocol):
    """The lobby's link to the other nodes of a cluster (conference/cluster/node.py)."""

    def lobby_waiting(self, meeting_id: str, waiting: list[dict[str, Any]]) -> None: ...

    def lobby_decide(self, meeting_id: str, decision: dict[str, Any]) -> None: ...

    async def lobby_load(self, meeting_id: str) -> dict[str, Any]: ...


@dataclass
class MeetingLobby:
    """The lobby of one scheduled meeting."""

    meeting: str
    started: bool = False
    waiting: dict[str, Waiter] = field(default_factory=dict)
    #: Guests a moderator admitted (in memory; they may rejoin while the server runs).
    allowed: set[str] = field(default_factory=set)
    #: Recording policy ``auto`` was applied (once per server process: a chair who
    #: stops the recording is not overruled by the next join).
    auto_recorded: bool = False
    #: who waits on the other nodes of a cluster: node -> their descriptions
    remote: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: the other nodes' decisions were read from Redis (once, at the first waiter here)
    loaded: bool = False

    def state(self) -> dict[str, Any]:
        elsewhere = [w | {"remote": True} for waiting in self.remote.values() for w in waiting]
        return {
            "type": "lobby-state",
            "meeting": self.meeting,
            "started": self.started,
            "waiting": [w.describe() for w in self.waiting.values()] + elsewhere,
        }


class Lobby:
    """Every scheduled meeting's lobby on this server, and the attendance hooks."""

    def __init__(self, lifecycle: MeetingLifecycle) -> None:
        self.lifecycle = lifecycle
        self.meetings: dict[str, MeetingLobby] = {}
        self.rooms: dict[str, Room] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        #: the other nodes of a cluster (None: this process is the only node)
        self.share: LobbyShare | None = None
        self._saying: set[str] = set()
        self._loading: dict[str, asyncio.Future[None]] = {}
        #: called when this process changed meetings (the upkeep sweeps at once: it
        #: closes rooms of meetings ended or cancelled and judges waiting points again)
        self.on_meetings_changed: Callable[[], None] | None = None

    def of(self, meeting: str) -> MeetingLobby:
        lobby = self.meetings.get(meeting)
        if lobby is None:
            lobby = self.meetings[meeting] = MeetingLobby(meeting)
        return lobby

    # -- room hooks ------------------------------------------------------------------
    def briefing_created(self, briefing: Briefing) -> None:
        """Registry hook: observe the room for attendance and its end."""
        room = briefing.room
        meeting = room.meeting_id
        self.rooms[meeting] = room
        briefing.scheduled = self.lifecycle.is_scheduled(meeting)  # judged before the join

        def observe(event: str, subject: Any, detail: str | None) -> None:
            if not self.lifecycle.is_scheduled(meeting):
                return
            if event in ("joined", "left") and isinstance(subject, Participant):
                self._record(meeting, subject, "join" if event == "joined" else "leave")
            elif event == "closed":
                if self.rooms.get(meeting) is room:
                    del self.rooms[meeting]
                if briefing.ended:
                    self._ended(meeting)

        room.observers.append(observe)
        _BY_ROOM[room] = self

    def _background(self, what: str, coroutine: Any) -> None:
        async def run() -> None:
            try:
                await coroutine
            except Exception:
                logger.exception("lobby: %s failed", what)

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _record(self, meeting: str, participant: Participant, kind: str) -> None:
        who = participant.who
        self._background(
            f"attendance {kind} of {participant.id} in {meeting}",
            self.lifecycle.record(
                meeting,
                identity=who.identity,
                # the transport too: a hall's browser and its WHIP encoder may be in the
                # meeting at once under one identity (attendance.presence tells them apart)
                participant_id=f"{participant.transport}:{participant.id}",
                kind=kind,
                at=datetime.now(UTC),
                name=who.name,
                role=who.role,
            ),
        )

    def _ended(self, meeting: str) -> None:
        self.release_ended(meeting)
        logger.info("meeting %s: ended by the chair", meeting)
        self._background(f"ending meeting {meeting}", self.lifecycle.end(meeting))
        if self.share is not None:
            self.share.lobby_decide(meeting, {"kind": "end"})

    def release_ended(self, meeting: str) -> None:
        lobby = self.meetings.pop(meeting, None)
        if lobby is not None:
            for waiter in lobby.waiting.values():
                if not waiter.decision.done():
                    waiter.decision.set_result("ended")

    # -- the meeting changed while points wait --------------------------------------------
    def watch_database(self, database: Database) -> None:
        """Re-check the waiting points of every meeting a transaction of this process
        changes (cancelled, moved, its points edited: from the API, the pages or a
        series edit), at once.  Call from the event loop."""
        loop = asyncio.get_running_loop()

        def changed(ids: set[int]) -> None:  # in the committing thread
            loop.call_soon_threadsafe(self.meetings_changed, {str(i) for i in ids})

        database.meeting_listeners.append(changed)

    def meetings_changed(self, meetings: set[str]) -> None:
        for meeting in meetings:
            self.lifecycle.forget(meeting)
        if self.on_meetings_changed is not None:
            self.on_meetings_changed()

    async def recheck(self, meeting: str) -> None:
        """Judge every point waiting for ``meeting`` again; tell those the meeting no
        longer admits (`withdrawn`): cancelled, moved out of its join window, or they
        are no longer invited."""
        lobby = self.meetings.get(meeting)
        if lobby is None:
            return
        self.lifecycle.forget(meeting)
        for waiter in list(lobby.waiting.values()):
            if waiter.claims is None or waiter.decision.done():
                continue
            try:
                await self.lifecycle.verdict(waiter.claims)
                continue  # still admitted to wait
            except AccessError as exc:
                if exc.code == "unavailable":
                    return  # the database is away: the next check decides
                refusal = withdrawn(exc)
            if not waiter.decision.done():
                logger.info("meeting %s: %s leaves the lobby: %s", meeting, waiter.id, refusal.code)
                waiter.refusal = refusal
                self._decide(lobby, waiter, "withdrawn")

    # -- the other nodes ----------------------------------------------------------------
    def say_waiting(self, meeting: str) -> None:
        """Tell the other nodes who waits here now (soon: the changes of a moment, such
        as a start releasing every waiting point, go as one message)."""
        if self.share is None or meeting in self._saying:
            return
        self._saying.add(meeting)

        def say() -> None:
            self._saying.discard(meeting)
            lobby = self.meetings.get(meeting)
            waiting = [w.describe() for w in lobby.waiting.values()] if lobby else []
            if self.share is not None:
                self.share.lobby_waiting(meeting, waiting)

        asyncio.get_running_loop().call_later(SAY_DELAY, say)

    async def load(self, meeting: str) -> MeetingLobby:
        """The meeting's lobby, with what the other nodes decided before this node heard
        of it (once: afterwards their messages keep it current)."""
        lobby = self.of(meeting)
        if self.share is None or lobby.loaded:
            return lobby
        task = self._loading.get(meeting)
        if task is None:  # the joins arriving meanwhile wait for the same read
            task = self._loading[meeting] = asyncio.ensure_future(self._load(lobby))
            task.add_done_callback(lambda _: self._loading.pop(meeting, None))
        await asyncio.shield(task)
        return lobby

    async def _load(self, lobby: MeetingLobby) -> None:
        assert self.share is not None
        try:
            shared = await self.share.lobby_load(lobby.meeting)
        except Exception as exc:  # Redis away: this node's own view, read again next time
            logger.warning("meeting %s: the other nodes' lobby is unknown: %r", lobby.meeting, exc)
            return
        lobby.loaded = True
        lobby.started = lobby.started or shared["started"]
        lobby.allowed |= shared["allowed"] - shared["refused"]
        lobby.remote.update(shared["waiting"])

    def shared(self, meeting: str, message: dict[str, Any]) -> None:
        """Another node's lobby news (cluster's ``on_lobby``).  Only for a meeting whose
        lobby this node has (someone waits, or a moderator is here); another node reads
        the decisions from Redis when its first participant waits (`load`)."""
        node = str(message["node"])
        lobby = self.meetings.get(meeting)
        if lobby is None:
            return
        if "waiting" in message:
            if message["waiting"]:
                lobby.remote[node] = message["waiting"]
            else:
                lobby.remote.pop(node, None)
        else:
            decision = message["decision"]
            if decision["kind"] == "end":
                self.release_ended(meeting)
                return
            if decision["kind"] == "start":
                lobby.started = True
                self._release(lobby)
            else:
                self.admit(meeting, decision["identity"], decision["admitted"], share=False)
        self._background(f"lobby state of {meeting}", self.tell_moderators(meeting))

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for the attendance writes in flight (at shutdown)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    # -- decisions ---------------------------------------------------------------------
    async def start(self, meeting: str) -> None:
        """Start the meeting (database) and release the waiting points.

        Raises `SchedulingError` when the database refuses (``point-busy-live``...).
        """
        _status, recording_policy = await self.lifecycle.start(meeting)
        lobby = self.of(meeting)
        lobby.started = True
        if recording_policy == "auto":
            self.auto_record(meeting)
        self._release(lobby)
        if self.share is not None:
            self.share.lobby_decide(meeting, {"kind": "start"})
        logger.info("meeting %s: started", meeting)
        await self.tell_moderators(meeting)

    def _release(self, lobby: MeetingLobby) -> None:
        """The meeting started: in go the invited points and the admitted guests."""
        for waiter in list(lobby.waiting.values()):
            if not waiter.guest or waiter.identity in lobby.allowed:
                self._decide(lobby, waiter, "admit")

    def auto_record(self, meeting: str) -> None:
        """The meeting's recording policy is ``auto``: record from its start (or from the
        first moderator's join after a server restart during the meeting)."""
        room = self.rooms.get(meeting)
        lobby = self.of(meeting)
        if room is None or room.closed or room.recording or lobby.auto_recorded:
            return
        lobby.auto_recorded = True
        try:
            recording.start(room, started_by={"policy": "auto"}, scheduled=True)
        except recording.RecordingError as exc:
            logger.error("meeting %s: automatic recording failed: %s", meeting, exc.message)
            return
        logger.info("meeting %s: recording (policy auto)", meeting)

    def _decide(self, lobby: MeetingLobby, waiter: Waiter, decision: str) -> None:
        lobby.waiting.pop(waiter.id, None)
        if not waiter.decision.done():
            waiter.decision.set_result(decision)

    def waiting_identity(self, meeting: str, identity: str) -> str:
        """``identity`` as a key: a bare one (``xa-a``, as clients sent it before identity
        kinds) names the one kind of that subject waiting here or elsewhere, if one."""
        if split_identity(identity)[0] is not None:
            return identity
        lobby = self.of(meeting)
        keys = {w.identity for w in lobby.waiting.values()} | {
            str(w.get("identity")) for node in lobby.remote.values() for w in node
        }
        found = [key for key in keys if key != identity and shown_identity(key) == identity]
        return found[0] if len(found) == 1 else identity

    def admit(self, meeting: str, identity: str, admitted: bool, share: bool = True) -> bool:
        """A moderator admits (or refuses) a waiting identity; False if nobody waits so
        (here or, in a cluster, on another node: that node lets it in or out)."""
        lobby = self.of(meeting)
        found = [w for w in lobby.waiting.values() if w.identity == identity]
        elsewhere = any(
            w.get("identity") == identity for waiting in lobby.remote.values() for w in waiting
        )
        if admitted:
            lobby.allowed.add(identity)
        else:
            lobby.allowed.discard(identity)
        for waiter in found:
            if not admitted:
                self._decide(lobby, waiter, "refuse")
            elif lobby.started:
                self._decide(lobby, waiter, "admit")
        if share and self.share is not None:
            self.share.lobby_decide(
                meeting, {"kind": "admit", "identity": identity, "admitted": admitted}
            )
        return bool(found) or elsewhere

    async def tell_moderators(self, meeting: str) -> None:
        room = self.rooms.get(meeting)
        if room is None or room.closed:
            return
        state = self.of(meeting).state()
        for participant in list(room.participants.values()):
            if participant.who.moderate:
                await participant.send(state)


LOBBY = web.AppKey("lobby", Lobby)
#: room -> the lobby of its server (for the chair's messages, which carry no app).
_BY_ROOM: weakref.WeakKeyDictionary[Room, Lobby] = weakref.WeakKeyDictionary()


def setup_lobby(app: web.Application, lifecycle: MeetingLifecycle) -> Lobby:
    """Create the lobby of `app` (the rooms' creation hook is set by the caller)."""
    lobby = Lobby(lifecycle)
    app[LOBBY] = lobby

    async def drain(app: web.Application) -> None:
        await app[LOBBY].drain()

    async def watch(app: web.Application) -> None:
        lobby.watch_database(lifecycle.database)

    app.on_startup.append(watch)
    # after on_shutdown closed the rooms (their leaves), before the database is closed
    app.on_cleanup.insert(0, drain)
    return lobby


# -- the WebSocket side --------------------------------------------------------------------


def _lifecycle(app: web.Application) -> MeetingLifecycle | None:
    policy = app[MEETING_POLICY]
    return policy if isinstance(policy, MeetingLifecycle) else None


async def gate(
    app: web.Application,
    ws: web.WebSocketResponse,
    token: str,
    who: Identity,
    meeting: str,
    send: Any,
    address: str | None = None,
) -> Verdict | None:
    """Let a verified WebSocket participant through, maybe after a wait in the lobby.

    One identity waits in one place: a newer session of it replaces an older one
    (``replaced``, 4409), so one invitation link cannot fill the lobby; at most
    `MAX_WAITING` wait per meeting and `MAX_WAITING_PER_ADDRESS` from one ``address``.

    Returns the verdict once it may join the room; None if it left the lobby (the socket
    is closed).  Raises `AccessError` for a refusal (sent and closed by the caller).
    """
    lifecycle = _lifecycle(app)
    if lifecycle is None or LOBBY not in app:
        return Verdict(scheduled=False)
    try:
        claims = verify_token(app[SETTINGS].token_secret or "", token, meeting=meeting)
    except TokenError as exc:
        raise AccessError(exc.code, exc.message, 401) from exc
    verdict = await lifecycle.verdict(claims)
    if not verdict.scheduled or verdict.chair_side:
        return verdict
    lobby = await app[LOBBY].load(meeting)
    if verdict.status == "live":
        lobby.started = True  # e.g. started on another node before this one ran
    started = lobby.started
    if started and (not verdict.guest or who.identity in lobby.allowed):
        return verdict
    for older in [w for w in lobby.waiting.values() if w.identity == who.identity]:
        logger.info("meeting %s: %s replaced in the lobby by a newer session", meeting, older.id)
        app[LOBBY]._decide(lobby, older, "replaced")
    if len(lobby.waiting) >= MAX_WAITING:
        raise AccessError("lobby-full", "too many participants are waiting in the lobby", 429)
    if address_full(lobby.waiting.values(), address):
        raise AccessError(
            "lobby-full", "too many participants from this address are waiting in the lobby", 429
        )
    waiter = Waiter(
        id="lobby-" + secrets.token_hex(6),
        identity=who.identity,
        name=who.name,
        role=who.role,
        guest=verdict.guest,
        since=time.time(),
        decision=asyncio.get_running_loop().create_future(),
        claims=claims,
        address=address,
    )
    lobby.waiting[waiter.id] = waiter
    app[LOBBY].say_waiting(meeting)
    logger.info("meeting %s: %s waits in the lobby (guest: %s)", meeting, waiter.id, waiter.guest)
    try:
        await send(
            {
                "type": "lobby",
                "id": waiter.id,
                "meeting": meeting,
                "title": verdict.title,
                "starts": verdict.starts.isoformat() if verdict.starts else None,
                "guest": verdict.guest,
                "started": started,
            }
        )
        await app[LOBBY].tell_moderators(meeting)
        closes = verdict.closes.timestamp() if verdict.closes else time.time() + MAX_WAIT
        deadline = time.monotonic() + max(1.0, min(MAX_WAIT, closes - time.time()))
        decision = await _wait(ws, waiter.decision, deadline, send)
    finally:
        app[LOBBY].say_waiting(meeting)  # (also when decided: popped then)
        if lobby.waiting.pop(waiter.id, None) is not None:
            await app[LOBBY].tell_moderators(meeting)
    if decision == "admit":
        logger.info("meeting %s: %s admitted from the lobby", meeting, waiter.id)
        return verdict
    if decision == "left":
        if not ws.closed:
            await ws.close()
        return None
    if decision == "refuse":
        raise AccessError("refused", "the chair did not admit you to the meeting", 403)
    if decision == "ended":
        raise AccessError("meeting-ended", "this meeting has ended", 410)
    if decision == "withdrawn" and waiter.refusal is not None:
        raise waiter.refusal
    if decision == "replaced":
        raise AccessError("replaced", "a newer session of this participant waits now", 409)
    raise AccessError("lobby-timeout", "the meeting did not start in time", 408)


async def direct(app: web.Application, token: str | None, meeting: str) -> None:
    """WHIP/WHEP sessions cannot wait in the lobby: refused unless they may enter now."""
    lifecycle = _lifecycle(app)
    if lifecycle is None or LOBBY not in app or not token:
        return
    try:
        claims = verify_token(app[SETTINGS].token_secret or "", token, meeting=meeting)
    except TokenError as exc:
        raise AccessError(exc.code, exc.message, 401) from exc
    verdict = await lifecycle.verdict(claims)
    if verdict.enters_now:
        return
    lobby = await app[LOBBY].load(meeting)
    started = lobby.started or verdict.status == "live"
    if not started:
        raise AccessError("not-started", "the chair has not started the meeting yet", 403)
    if claims.key not in lobby.allowed:
        raise AccessError("not-admitted", "the chair has not admitted this participant", 403)


async def _wait(
    ws: web.WebSocketResponse, decision: asyncio.Future[str], deadline: float, send: Any
) -> str:
    """Wait for the decision; answer pings, refuse other messages; "left" if the peer goes."""
    while not decision.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        receive = asyncio.ensure_future(ws.receive())
        pending: set[asyncio.Future[Any]] = {receive, decision}
        done, _ = await asyncio.wait(pending, timeout=remaining, return_when="FIRST_COMPLETED")
        if receive not in done:
            receive.cancel()
            try:
                await receive
            except (asyncio.CancelledError, Exception):
                pass
            continue
        msg = receive.result()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return "left"
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            message = jsontext.loads(msg.data)
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "leave":
            return "left"
        if kind == "ping":
            await send({"type": "pong", "id": message.get("id") if message else None})
        else:
            await send(
                {
                    "type": "error",
                    "code": "in-lobby",
                    "message": "waiting in the lobby: only ping and leave are accepted",
                    "request": kind if isinstance(kind, str) else None,
                }
            )
    return decision.result()


async def joined(
    app: web.Application, participant: Participant, verdict: Verdict, join: dict[str, Any]
) -> None:
    """After a WebSocket participant joined: the chair starts the meeting, sees the lobby."""
    if not verdict.scheduled or LOBBY not in app or not participant.who.moderate:
        return
    meeting = participant.room.meeting_id
    lobby = app[LOBBY]
    await lobby.load(meeting)  # in a cluster: who already waits on the other nodes
    if verdict.status == "live":
        lobby.of(meeting).started = True
        if verdict.recording_policy == "auto":
            lobby.auto_record(meeting)  # e.g. the server restarted during the meeting
    if (
        verdict.chair_side
        and not lobby.of(meeting).started
        and join.get("start", True) is not False
    ):
        try:
            await lobby.start(meeting)
            return  # start() told the moderators
        except SchedulingError as exc:
            await participant.send(
                {"type": "error", "code": exc.code, "message": str(exc), "request": "join"}
            )
    await participant.send(lobby.of(meeting).state())


async def handle_message(participant: Participant, message: dict[str, Any]) -> None:
    """``admit``, ``refuse``, ``meeting-start`` from a moderator (signaling's dispatch).

    Raises `PermissionError` or `RoomError` (an ``error`` message to the sender).
    """
    room = participant.room
    lobby = _BY_ROOM.get(room)
    kind = message["type"]
    if not participant.who.moderate:
        raise PermissionError("only a moderator (the chair) may do this")
    if lobby is None or not lobby.lifecycle.is_scheduled(room.meeting_id):
        raise RoomError("not-scheduled", "this room is not a scheduled meeting: it has no lobby")
    meeting = room.meeting_id
    if kind == "meeting-start":
        if lobby.of(meeting).started:
            raise RoomError("already-started", "the meeting has already started")
        try:
            await lobby.start(meeting)
        except SchedulingError as exc:
            raise RoomError(exc.code, str(exc)) from None
        return
    identity = message.get("identity")
    if not isinstance(identity, str) or not identity or len(identity) > 131:  # "pt:" + 128
        raise RoomError("bad-message", f"{kind} needs the 'identity' of a waiting participant")
    identity = lobby.waiting_identity(meeting, identity)
    if not lobby.admit(meeting, identity, kind == "admit"):
        raise RoomError("not-waiting", "nobody with this identity waits in the lobby")
    await lobby.tell_moderators(meeting)
