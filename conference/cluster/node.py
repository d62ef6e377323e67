"""One node of several: its Redis registration, the meetings' publication directory."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..sfu.publication import SOURCES, Publication
from ..sfu.relay import RelayEndpoint, RelayReceiver, relay_key
from ..sfu.room import Room
from .recordings import RecordingHandover, recording_in
from .shared import SharedState, checked

logger = logging.getLogger(__name__)

#: a node's registration lapses this long after its last heartbeat
NODE_TTL = 5
HEARTBEAT = 1.0
#: how often a node checks that the nodes it imports from are alive
LIVENESS = 1.0
#: the chair's last state of a meeting is kept this long in Redis for nodes opening it
CONTROL_TTL = 24 * 3600
#: a change of this node's participants reaches the others after this delay (grouped)
MEMBERS_DELAY = 0.1
#: ... and the list is sent again this often if it changed (mutes, profiles)
MEMBERS_REFRESH = 2.0


#: HDEL KEYS[1] ARGV[1] if that field still holds ARGV[2] (a dead node's record)
_FORGET_RECORD = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
    "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)

#: at most this many connections to Redis at once (the subscription has one more) ...
REDIS_CONNECTIONS = 32
#: ... and an update waits this long for one of them (seconds) before it fails
REDIS_WAIT = 20.0

#: the default namespace of the keys and channels in Redis (setting ``cluster_name``)
DEFAULT_NAME = "conference"


class Cluster(SharedState, RecordingHandover):
    """This node's part in a cluster of nodes sharing one Redis."""

    def __init__(
        self,
        redis_url: str,
        node_name: str,
        secret: str,
        relay_host: str = "127.0.0.1",
        relay_port: int = 0,
        cluster_name: str = DEFAULT_NAME,
    ) -> None:
        # a pool that makes a burst wait for a connection: 100 points joining at once
        # start hundreds of updates, and the default pool refuses the 101st at once
        # (MaxConnectionsError: an announcement lost)
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, decode_responses=True, max_connections=REDIS_CONNECTIONS, timeout=REDIS_WAIT
        )
        self.redis = aioredis.Redis.from_pool(pool)
        #: every key and channel of this cluster starts so (nodes of another cluster
        #: name on the same Redis are strangers)
        self.prefix = f"{cluster_name}:"
        self.name = node_name
        self.run = secrets.token_hex(8)
        self.relay = RelayEndpoint(relay_key(secret))
        self._relay_bind = (relay_host, relay_port)
        self.rooms: dict[str, Room] = {}
        #: this node's publications in the directory: id -> (meeting, publication)
        self.announced: dict[str, tuple[str, Publication]] = {}
        #: other nodes' publications shown here: id -> (meeting, receiver, node, run)
        self.imported: dict[str, tuple[str, RelayReceiver, str, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: what this node last said of its participants, per meeting (JSON)
        self._members_said: dict[str, str] = {}
        self._members_due: set[str] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        #: called with (room, event) for what another node's meeting layer shared
        #: (`send_event`): the composition root hands it to the briefing
        self.on_event: Callable[[Room, dict[str, Any]], None] | None = None
        #: called with (meeting, message) for another node's lobby news (`lobby_waiting`,
        #: `lobby_decide`), whether or not a room of the meeting is open here
        self.on_lobby: Callable[[str, dict[str, Any]], None] | None = None
        #: called with (kind, token id, expiry as a Unix time) for a token revoked on any
        #: node (`revoke`), and at start for those revoked before
        self.on_revoked: Callable[[str, str, float], None] | None = None
        #: nodes with participants waiting in a meeting's lobby (dropped when they die)
        self._lobby_nodes: dict[str, dict[str, str]] = {}  # meeting -> node -> its run
        #: the run of each node whose participants a room shows: (meeting, node) -> run
        self._member_runs: dict[tuple[str, str], str] = {}
        self._recording_state()

    # -- names in Redis ------------------------------------------------------------------
    def _meeting_key(self, meeting_id: str) -> str:
        return f"{self.prefix}meeting:{meeting_id}:publications"

    def _members_key(self, meeting_id: str) -> str:
        return f"{self.prefix}meeting:{meeting_id}:members"

    def _control_key(self, meeting_id: str) -> str:
        return f"{self.prefix}meeting:{meeting_id}:control"

    def _channel(self, meeting_id: str) -> str:
        return f"{self.prefix}meeting:{meeting_id}"

    # -- life ------------------------------------------------------------------------
    async def start(self) -> None:
        """Join the cluster; `ValueError` (one line, no password) when Redis is unreachable."""
        await self.relay.start(*self._relay_bind)
        try:
            await self._heartbeat()
            self._pubsub = self.redis.pubsub()
            await self._pubsub.psubscribe(f"{self.prefix}meeting:*")
            await self._pubsub.subscribe(self._revoked_channel)
            await self._load_revoked()
        except RedisError as exc:
            self.relay.close()
            await self.redis.aclose()
            raise ValueError(f"redis_url: cannot reach Redis ({exc})") from None
        self._loops = [
            asyncio.ensure_future(self._every(HEARTBEAT, self._heartbeat)),
            asyncio.ensure_future(self._every(LIVENESS, self._check_nodes)),
            asyncio.ensure_future(self._every(MEMBERS_REFRESH, self._refresh_members)),
            asyncio.ensure_future(self._listen()),
        ]
        logger.info("node %s (run %s) joined the cluster", self.name, self.run)

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        if self._tasks:  # what the closing rooms still tell Redis (members, their state)
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        try:
            for publication_id, (meeting_id, _) in list(self.announced.items()):
                await self._retract(meeting_id, publication_id)
            for meeting_id in list(self._members_said):
                await self._say_members(meeting_id, [])
            await self.redis.delete(f"{self.prefix}node:{self.name}")
            if self._pubsub is not None:
                await self._pubsub.aclose()
        except RedisError as exc:
            logger.warning("node %s: leaving the cluster: %s", self.name, exc)
        self.relay.close()
        await self.redis.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.warning("node %s: cluster update failed: %r", self.name, error)

    async def _every(self, period: float, work: Any) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await work()
            except RedisError as exc:
                logger.warning("node %s: redis: %s", self.name, exc)
            except Exception:  # a periodic duty never stops for one failure
                logger.exception("node %s: %s failed", self.name, getattr(work, "__name__", work))

    async def _heartbeat(self) -> None:
        record = {"run": self.run, "relay": list(self.relay.address)}
        await self.redis.set(f"{self.prefix}node:{self.name}", json.dumps(record), ex=NODE_TTL)

    # -- rooms -----------------------------------------------------------------------
    def attach(self, room: Room) -> None:
        """Share ``room``'s publications and show it the meeting's other nodes'."""
        self.rooms[room.meeting_id] = room

        def observe(event: str, subject: Any, detail: str | None) -> None:
            if event in ("joined", "left", "publication-added", "publication-removed"):
                self._members_changed(room)
            if event == "publication-added" and subject.id not in room.remote:
                self._spawn(self._announce(room.meeting_id, subject))
            elif event == "publication-removed" and subject.id in self.announced:
                self.relay.unexport(subject)
                self._spawn(self._retract(room.meeting_id, subject.id))
            elif event == "closed":
                self._detach(room)

        room.observers.append(observe)
        self._spawn(self._load(room))

    def _detach(self, room: Room) -> None:
        if self.rooms.get(room.meeting_id) is room:
            del self.rooms[room.meeting_id]
            self._spawn(self._say_members(room.meeting_id, []))
            if not room.remote_members:  # the last node of the meeting: its state goes
                self._spawn(self._forget_control(room.meeting_id))
            for key in [key for key in self._member_runs if key[0] == room.meeting_id]:
                del self._member_runs[key]
            self._forget_recordings(room.meeting_id)
        for publication_id, (meeting_id, receiver, _, _) in list(self.imported.items()):
            if meeting_id == room.meeting_id:
                del self.imported[publication_id]
                self.relay.forget(receiver)

    # -- who is where ---------------------------------------------------------------
    def _members_changed(self, room: Room) -> None:
        if room.meeting_id in self._members_due:
            return
        self._members_due.add(room.meeting_id)

        async def later() -> None:
            await asyncio.sleep(MEMBERS_DELAY)
            self._members_due.discard(room.meeting_id)
            if not room.closed:
                await self._say_members(room.meeting_id, _members(room), self.recording_of(room))

        self._spawn(later())

    async def _refresh_members(self) -> None:
        for meeting_id, room in list(self.rooms.items()):
            members, recorded = _members(room), self.recording_of(room)
            if json.dumps([members, recorded]) != self._members_said.get(meeting_id):
                await self._say_members(meeting_id, members, recorded)

    async def _say_members(
        self,
        meeting_id: str,
        members: list[dict[str, Any]],
        recorded: dict[str, str] | None = None,
    ) -> None:
        """Tell the other nodes who is in ``meeting_id`` here ([]: nobody any more), and
        which recording of it this node makes (every page shows that the meeting is
        recorded; another node carries the recording on if this one dies)."""
        said = json.dumps([members, recorded])
        if members:
            self._members_said[meeting_id] = said
        else:
            self._members_said.pop(meeting_id, None)
        fields = {
            "node": self.name,
            "run": self.run,
            "participants": members,
            "recording": recorded is not None,
            "recorded": recorded,
        }
        if members:
            await self.redis.hset(self._members_key(meeting_id), self.name, json.dumps(fields))
        else:
            await self.redis.hdel(self._members_key(meeting_id), self.name)
        message = {"op": "members"} | fields
        await self.redis.publish(self._channel(meeting_id), json.dumps(message))

    # -- the meeting layer's events ---------------------------------------------------
    def send_event(self, meeting_id: str, event: dict[str, Any]) -> None:
        """Share ``event`` (JSON) with the meeting's other nodes (their `on_event`)."""
        message = {"op": "event", "node": self.name, "event": event}
        self._spawn(self._publish(meeting_id, message))

    async def _forget_control(self, meeting_id: str) -> None:
        await self.redis.delete(self._control_key(meeting_id))

    async def _publish(self, meeting_id: str, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        if message["event"].get("kind") == "control":  # for nodes that open the meeting later
            await self.redis.set(self._control_key(meeting_id), text, ex=CONTROL_TTL)
        await self.redis.publish(self._channel(meeting_id), text)

    async def _announce(self, meeting_id: str, publication: Publication) -> None:
        stream = self.relay.export(publication)
        entry = {
            "id": publication.id,
            "node": self.name,
            "run": self.run,
            "relay": list(self.relay.address),
            "stream": stream,
            "participant": publication.participant_id,
            "source": publication.source,
            "kind": publication.kind,
            "codec": publication.codec_name,
            "clock_rate": publication.clock_rate,
            "rids": [layer.rid for layer in publication.layers if layer.rid is not None],
        }
        self.announced[publication.id] = (meeting_id, publication)
        text = json.dumps(entry)
        await self.redis.hset(self._meeting_key(meeting_id), publication.id, text)
        await self.redis.publish(
            self._channel(meeting_id), json.dumps({"op": "added", "publication": entry})
        )

    async def _retract(self, meeting_id: str, publication_id: str) -> None:
        self.announced.pop(publication_id, None)
        await self.redis.hdel(self._meeting_key(meeting_id), publication_id)
        await self.redis.publish(
            self._channel(meeting_id),
            json.dumps({"op": "removed", "publication": {"id": publication_id}}),
        )

    async def _load(self, room: Room) -> None:
        """The meeting's publications on other (live) nodes, when a room opens here."""
        entries = await self.redis.hgetall(self._meeting_key(room.meeting_id))
        found = [_entry(str(text)) for text in entries.values()]
        others = [e for e in found if e is not None and e["node"] != self.name]
        records = await self.redis.hgetall(self._members_key(room.meeting_id))
        # other nodes' records, with their text; by run: this node's name with another
        # run is a run of it that died
        elsewhere: list[tuple[dict[str, Any], str]] = []
        for text in records.values():
            record = _members_record(str(text))
            if record is not None and record["run"] != self.run:
                elsewhere.append((record, str(text)))
        runs = await self._runs({e["node"] for e in others} | {m["node"] for m, _ in elsewhere})
        for entry in others:
            if runs.get(entry["node"]) == entry["run"]:
                self._import(room, entry)
        for record, text in elsewhere:
            if runs.get(record["node"]) == record["run"]:
                self._member_runs[(room.meeting_id, record["node"])] = record["run"]
                self._note_recording(room.meeting_id, record)
                room.set_remote_members(
                    record["node"], record["participants"], record.get("recording") is True
                )
                continue
            # a dead node's record: removed (unless its node wrote a new one meanwhile)
            await self.redis.eval(
                _FORGET_RECORD, 1, self._members_key(room.meeting_id), record["node"], text
            )
            if (lost := recording_in(record)) is not None:  # it died recording
                await self._claim(room, record["node"], record["run"], lost, "node-failure")
        handover = await self.redis.get(self._handover_key(room.meeting_id))
        if handover:  # a node shut down recording the meeting, nobody was here to carry on
            self._on_message(self._channel(room.meeting_id), str(handover))
        control = await self.redis.get(self._control_key(room.meeting_id))
        if control:
            self._on_message(self._channel(room.meeting_id), str(control))

    async def live_elsewhere(self, meeting_id: str) -> bool:
        """Whether another live node has participants of ``meeting_id``."""
        records = await self.redis.hgetall(self._members_key(meeting_id))
        members = [_members_record(str(text)) for text in records.values()]
        elsewhere = {m["node"]: m["run"] for m in members if m and m["node"] != self.name}
        runs = await self._runs(set(elsewhere))
        return any(runs.get(node) == run for node, run in elsewhere.items())

    async def _runs(self, nodes: set[str]) -> dict[str, str]:
        """The current run of each of ``nodes`` that is alive."""
        if not nodes:
            return {}
        names = sorted(nodes)
        records = await self.redis.mget([f"{self.prefix}node:{name}" for name in names])
        runs = {}
        for name, record in zip(names, records, strict=True):
            if record:
                try:
                    runs[name] = json.loads(record)["run"]
                except (ValueError, KeyError, TypeError):
                    continue
        return runs

    def _import(self, room: Room, entry: dict[str, Any]) -> None:
        if entry["id"] in self.imported or room.closed:
            return
        origin = (entry["relay"][0], entry["relay"][1])
        receiver = self.relay.import_stream(origin, entry["stream"], entry["kind"], entry["rids"])
        publication = Publication(
            entry["id"],
            entry["participant"],
            entry["source"],
            receiver,
            entry["codec"],
            entry["clock_rate"],
            on_audio_level=room.on_audio_level,
        )
        self.imported[entry["id"]] = (room.meeting_id, receiver, entry["node"], entry["run"])
        logger.info(
            "node %s: meeting %s: %s of %s on node %s",
            self.name,
            room.meeting_id,
            entry["source"],
            entry["participant"],
            entry["node"],
        )
        room.add_remote(publication)

    def _unimport(self, publication_id: str) -> None:
        imported = self.imported.pop(publication_id, None)
        if imported is None:
            return
        meeting_id, receiver, _, _ = imported
        self.relay.forget(receiver)
        room = self.rooms.get(meeting_id)
        if room is not None:
            room.remove_remote(publication_id)

    async def _check_nodes(self) -> None:
        """Drop the publications and participants of nodes that died (or restarted)."""
        nodes = {node for _, _, node, _ in self.imported.values()}
        nodes |= {node for room in self.rooms.values() for node in room.remote_members}
        nodes |= {node for waiting in self._lobby_nodes.values() for node in waiting}
        # (by run, not by name: a worker started again keeps its name)
        if not nodes:
            return
        runs = await self._runs(nodes)
        for publication_id, (_, _, node, run) in list(self.imported.items()):
            if runs.get(node) != run:
                logger.info("node %s: node %s is gone: %s removed", self.name, node, publication_id)
                self._unimport(publication_id)
        for room in list(self.rooms.values()):
            for node in list(room.remote_members):
                key = (room.meeting_id, node)
                if runs.get(node) is None or runs.get(node) != self._member_runs.get(key):
                    logger.info("node %s: node %s is gone: its participants left", self.name, node)
                    self._member_runs.pop(key, None)
                    room.set_remote_members(node, [])
                    self._recording_lost(room, node)  # it recorded the meeting?
        for meeting_id, waiting_nodes in list(self._lobby_nodes.items()):
            for node, run in list(waiting_nodes.items()):
                if runs.get(node) != run and self.on_lobby is not None:
                    del waiting_nodes[node]  # its waiting participants went with it
                    self.on_lobby(meeting_id, {"op": "lobby", "node": node, "waiting": []})
            if not waiting_nodes:
                del self._lobby_nodes[meeting_id]

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    kind = message.get("type")
                    if kind not in ("message", "pmessage"):
                        continue
                    try:
                        if kind == "message" and message["channel"] == self._revoked_channel:
                            self._on_revoked(message["data"])
                        elif kind == "pmessage":
                            self._on_message(message["channel"], message["data"])
                    except Exception:  # one bad message never stops the node listening
                        logger.exception("node %s: a cluster message failed", self.name)
            except RedisError as exc:
                logger.warning("node %s: redis subscription: %s; again in 1 s", self.name, exc)
                await asyncio.sleep(1.0)
                try:  # what was revoked while the subscription was down
                    await self._load_revoked()
                except RedisError:
                    pass

    def _on_message(self, channel: str, data: str) -> None:
        meeting_id = channel[len(f"{self.prefix}meeting:") :]
        room = self.rooms.get(meeting_id)
        if room is None and '"lobby"' not in data:
            return
        try:
            message = json.loads(data)
            op = message["op"]
            described = message.get("publication")
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("node %s: a malformed cluster message on %s", self.name, channel)
            return
        if op == "lobby":
            self._on_lobby(meeting_id, message)
            return
        if room is None:
            return
        if op == "event":
            event = message.get("event")
            if message.get("node") != self.name and isinstance(event, dict) and self.on_event:
                self.on_event(room, event)
        elif op == "members":
            record = _members_record(data)
            if record is not None and record["node"] != self.name:
                self._member_runs[(meeting_id, record["node"])] = record["run"]
                self._note_recording(meeting_id, record)
                room.set_remote_members(
                    record["node"], record["participants"], record.get("recording") is True
                )
        elif op == "added":
            entry = _entry(json.dumps(described))
            if entry is not None and entry["node"] != self.name:
                self._import(room, entry)
        elif op == "removed" and isinstance(described, dict):
            self._unimport(str(described.get("id")))
        elif op == "handover":
            record = _members_record(data)
            offered = recording_in(record) if record is not None else None
            if record is not None and offered is not None and record["run"] != self.run:
                self._spawn(
                    self._claim(room, record["node"], record["run"], offered, "node-shutdown")
                )


def _entry(text: str) -> dict[str, Any] | None:
    """A directory entry, checked (None for anything else)."""
    return checked(
        text,
        lambda entry: (
            isinstance(entry["id"], str)
            and isinstance(entry["node"], str)
            and isinstance(entry["run"], str)
            and isinstance(entry["relay"][0], str)
            and type(entry["relay"][1]) is int
            and type(entry["stream"]) is int
            and isinstance(entry["participant"], str)
            and entry["source"] in SOURCES
            and entry["kind"] in ("audio", "video")
            and isinstance(entry["codec"], str)
            and type(entry["clock_rate"]) is int
            and all(isinstance(rid, str) for rid in entry["rids"])
        ),
    )


def _members(room: Room) -> list[dict[str, Any]]:
    """This node's participants of ``room``, as the pages' participant list shows them."""
    return [
        participant.describe()
        | {"moderator": participant.who.moderate, "publish": participant.who.publish}
        for participant in room.participants.values()
    ]


def _members_record(text: str) -> dict[str, Any] | None:
    """A node's participant list (from Redis), checked (None for anything else)."""
    return checked(
        text,
        lambda record: (
            isinstance(record["node"], str)
            and isinstance(record["run"], str)
            and isinstance(record["participants"], list)
            and all(
                isinstance(p, dict) and isinstance(p.get("id"), str) for p in record["participants"]
            )
        ),
    )
