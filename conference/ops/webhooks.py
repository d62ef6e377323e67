"""Webhooks: each event POSTed to every ``webhook_urls``, signed, retried, never in the way.

Events (``type``): ``meeting.started`` and ``meeting.ended`` (a scheduled meeting's
status, when this process commits it: the chair's start and end, the API and pages,
the upkeep's automatic end; conference/domain/db.py), ``participant.joined`` and
``participant.left`` (a session of any room on this node, WebSocket, WHIP or WHEP;
conference/ops/__init__.py), ``recording.sealed`` (a manifest signed, at the stop or
later when the disk had refused it; conference/recording/recorder.py) and
``recording.composed`` (its MP4 made; conference/recording/jobs.py).

A delivery is ``POST`` of the JSON object ``{"id", "type", "at", "node", "data"}`` with
the headers ``X-Conference-Event`` (the type), ``X-Conference-Delivery`` (the id, the
same in every try and at every URL: receivers drop what they have already seen),
``X-Conference-Timestamp`` (POSIX seconds of this try) and ``X-Conference-Signature:
sha256=HEX``, the HMAC-SHA256 with ``webhook_secret`` of ``TIMESTAMP.BODY``.  A receiver
checks the signature and refuses a timestamp far from its clock (a replay).

An answer 2xx is a success; anything else (another status, no answer within
:data:`TIMEOUT` seconds, a refused connection) is tried again after each pause of
``webhook_retries`` (1 s, 5 s, 30 s, 2 min, 10 min by default), then given up with one
line in the log.  Redirects are not followed.  Deliveries wait in one bounded queue
per process (:data:`QUEUE_SIZE`): when it is full the oldest is dropped (counted in
``/metrics``).  An event is only put on that queue: nothing that causes one waits for
its delivery.  Deliveries are made :data:`CONCURRENCY` at a time, in no guaranteed
order (``at`` says when each event happened).  What is still queued when the server
stops is lost once :data:`FLUSH_TIMEOUT` seconds have passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .. import __version__
from ..core import events

__all__ = ["Webhooks", "delay_seconds", "sign"]

logger = logging.getLogger(__name__)

#: deliveries kept at most (waiting for their first try or for a new one)
QUEUE_SIZE = 1000
#: seconds a receiver has to answer one try
TIMEOUT = 10.0
#: tries in flight at once (a slow receiver does not hold up the others)
CONCURRENCY = 4
#: at shutdown, seconds left to the deliveries already due
FLUSH_TIMEOUT = 3.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Conference-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of
    ``TIMESTAMP.BODY`` keyed with ``secret``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def delay_seconds(durations: list[str]) -> list[float]:
    """``webhook_retries`` ("1s", "2m"...) in seconds."""
    from ..tokens import parse_ttl

    return [parse_ttl(text).total_seconds() for text in durations]


def where(url: str) -> str:
    """What the log says of a receiver: its scheme, host and port (a URL's path or
    query may carry the receiver's own token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass
class Delivery:
    """One event for one URL."""

    seq: int
    id: str
    type: str
    url: str
    body: bytes
    attempts: int = 0
    #: monotonic time of its next try
    due: float = 0.0


class Webhooks:
    """The deliveries of one server process (see the module doc).

    `listen` is an ``events.listeners`` entry: any thread may call it.  `start` and
    `close` run on the server's loop.
    """

    def __init__(
        self,
        urls: list[str],
        secret: str,
        retries: list[float],
        node: str | None = None,
        queue_size: int = QUEUE_SIZE,
        timeout: float = TIMEOUT,
    ) -> None:
        self.urls = list(urls)
        self._secret = secret
        self.retries = list(retries)
        self.node = node
        self.queue_size = queue_size
        self.timeout = timeout
        self._queue: dict[int, Delivery] = {}  # by seq: oldest first
        self._in_flight = 0
        self._seq = 0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        #: what became of the deliveries (``/metrics``)
        self.delivered = 0
        self.retried = 0
        self.given_up = 0
        self.dropped = 0

    def __repr__(self) -> str:  # never the secret, nor the URLs' paths
        return f"Webhooks({', '.join(where(u) for u in self.urls)})"

    @property
    def queued(self) -> int:
        """Deliveries waiting (for a first try or a new one) or in flight."""
        return len(self._queue) + self._in_flight

    # -- the loop's side ---------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": f"conference/{__version__} webhooks"},
        )
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(CONCURRENCY)]
        events.listeners.append(self.listen)

    async def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Stop taking events; give the deliveries due now ``timeout`` seconds; stop."""
        if self.listen in events.listeners:
            events.listeners.remove(self.listen)
        deadline = time.monotonic() + timeout
        while (self._due_now() or self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._queue:
            logger.warning("webhooks: %d deliveries not made (the server stops)", len(self._queue))
            self._queue.clear()

    def listen(self, event_type: str, data: dict[str, Any]) -> None:
        """An event (``events.emit``, in any thread): queued, nothing more."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._thread:
            self.submit(event_type, data, at)
        else:
            try:
                loop.call_soon_threadsafe(self.submit, event_type, data, at)
            except RuntimeError:  # the loop closed meanwhile (the server stops)
                return

    def submit(self, event_type: str, data: dict[str, Any], at: str | None = None) -> str:
        """Queue one delivery of the event per URL (on the loop); its id."""
        event_id = str(uuid.uuid4())
        at = at or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = json.dumps(
            {"id": event_id, "type": event_type, "at": at, "node": self.node, "data": data},
            ensure_ascii=False,
            separators=(",", ":"),
            default=str,
        ).encode()
        now = time.monotonic()
        for url in self.urls:
            self._seq += 1
            self._add(Delivery(self._seq, event_id, event_type, url, body, due=now))
        return event_id

    def _add(self, delivery: Delivery) -> None:
        while len(self._queue) >= self.queue_size:
            oldest = self._queue.pop(min(self._queue))
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                logger.warning(
                    "webhooks: the queue is full (%d): %s %s to %s dropped (%d so far)",
                    self.queue_size,
                    oldest.type,
                    oldest.id,
                    where(oldest.url),
                    self.dropped,
                )
        self._queue[delivery.seq] = delivery
        self._wake.set()

    def _due_now(self) -> bool:
        now = time.monotonic()
        return any(d.due <= now for d in self._queue.values())

    def _take(self) -> tuple[Delivery | None, float | None]:
        """The delivery due first if it is due now, else the seconds until one is."""
        if not self._queue:
            return None, None
        first = min(self._queue.values(), key=lambda d: (d.due, d.seq))
        wait = first.due - time.monotonic()
        if wait > 0:
            return None, wait
        del self._queue[first.seq]
        return first, None

    async def _work(self) -> None:
        while True:
            delivery, wait = self._take()
            if delivery is None:
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            self._in_flight += 1
            try:
                failure = await self._post(delivery)
            finally:
                self._in_flight -= 1
            self._settle(delivery, failure)

    def _settle(self, delivery: Delivery, failure: str | None) -> None:
        delivery.attempts += 1
        if failure is None:
            self.delivered += 1
            logger.debug("webhooks: %s %s delivered", delivery.type, delivery.id)
            return
        if delivery.attempts > len(self.retries):
            self.given_up += 1
            logger.warning(
                "webhooks: %s %s to %s given up after %d tries: %s",
                delivery.type,
                delivery.id,
                where(delivery.url),
                delivery.attempts,
                failure,
            )
            return
        pause = self.retries[delivery.attempts - 1]
        self.retried += 1
        logger.info(
            "webhooks: %s %s to %s failed (%s): try %d in %g s",
            delivery.type,
            delivery.id,
            where(delivery.url),
            failure,
            delivery.attempts + 1,
            pause,
        )
        delivery.due = time.monotonic() + pause
        self._add(delivery)

    async def _post(self, delivery: Delivery) -> str | None:
        """One try: None on a 2xx answer, else why it failed."""
        assert self._session is not None
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Conference-Event": delivery.type,
            "X-Conference-Delivery": delivery.id,
            "X-Conference-Timestamp": timestamp,
            "X-Conference-Signature": sign(self._secret, timestamp, delivery.body),
        }
        try:
            async with self._session.post(
                delivery.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer in {self.timeout:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
