"""``/metrics``: a real server process, real participants (conference.tools.client), the
exposition parsed with prometheus-client's own parser; who may read it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conference.tools.client import Client
from conference.tools.testmedia import ToneAudioTrack

from ..conftest import check_clean_exit, start_server

pytestmark = pytest.mark.media  # media flows and its counters are compared

TOKEN = "metrics-token-for-the-tests"


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and labels -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(
    url: str, *, token: str | None = None, source: str = "127.0.0.1"
) -> tuple[int, str, str]:
    """(status, content type, body) of a GET from the address ``source``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(url, headers=headers) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def samples_of(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, text = await scrape(url)
    assert status == 200, text
    return parse(text)


async def test_metrics_follow_the_rooms_and_the_media(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"CONFERENCE_METRICS_TOKEN": TOKEN})
    url = f"{server.url}/metrics"
    clients: list[Client] = []
    try:
        status, content_type, text = await scrape(url)  # 127.0.0.1: allowed by default
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        idle = parse(text)
        assert value(idle, "conference_rooms") == 0
        assert value(idle, "conference_participants", transport="websocket") == 0
        assert value(idle, "conference_forwarded_packets_total") == 0
        assert ("process_resident_memory_bytes", ()) in idle

        chair = Client(server.url, "m1", server.token("m1", "chu-tich", "chair"))
        point = Client(server.url, "m1", server.token("m1", "xa-a"), decode=False)
        clients += [chair, point]
        await chair.connect()
        await point.connect()
        await chair.publish({"microphone": ToneAudioTrack(440.0)})
        await point.wait_for(lambda: len(point.publications("microphone")) == 1, 15)
        await point.wait_for(lambda: sum(c.packets for c in point.counters.values()) > 20, 15)

        first = await samples_of(url)
        assert value(first, "conference_rooms") == 1
        assert value(first, "conference_participants", transport="websocket") == 2
        assert value(first, "conference_publications", kind="audio") == 1
        assert value(first, "conference_subscriptions") == 1
        assert value(first, "conference_received_packets_total") > 20
        assert value(first, "conference_forwarded_packets_total") > 20
        assert value(first, "conference_forwarded_bytes_total") > 20 * 20
        assert value(first, "conference_event_loop_lag_max_seconds") >= 0
        await asyncio.sleep(1.5)
        second = await samples_of(url)
        for name in ("conference_received_packets_total", "conference_forwarded_packets_total"):
            # 50 Opus packets a second: well over 30 more in 1.5 s
            assert value(second, name) > value(first, name) + 30, name
        # the loop-lag probe wakes four times a second
        lag = "conference_event_loop_lag_seconds_count"
        assert value(second, lag) >= value(first, lag) + 4
        assert value(second, "conference_event_loop_lag_seconds_bucket", le="+Inf") > 0
        assert value(second, "conference_upstream_expected_packets_total") > 50
        assert value(second, "conference_upstream_lost_packets_total") == 0  # 127.0.0.1
        rtt = ("conference_subscriber_rtt_seconds", (("stat", "max"),))
        for _ in range(50):  # once a receiver report answered a sender report
            if rtt in second:
                break
            await asyncio.sleep(0.2)
            second = await samples_of(url)
        assert second[rtt] < 1.0
        assert value(second, "conference_ingress_bitrate_bps") > 10_000

        # A participant gone: its counters stay in the totals.
        await point.leave()
        for _ in range(50):
            third = await samples_of(url)
            if value(third, "conference_participants", transport="websocket") == 1:
                break
            await asyncio.sleep(0.1)
        assert value(third, "conference_participants", transport="websocket") == 1
        assert value(third, "conference_subscriptions") == 0
        forwarded = "conference_forwarded_packets_total"
        assert value(third, forwarded) >= value(second, forwarded)

        # Another address (127.0.0.2) needs the token; a wrong one is refused.
        status, _, text = await scrape(url, source="127.0.0.2")
        assert status == 401 and '"unauthorized"' in text
        status, _, text = await scrape(url, source="127.0.0.2", token="not-the-metrics-token")
        assert status == 401
        status, _, text = await scrape(url, source="127.0.0.2", token=TOKEN)
        assert status == 200 and "conference_rooms 1.0" in text
    finally:
        for client in clients:
            await client.close()
        check_clean_exit(server)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_metrics_port_and_allow_list_without_a_token(tmp_path: Path) -> None:
    """``metrics_port``: ``/metrics`` on a port of its own too; no token configured: an
    address outside ``metrics_allow`` is refused (403)."""
    port = free_port()
    server = start_server(
        tmp_path,
        env={"CONFERENCE_METRICS_PORT": str(port), "CONFERENCE_METRICS_ALLOW": "127.0.0.1/32"},
    )
    try:
        side = f"http://127.0.0.1:{port}/metrics"
        status, _, text = await scrape(side)
        assert status == 200 and "conference_rooms 0.0" in text
        status, _, text = await scrape(side, source="127.0.0.2")
        assert status == 403 and '"forbidden"' in text
        status, _, _ = await scrape(f"{server.url}/metrics", source="127.0.0.2")
        assert status == 403
        status, _, _ = await scrape(f"{server.url}/metrics", source="127.0.0.2", token="x" * 20)
        assert status == 401  # no token is configured: none is right
        status, _, _ = await scrape(f"{server.url}/metrics")
        assert status == 200
    finally:
        check_clean_exit(server)


def test_each_worker_has_a_metrics_port_of_its_own() -> None:
    from conference.settings import SettingsError, load_settings
    from conference.workers import worker_settings

    env = {"CONFERENCE_WORKERS": "3", "CONFERENCE_REDIS_URL": "redis://127.0.0.1:6379/0"}
    settings = load_settings(env=env | {"CONFERENCE_METRICS_PORT": "9100"})
    ports = [worker_settings(settings, index, 8443).metrics_port for index in range(3)]
    assert ports == [9100, 9101, 9102]
    assert worker_settings(load_settings(env=env), 1, 8443).metrics_port is None
    with pytest.raises(SettingsError, match="metrics_port"):
        load_settings(env=env | {"CONFERENCE_METRICS_PORT": "8442"})  # 8442-8444: the HTTPS port
