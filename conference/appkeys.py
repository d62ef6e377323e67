"""Typed keys of the aiohttp application's shared state."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiortc import RTCIceServer

from .domain.db import Database
from .realtime.briefing import Briefings
from .settings import Settings
from .sfu.room import RoomRegistry
from .tokens import RevocationList

if TYPE_CHECKING:
    from .cluster import Cluster
    from .tokens import Claims


class MeetingPolicy(Protocol):
    """Who may enter a meeting now: the scheduling plane's hook into access control.

    The server uses `conference.domain.lifecycle.MeetingLifecycle`;
    `conference.realtime.access.OpenMeetings` accepts any meeting ID.
    """

    async def admit(self, claims: Claims) -> None:
        """Raise `AccessError` if ``claims`` may not enter its meeting now."""


SETTINGS = web.AppKey("settings", Settings)
ROOMS = web.AppKey("rooms", RoomRegistry)
#: this node's part in a cluster (only with a ``redis_url``)
CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster")
BRIEFINGS = web.AppKey("briefings", Briefings)
REVOKED = web.AppKey("revoked", RevocationList)
MEETING_POLICY: web.AppKey[MeetingPolicy] = web.AppKey("meeting_policy")
ICE_SERVERS = web.AppKey("ice_servers", list[RTCIceServer])
ICE_SERVERS_JSON = web.AppKey("ice_servers_json", list[dict[str, Any]])
WEBSOCKETS: web.AppKey[weakref.WeakSet[asyncio.Task[Any]]] = web.AppKey("websockets")
#: In a cluster: whether a meeting has participants on another node (a WHEP viewer may
#: then watch it here, where no room of it is open yet).
LIVE_ELSEWHERE: web.AppKey[Callable[[str], Awaitable[bool]]] = web.AppKey("live_elsewhere")
#: The control-plane database (opened by conference.web.auth.setup_auth, closed on cleanup).
DATABASE: web.AppKey[Database] = web.AppKey("database")


def app_database(app: web.Application) -> Database:
    """The app's control-plane database (opened once, closed on cleanup)."""
    if DATABASE not in app:
        app[DATABASE] = Database.from_settings(app[SETTINGS])

        async def close(app: web.Application) -> None:
            app[DATABASE].close()

        app.on_cleanup.append(close)
    return app[DATABASE]
