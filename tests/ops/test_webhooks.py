"""Webhooks: a real server process on a scheduled meeting, a real aiohttp receiver on
127.0.0.1; signatures checked as a receiver would; retries against a receiver that
fails; the queue's bounds (`Webhooks` against the same kind of receiver)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from conference.ops.webhooks import Webhooks
from conference.settings import SettingsError, load_settings
from conference.tools.client import Client
from conference.tools.testmedia import ToneAudioTrack

from ..conftest import check_clean_exit, start_server
from ..test_lifecycle import schedule, sqlite_database
from .test_metrics import parse, scrape, value

ROOT = Path(__file__).resolve().parent.parent.parent

SECRET = "webhook-secret-for-the-tests"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float  # monotonic


class Receiver:
    """``/ok`` answers 200; ``/flaky`` answers 500 to the first two tries of each
    delivery, then 200; ``/down`` always 503."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.tries: Counter[str] = Counter()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 200
        if request.path == "/flaky":
            self.tries[request.headers.get("X-Conference-Delivery", "")] += 1
            status = (
                500 if self.tries[request.headers.get("X-Conference-Delivery", "")] <= 2 else 200
            )
        elif request.path == "/down":
            status = 503
        self.received.append(
            Received(request.path, dict(request.headers), body, status, time.monotonic())
        )
        return web.Response(status=status)

    def events(self, path: str = "/ok") -> list[dict[str, Any]]:
        """The verified events delivered (answered 2xx) at ``path``."""
        return [verified(r) for r in self.received if r.path == path and r.answered == 200]


def verified(received: Received) -> dict[str, Any]:
    """What a receiver does: the signature of ``TIMESTAMP.BODY``, the timestamp window."""
    timestamp = received.headers["X-Conference-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256)
    signature = received.headers["X-Conference-Signature"]
    assert hmac.compare_digest(signature, f"sha256={expected.hexdigest()}")
    assert abs(time.time() - int(timestamp)) < 60
    event = json.loads(received.body)
    assert set(event) == {"id", "type", "at", "node", "data"}
    assert received.headers["X-Conference-Event"] == event["type"]
    assert received.headers["X-Conference-Delivery"] == event["id"]
    assert received.headers["Content-Type"] == "application/json"
    assert event["at"].endswith("Z")
    return event


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{path}", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.1)


@pytest.mark.media
async def test_a_meeting_s_events_signed_and_retried(tmp_path: Path, receiver: Receiver) -> None:
    database = sqlite_database(tmp_path)
    meeting_id, _, points = schedule(database, minutes=10)
    database.close()
    meeting = str(meeting_id)
    server = start_server(
        tmp_path,
        env={
            "CONFERENCE_WEBHOOK_URLS": f"{receiver.url}/ok,{receiver.url}/flaky",
            "CONFERENCE_WEBHOOK_SECRET": SECRET,
            "CONFERENCE_WEBHOOK_RETRIES": "1s,1s",
        },
    )
    chair = Client(server.url, meeting, server.token(meeting, "chu-tich", "chair"))
    point = Client(server.url, meeting, server.token(meeting, points[0], "point"))
    try:
        await chair.connect()  # the chair's join starts the meeting
        await point.connect()
        await point.publish({"microphone": ToneAudioTrack(440.0)})
        await chair.wait_for(lambda: len(chair.publications("microphone")) == 1, 15)
        await chair.request({"type": "record-start"}, "recording")
        await asyncio.sleep(2.0)
        await chair.request({"type": "record-stop"}, "recording")
        await point.leave()
        await chair.send({"type": "end-meeting"})

        def types() -> list[str]:
            return sorted(e["type"] for e in receiver.events())

        await until(lambda: types().count("participant.left") == 2 and "meeting.ended" in types())
        await until(lambda: "recording.sealed" in types())
        events = receiver.events()
        by_type: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_type.setdefault(event["type"], []).append(event)
        assert len({e["id"] for e in events}) == len(events)  # one delivery each at /ok

        [started] = by_type["meeting.started"]
        assert started["data"]["meeting"] == meeting
        assert started["data"]["title"] == "Giao ban tuần"
        assert started["data"]["previous"] == "scheduled" and started["data"]["started_at"]
        [ended] = by_type["meeting.ended"]
        assert ended["data"]["meeting"] == meeting and ended["data"]["previous"] == "live"

        joined = {e["data"]["identity"]: e["data"] for e in by_type["participant.joined"]}
        assert set(joined) == {"u:chu-tich", f"pt:{points[0]}"}
        assert joined["u:chu-tich"]["role"] == "chair"
        assert joined["u:chu-tich"]["meeting"] == meeting
        assert joined["u:chu-tich"]["scheduled"] is True
        assert joined["u:chu-tich"]["transport"] == "websocket"
        left = {e["data"]["identity"]: e["data"] for e in by_type["participant.left"]}
        # (the client closes its connections as it sends leave: either ends the session)
        assert left[f"pt:{points[0]}"]["reason"] in ("left", "connection-failed")
        assert left[f"pt:{points[0]}"]["duration_s"] > 1
        assert left[f"pt:{points[0]}"]["participant"] == joined[f"pt:{points[0]}"]["participant"]
        assert left["u:chu-tich"]["reason"] == "meeting-ended"

        [sealed] = by_type["recording.sealed"]
        assert sealed["data"]["meeting"] == meeting and sealed["data"]["state"] == "complete"
        assert sealed["data"]["tracks"] == 1 and sealed["data"]["sealed_at"]
        assert sealed["data"]["scheduled"] is True
        recordings = tmp_path / "recordings"
        assert (recordings / sealed["data"]["directory"]).is_dir()

        # /flaky: the same delivery three times (500, 500, 200), a second apart, each
        # signed anew; the event reached it once
        await until(lambda: len(receiver.events("/flaky")) >= len(events))
        tries = [r for r in receiver.received if r.path == "/flaky"]
        first = [r for r in tries if r.headers["X-Conference-Delivery"] == started["id"]]
        assert [r.answered for r in first] == [500, 500, 200]
        assert first[1].at - first[0].at >= 0.9 and first[2].at - first[1].at >= 0.9
        assert [verified(r)["id"] for r in first] == [started["id"]] * 3
        assert json.loads(first[0].body) == started  # the same event at every URL

        status, _, text = await scrape(f"{server.url}/metrics")
        assert status == 200
        samples = parse(text)
        # every metric of the sample Grafana dashboard exists
        families = {family.name for family in text_string_to_metric_families(text)}
        dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8")
        used = set(re.findall(r"\b((?:conference|process)_[a-z0-9_]+)", dashboard))
        assert used and {re.sub(r"_(total|bucket)$", "", n) for n in used} <= families
        delivered = value(samples, "conference_webhook_deliveries_total", result="delivered")
        assert delivered >= 2 * len(events)
        assert value(samples, "conference_webhook_retries_total") >= 2 * len(events)
        assert value(samples, "conference_webhook_deliveries_total", result="given_up") == 0
        assert value(samples, "conference_recordings_sealed_total", state="complete") == 1

        # the composition of those seconds, when its job is done (its own process)
        await until(lambda: "recording.composed" in types(), timeout=40)
        [composed] = [e for e in receiver.events() if e["type"] == "recording.composed"]
        assert composed["data"]["meeting"] == meeting
        assert composed["data"]["recording"] == sealed["data"]["recording"]
        assert composed["data"]["file"].endswith(".mp4") and composed["data"]["size"] > 0
    finally:
        await chair.close()
        await point.close()
        check_clean_exit(server)
    assert SECRET not in server.log()


async def test_the_queue_drops_the_oldest_and_gives_up(receiver: Receiver) -> None:
    webhooks = Webhooks([f"{receiver.url}/ok"], SECRET, retries=[], queue_size=2)
    # not started: the three events wait in a queue of two; the oldest goes
    for n in range(3):
        webhooks.submit("participant.joined", {"n": n})
    assert webhooks.dropped == 1 and webhooks.queued == 2
    await webhooks.start()
    await until(lambda: webhooks.delivered == 2, 10)
    assert [e["data"]["n"] for e in receiver.events()] in ([1, 2], [2, 1])
    await webhooks.close()

    failing = Webhooks([f"{receiver.url}/down"], SECRET, retries=[0.1, 0.1])
    await failing.start()
    event_id = failing.submit("meeting.started", {"meeting": "1"})
    await until(lambda: failing.given_up == 1, 10)
    assert failing.retried == 2 and failing.delivered == 0 and failing.queued == 0
    assert [r.headers["X-Conference-Delivery"] for r in receiver.received[-3:]] == [event_id] * 3
    assert SECRET not in repr(failing) and "/down" not in repr(failing)
    await failing.close()


def test_webhook_settings() -> None:
    with pytest.raises(SettingsError, match="webhook_secret"):
        load_settings(env={"CONFERENCE_WEBHOOK_URLS": "https://hooks.example.vn/hop"})
    with pytest.raises(SettingsError, match="http:// or https://"):
        load_settings(
            env={"CONFERENCE_WEBHOOK_URLS": "ftp://x.vn/a", "CONFERENCE_WEBHOOK_SECRET": SECRET}
        )
    settings = load_settings(
        env={
            "CONFERENCE_WEBHOOK_URLS": "https://a.example.vn/h?k=1, http://10.0.0.5:8080/h",
            "CONFERENCE_WEBHOOK_SECRET": SECRET,
            "CONFERENCE_WEBHOOK_RETRIES": "none",
        }
    )
    assert settings.webhook_urls == ["https://a.example.vn/h?k=1", "http://10.0.0.5:8080/h"]
    assert settings.webhook_retries == []
    assert SECRET not in repr(settings) and "a.example.vn" not in repr(settings)
    assert load_settings(env={}).webhook_retries == ["1s", "5s", "30s", "2m", "10m"]
