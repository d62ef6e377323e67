"""Operations: what a monitoring system reads and what outside systems are told.

* ``/metrics`` (conference/ops/metrics.py): Prometheus's text format, read at scrape
  time from the rooms, the recorder, the jobs and ``core.events``' counters.
* Webhooks (conference/ops/webhooks.py): ``meeting.*``, ``participant.*`` and
  ``recording.*`` events POSTed, signed, to ``webhook_urls``.

`setup_ops` wires both into the server's application; the rest of the server only
reports through ``conference.core.events`` and knows nothing of either.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..appkeys import MEETING_POLICY, ROOMS, SETTINGS
from ..sfu.participant import Participant
from ..sfu.room import Room
from .metrics import METRICS, Metrics, serve_metrics_port, setup_metrics
from .webhooks import Webhooks, delay_seconds

__all__ = ["METRICS", "WEBHOOKS", "serve_metrics_port", "setup_ops"]

WEBHOOKS = web.AppKey("webhooks", Webhooks)


def setup_ops(app: web.Application) -> Metrics:
    """``/metrics``, and the webhooks when ``webhook_urls`` is set: call after the
    room registry and its briefings exist (it watches every new room)."""
    settings = app[SETTINGS]
    metrics = setup_metrics(app)
    webhooks: Webhooks | None = None
    if settings.webhook_urls and settings.webhook_secret:
        node = settings.node_name or f"{socket.gethostname()}-{settings.port}"
        webhooks = Webhooks(
            settings.webhook_urls,
            settings.webhook_secret,
            delay_seconds(settings.webhook_retries),
            node=node,
        )
        app[WEBHOOKS] = metrics.webhooks = webhooks

        async def delivering(app: web.Application) -> AsyncIterator[None]:
            assert webhooks is not None
            await webhooks.start()
            yield
            await webhooks.close()

        app.cleanup_ctx.append(delivering)

    registry = app[ROOMS]
    created_before = registry.on_created

    def created(room: Room) -> None:
        if created_before is not None:
            created_before(room)
        room.observers.append(
            lambda event, subject, detail: _observe(app, room, event, subject, detail)
        )

    registry.on_created = created
    return metrics


def _observe(
    app: web.Application, room: Room, event: str, subject: Any, detail: str | None
) -> None:
    """A room's notice: a participant that leaves has its media counters kept; joins
    and leaves are webhook events."""
    if event not in ("joined", "left") or not isinstance(subject, Participant):
        return
    if event == "left":
        app[METRICS].tally.retire(subject)
    webhooks = app.get(WEBHOOKS)
    if webhooks is None:
        return
    who = subject.who
    policy = app.get(MEETING_POLICY)
    is_scheduled = getattr(policy, "is_scheduled", None)
    data: dict[str, Any] = {
        "meeting": room.meeting_id,
        "scheduled": bool(is_scheduled(room.meeting_id)) if is_scheduled else False,
        "participant": subject.id,
        "identity": who.identity,
        "name": who.name,
        "role": who.role,
        "transport": subject.transport,
    }
    if event == "left":
        data["reason"] = detail
        data["duration_s"] = round(max(0.0, time.time() - subject.joined_at), 1)
    webhooks.submit(f"participant.{event}", data)
