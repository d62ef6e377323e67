"""A recording outlives its node: another node of the meeting carries it on.

`RecordingHandover` is a part of `~.node.Cluster` (its base class), kept apart as
`~.shared.SharedState` is.  A node that records a meeting says which recording in its
members record (``recorded``: the manifest's ``directory`` and ``recording`` stamp).
When that node dies (its run is gone: `Cluster._check_nodes`, or a dead run's record
found when a room of the meeting opens: `Cluster._load`), or shuts down (it offers its
recordings: `hand_over_recordings`, a ``handover`` message, also kept a while for a
node where the meeting opens later), one node of the meeting claims the recording (a
``SET NX`` per dead run and recording) and records on: its manifest's ``continues``
names the earlier part, and the library links the two.  A node cut off from Redis but
alive would go on recording beside the new one: two parts overlap, nothing is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..sfu.room import Room

logger = logging.getLogger(__name__)

#: a node that claimed the continuation of a dead node's recording holds the claim this long
CLAIM_TTL = 24 * 3600
#: a node shutting down leaves its recordings to the others: the offer stays this long
#: for a node where the meeting opens later (a restart of every node)
HANDOVER_TTL = 120


class RecordingHandover:
    """The recordings of the meeting's other nodes, carried on here if they stop."""

    # provided by the node (conference/cluster/node.py)
    redis: aioredis.Redis
    name: str
    run: str
    prefix: str
    rooms: dict[str, Room]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    def _channel(self, meeting_id: str) -> str:
        raise NotImplementedError

    def _recording_state(self) -> None:
        #: which recording of a meeting this node makes (None: none); the composition
        #: root sets it (the recorder's `current`): the others continue it if we die
        self.recording_of: Callable[[Room], dict[str, str] | None] = lambda room: None
        #: called with (room, what) when this node is to carry on a recording that
        #: another node made of the meeting and can no longer make (it died or shut
        #: down): ``what`` has that recording's ``directory``, ``recording``, ``node``
        #: and the ``reason`` (``node-failure``, ``node-shutdown``)
        self.on_recording_orphaned: Callable[[Room, dict[str, str]], None] | None = None
        #: the recording each other node said it makes: (meeting, node) -> (run, recording)
        self._recordings: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        #: set when this node hands its recordings over (shutting down): it takes none
        self.leaving = False

    def _handover_key(self, meeting_id: str) -> str:
        return f"{self.prefix}meeting:{meeting_id}:handover"

    def _note_recording(self, meeting_id: str, record: dict[str, Any]) -> None:
        """Remember which recording another node makes of the meeting (its members
        record), to carry it on if that node dies."""
        key, recorded = (meeting_id, record["node"]), recording_in(record)
        if recorded is None:
            self._recordings.pop(key, None)
        else:
            self._recordings[key] = (record["run"], recorded)

    def _forget_recordings(self, meeting_id: str) -> None:
        for key in [key for key in self._recordings if key[0] == meeting_id]:
            del self._recordings[key]

    def _recording_lost(self, room: Room, node: str) -> None:
        """``node`` is gone from ``room``'s meeting: carry on what it recorded."""
        lost = self._recordings.pop((room.meeting_id, node), None)
        if lost is not None:
            self._spawn(self._claim(room, node, lost[0], lost[1], "node-failure"))

    async def _claim(
        self, room: Room, node: str, run: str, recorded: dict[str, str], reason: str
    ) -> None:
        """Carry on the recording ``recorded`` that ``node`` (run ``run``) made of
        ``room``'s meeting and stopped making (``reason``), unless another node claimed it
        first: one claim per recording, in Redis."""
        if self.leaving or room.closed or self.on_recording_orphaned is None:
            return
        claim = f"{self.prefix}meeting:{room.meeting_id}:continued:{run}:{recorded['recording']}"
        if not await self.redis.set(claim, self.name, nx=True, ex=CLAIM_TTL):
            return  # another node carries it on
        logger.warning(
            "node %s: meeting %s: node %s stopped recording it (%s): the recording goes on here",
            self.name,
            room.meeting_id,
            node,
            reason,
        )
        if not room.closed:
            self.on_recording_orphaned(room, recorded | {"node": node, "reason": reason})

    async def hand_over_recordings(self) -> None:
        """This node is shutting down: each recording it makes is offered to the
        meeting's other nodes (now, and for `HANDOVER_TTL` to a node where the meeting
        opens later); it takes none itself from now on."""
        self.leaving = True
        for meeting_id, room in list(self.rooms.items()):
            recorded = self.recording_of(room)
            if recorded is None:
                continue
            offer = json.dumps(
                {
                    "op": "handover",
                    "node": self.name,
                    "run": self.run,
                    "participants": [],
                    "recorded": recorded,
                }
            )
            try:
                await self.redis.set(self._handover_key(meeting_id), offer, ex=HANDOVER_TTL)
                await self.redis.publish(self._channel(meeting_id), offer)
            except RedisError as exc:
                logger.warning("node %s: handing recordings over: %s", self.name, exc)


def recording_in(record: dict[str, Any]) -> dict[str, str] | None:
    """The recording a node's members record says it makes (None: none, or malformed)."""
    recorded = record.get("recorded")
    if not isinstance(recorded, dict):
        return None
    directory, stamp = recorded.get("directory"), recorded.get("recording")
    if not isinstance(directory, str) or not isinstance(stamp, str) or not stamp:
        return None
    return {"directory": directory, "recording": stamp}
