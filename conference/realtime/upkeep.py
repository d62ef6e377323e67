"""The server's upkeep of scheduled meetings' rooms, every `SWEEP` seconds.

* **Ended elsewhere.**  A meeting ended or cancelled by something other than its chair's
  page (``conference meeting end``/``cancel``, the API, the meeting page, another node)
  has its room here closed for everyone (``leave`` with ``meeting-ended``) and its lobby
  emptied; points waiting for any meeting are judged again (`Lobby.recheck`: told if
  their meeting was cancelled or moved).  A change this process commits is seen at once
  (the lobby's listener of changed meetings calls `Upkeep.soon`); another process's at
  the next sweep.
* **Nobody ended it.**  A live meeting whose scheduled end passed more than
  ``auto_end_after`` minutes ago (setting; 0 = never) and whose room has had nobody in
  it for two sweeps in a row (here, and on no other node) ends by itself (searched for
  every `OVERDUE_EVERY` seconds, then followed at every sweep until it ends): a meeting
  left live for ever would keep its points busy (``point-busy-live``) for every other
  meeting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from aiohttp import web

from ..appkeys import BRIEFINGS, LIVE_ELSEWHERE, MEETING_POLICY, ROOMS, SETTINGS
from ..domain.lifecycle import MeetingLifecycle
from .lobby import LOBBY

logger = logging.getLogger(__name__)

#: seconds between sweeps (they read the database only when a scheduled meeting's room
#: is open here)
SWEEP = 5.0
#: seconds between the searches for live meetings nobody ended (the first one
#: `FIRST_OVERDUE` seconds after the start)
OVERDUE_EVERY = 60.0
FIRST_OVERDUE = 10.0


class Upkeep:
    def __init__(self, app: web.Application, lifecycle: MeetingLifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle
        #: meeting -> monotonic time it was first seen overdue and empty
        self.empty_since: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._next_overdue = time.monotonic() + FIRST_OVERDUE

    def soon(self) -> None:
        """Sweep now (a meeting changed in this process)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(SWEEP):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.sweep()
            except Exception:  # the database away, a room failing: the next sweep retries
                logger.exception("meeting upkeep failed")

    async def sweep(self) -> None:
        lobby = self.app[LOBBY]
        for meeting, waiting in list(lobby.meetings.items()):
            if waiting.waiting:
                await lobby.recheck(meeting)
        rooms = self.app[ROOMS].rooms
        local = [m for m in rooms if self.lifecycle.is_scheduled(m)]
        minutes = self.app[SETTINGS].auto_end_after
        ended_before = None
        now = time.monotonic()
        if minutes and (now >= self._next_overdue or self.empty_since):
            self._next_overdue = now + OVERDUE_EVERY
            ended_before = datetime.now(UTC) - timedelta(minutes=minutes)
        if not local and ended_before is None:
            return
        statuses, overdue = await self.lifecycle.upkeep_view(local, ended_before)
        for meeting in local:
            if statuses.get(meeting, "unknown") in ("ended", "cancelled", "unknown"):
                logger.info(
                    "meeting %s: %s elsewhere: closing its room", meeting, statuses.get(meeting)
                )
                await self._close(meeting)
        if ended_before is None:
            return  # not this sweep's turn to look for meetings nobody ended
        for meeting in list(self.empty_since):
            if meeting not in overdue:
                del self.empty_since[meeting]
        for meeting in overdue:
            room = rooms.get(meeting)
            if room is not None and room.participants:
                self.empty_since.pop(meeting, None)
                continue
            live_elsewhere = self.app.get(LIVE_ELSEWHERE)
            if live_elsewhere is not None and room is None and await live_elsewhere(meeting):
                self.empty_since.pop(meeting, None)
                continue
            first = self.empty_since.setdefault(meeting, now)
            if now - first < SWEEP:
                continue  # seen empty once: ends if it still is at the next sweep
            del self.empty_since[meeting]
            logger.info(
                "meeting %s: live and empty %d minutes after its end: ended", meeting, minutes
            )
            await self.lifecycle.end(meeting)
            await self._close(meeting)

    async def _close(self, meeting: str) -> None:
        briefings = self.app[BRIEFINGS]
        room = self.app[ROOMS].rooms.get(meeting)
        if room is not None and not room.closed:
            briefing = briefings.open(meeting)
            await briefing.end(shared=False)
        self.app[LOBBY].release_ended(meeting)


def setup_upkeep(app: web.Application) -> Upkeep | None:
    """Start the upkeep with the server (scheduled meetings only)."""
    lifecycle = app[MEETING_POLICY]
    if not isinstance(lifecycle, MeetingLifecycle):
        return None
    upkeep = Upkeep(app, lifecycle)

    async def running(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.ensure_future(upkeep.run())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    app.cleanup_ctx.append(running)
    return upkeep
