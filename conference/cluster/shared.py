"""What the nodes of a cluster share besides media: the lobby, revoked tokens.

`SharedState` is a part of `~.node.Cluster` (its base class), kept apart because it
does not touch the rooms: a scheduled meeting's lobby lives on the nodes where
participants wait, whether or not a room of the meeting is open there, and a revoked
token concerns every meeting.

* The lobby (conference/realtime/lobby.py): each node says who waits there
  (`lobby_waiting`), the chair's node says what it decided (`lobby_decide`: start,
  admit or refuse an identity, end); both are kept in the meeting's ``lobby`` hash
  for a node that starts later (`lobby_load`) and published on the meeting's channel.
  The waiting participants of a node that dies leave the other nodes' lists with it.
* Revoked tokens (a point removed by the chair, a browser signed out): one key per
  token, expiring with it, and a channel; a node loads the keys when it starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: the lobby's decisions are kept this long (a meeting's join window is shorter)
LOBBY_TTL = 24 * 3600
#: a revocation is written this many times, a second apart, before it is given up (logged)
REVOKE_TRIES = 3


class SharedState:
    """The lobby and the revoked tokens of one node of a cluster (see the module doc)."""

    # provided by the node (conference/cluster/node.py)
    redis: aioredis.Redis
    name: str
    run: str
    prefix: str
    _lobby_nodes: dict[str, dict[str, str]]
    on_lobby: Callable[[str, dict[str, Any]], None] | None
    on_revoked: Callable[[str, str, float], None] | None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    async def _runs(self, nodes: set[str]) -> dict[str, str]:
        raise NotImplementedError

    def _channel(self, meeting_id: str) -> str:
        raise NotImplementedError

    def _lobby_key(self, meeting_id: str) -> str:
        """The lobby's decisions (``start``, ``end``, ``allow:IDENTITY`` 1/0) and, per
        node, who waits there (``waiting:NODE``)."""
        return f"{self.prefix}meeting:{meeting_id}:lobby"

    @property
    def _revoked_channel(self) -> str:
        """Revoked tokens: one key per token (``revoked:KIND:ID``, expiring with the
        token), and this channel telling the running nodes at once."""
        return f"{self.prefix}revoked"

    # -- the lobby of a scheduled meeting (conference/realtime/lobby.py) ----------------------
    def lobby_waiting(self, meeting_id: str, waiting: list[dict[str, Any]]) -> None:
        """Who waits in ``meeting_id``'s lobby on this node now (the chair's node lists
        them; [] = nobody any more)."""
        self._spawn(self._lobby_waiting(meeting_id, waiting))

    async def _lobby_waiting(self, meeting_id: str, waiting: list[dict[str, Any]]) -> None:
        field = f"waiting:{self.name}"
        if waiting:
            record = json.dumps({"run": self.run, "waiting": waiting})
            await self.redis.hset(self._lobby_key(meeting_id), field, record)
            await self.redis.expire(self._lobby_key(meeting_id), LOBBY_TTL)
        else:
            await self.redis.hdel(self._lobby_key(meeting_id), field)
        message = {"op": "lobby", "node": self.name, "run": self.run, "waiting": waiting}
        await self.redis.publish(self._channel(meeting_id), json.dumps(message))

    def lobby_decide(self, meeting_id: str, decision: dict[str, Any]) -> None:
        """A decision of the chair on this node: ``{"kind": "start"}``, ``{"kind":
        "admit", "identity": ..., "admitted": bool}`` or ``{"kind": "end"}``: kept (for
        nodes that start later) and told to the others."""
        self._spawn(self._lobby_decide(meeting_id, decision))

    async def _lobby_decide(self, meeting_id: str, decision: dict[str, Any]) -> None:
        key = self._lobby_key(meeting_id)
        if decision["kind"] in ("start", "end"):
            await self.redis.hset(key, decision["kind"], "1")
        elif decision["kind"] == "admit":
            await self.redis.hset(key, f"allow:{decision['identity']}", int(decision["admitted"]))
        await self.redis.expire(key, LOBBY_TTL)
        message = {"op": "lobby", "node": self.name, "decision": decision}
        await self.redis.publish(self._channel(meeting_id), json.dumps(message))

    async def lobby_load(self, meeting_id: str) -> dict[str, Any]:
        """What the other nodes decided and who waits there: ``{"started": bool,
        "ended": bool, "allowed": set, "refused": set, "waiting": {node: [...]}}``."""
        record = {
            str(k): str(v)
            for k, v in (await self.redis.hgetall(self._lobby_key(meeting_id))).items()
        }
        waiting: dict[str, list[dict[str, Any]]] = {}
        listed = {}
        for field, text in record.items():
            if field.startswith("waiting:") and field[8:] != self.name:
                entry = checked(str(text), lambda e: isinstance(e["waiting"], list))
                if entry is not None and isinstance(entry.get("run"), str):
                    listed[field[8:]] = entry
        runs = await self._runs(set(listed))
        for node, entry in listed.items():
            if runs.get(node) == entry["run"]:
                waiting[node] = [w for w in entry["waiting"] if isinstance(w, dict)]
                self._lobby_nodes.setdefault(meeting_id, {})[node] = entry["run"]
        allow = {f[6:]: v for f, v in record.items() if f.startswith("allow:")}
        return {
            "started": record.get("start") == "1",
            "ended": record.get("end") == "1",
            "allowed": {identity for identity, v in allow.items() if v == "1"},
            "refused": {identity for identity, v in allow.items() if v != "1"},
            "waiting": waiting,
        }

    def _on_lobby(self, meeting_id: str, message: dict[str, Any]) -> None:
        node = message.get("node")
        if not isinstance(node, str) or node == self.name or self.on_lobby is None:
            return
        waiting = message.get("waiting")
        decision = message.get("decision")
        if waiting is not None:
            if not isinstance(waiting, list) or not all(isinstance(w, dict) for w in waiting):
                return
            run = message.get("run")
            if waiting and isinstance(run, str):
                self._lobby_nodes.setdefault(meeting_id, {})[node] = run
            else:
                self._lobby_nodes.get(meeting_id, {}).pop(node, None)
        elif not (
            isinstance(decision, dict)
            and (
                decision.get("kind") in ("start", "end")
                or (
                    decision.get("kind") == "admit"
                    and isinstance(decision.get("identity"), str)
                    and isinstance(decision.get("admitted"), bool)
                )
            )
        ):
            logger.warning("node %s: a malformed lobby message for %s", self.name, meeting_id)
            return
        self.on_lobby(meeting_id, message)

    # -- revoked tokens ------------------------------------------------------------------
    def revoke(self, kind: str, token_id: str, expires: float) -> None:
        """``token_id`` (of ``kind``: "meeting" or "session") no longer opens anything,
        on any node, until ``expires`` (Unix time)."""
        self._spawn(self._revoke(kind, token_id, expires))

    async def _revoke(self, kind: str, token_id: str, expires: float) -> None:
        key = f"{self.prefix}revoked:{kind}:{token_id}"
        message = {"node": self.name, "kind": kind, "token": token_id, "expires": expires}
        for attempt in range(REVOKE_TRIES):  # a revocation must not be lost to a blip
            try:
                await self.redis.set(key, str(expires), exat=int(expires) + 60)
                await self.redis.publish(self._revoked_channel, json.dumps(message))
                return
            except RedisError:
                if attempt == REVOKE_TRIES - 1:
                    raise
                await asyncio.sleep(1.0)

    async def _load_revoked(self) -> None:
        async for key in self.redis.scan_iter(match=f"{self.prefix}revoked:*", count=500):
            _, _, rest = str(key).partition(f"{self.prefix}revoked:")
            kind, _, token_id = rest.partition(":")
            expires = _expiry(await self.redis.get(key))
            if expires is not None and token_id and self.on_revoked is not None:
                self.on_revoked(kind, token_id, expires)

    def _on_revoked(self, data: str) -> None:
        message = checked(
            str(data),
            lambda m: (
                isinstance(m["node"], str)
                and isinstance(m["kind"], str)
                and isinstance(m["token"], str)
                and _expiry(m["expires"]) is not None
            ),
        )
        if message is None:
            logger.warning("node %s: a malformed revocation message", self.name)
        elif message["node"] != self.name and self.on_revoked is not None:
            self.on_revoked(message["kind"], message["token"], float(message["expires"]))


def checked(text: str, valid: Callable[[Any], bool]) -> dict[str, Any] | None:
    """``text`` as JSON if ``valid`` says it has the shape expected (else None)."""
    try:
        value = json.loads(text)
        ok = isinstance(value, dict) and valid(value)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return value if ok else None


def _expiry(value: Any) -> float | None:
    """A revocation's expiry (a Unix time, from Redis or a message), or None if it is not
    a plausible one (NaN, infinite, negative or past 2106: dropped, never raised)."""
    if isinstance(value, bool):
        return None
    try:
        expires = float(value)
    except (TypeError, ValueError):
        return None
    return expires if 0 < expires < 2**32 else None
