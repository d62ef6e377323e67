"""Per-participant TURN credentials (conference/turn.py): their format, the settings,
and what a client gets in ``joined`` and in the WHIP ``Link`` header.

The credential is the TURN REST API's (coturn ``use-auth-secret``); coturn accepting
it, and media through the relay, is tests/test_turn_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from conference.settings import Settings, SettingsError, load_settings
from conference.tools.testmedia import ToneAudioTrack
from conference.turn import client_ice_servers, ice_server_links, turn_credential, turn_server

from .conftest import check_clean_exit, start_server

SECRET = "north-hall-turn-secret"
URLS = [
    "turn:turn.huyen.vn:3478?transport=udp",
    "turn:turn.huyen.vn:3478?transport=tcp",
    "turns:turn.huyen.vn:443?transport=tcp",
]


def test_credential_matches_a_known_vector() -> None:
    # printf '%s' '1700043200:PA_abc123' | openssl dgst -sha1 -hmac north-hall-turn-secret -binary | base64
    username, credential = turn_credential(SECRET, "PA_abc123", 43200, now=1_700_000_000.7)
    assert username == "1700043200:PA_abc123"
    assert credential == "JpJhA5X4u5qsqanSS0pKidQQQfM="


def test_credential_is_the_hmac_of_the_username_and_expires_after_the_ttl() -> None:
    before = int(time.time())
    username, credential = turn_credential(SECRET, "PA_x-y_z", 600)
    expiry, user = username.split(":", 1)
    assert user == "PA_x-y_z"
    assert before + 600 <= int(expiry) <= int(time.time()) + 600
    digest = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(credential) == digest
    # another secret, another user or another expiry: another credential
    assert (
        turn_credential("another-secret-16b", "PA_x-y_z", 600, now=0)[1]
        != (turn_credential(SECRET, "PA_x-y_z", 600, now=0)[1])
    )
    assert turn_credential(SECRET, "PA_a", 600, now=0) != turn_credential(
        SECRET, "PA_b", 600, now=0
    )
    assert turn_credential(SECRET, "PA_a", 600, now=0) != turn_credential(
        SECRET, "PA_a", 601, now=0
    )


def test_each_client_gets_the_static_servers_and_its_own_turn_entry() -> None:
    settings = Settings(turn_secret=SECRET, turn_urls=URLS, turn_ttl=3600)
    static = [{"urls": ["stun:stun.huyen.vn:3478"]}]
    servers = client_ice_servers(settings, static, "PA_one", now=1000)
    assert servers[0] == {"urls": ["stun:stun.huyen.vn:3478"]}
    assert servers[1] == {
        "urls": URLS,
        "username": "4600:PA_one",
        "credential": turn_credential(SECRET, "PA_one", 3600, now=1000)[1],
    }
    assert SECRET not in json.dumps(servers)
    assert static == [{"urls": ["stun:stun.huyen.vn:3478"]}]  # not changed
    # without TURN settings: the static servers as they are
    assert client_ice_servers(Settings(), static, "PA_one") == static
    assert turn_server(Settings(), "PA_one") is None


def test_link_headers_carry_the_credentials() -> None:
    servers: list[dict[str, Any]] = [
        {"urls": ["stun:stun.huyen.vn"]},
        {"urls": URLS[:2], "username": "4600:PA_one", "credential": 'a"b\\c'},
    ]
    assert ice_server_links(servers) == [
        '<stun:stun.huyen.vn>; rel="ice-server"',
        '<turn:turn.huyen.vn:3478?transport=udp>; rel="ice-server"; username="4600:PA_one"'
        '; credential="a\\"b\\\\c"; credential-type="password"',
        '<turn:turn.huyen.vn:3478?transport=tcp>; rel="ice-server"; username="4600:PA_one"'
        '; credential="a\\"b\\\\c"; credential-type="password"',
    ]


# -- settings ---------------------------------------------------------------------------


def test_turn_settings_from_the_environment_and_toml(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "CONFERENCE_TURN_SECRET": f" {SECRET}\n",
            "CONFERENCE_TURN_URLS": ", ".join(URLS),
            "CONFERENCE_TURN_TTL": "7200",
        }
    )
    assert settings.turn_secret == SECRET
    assert settings.turn_urls == URLS
    assert settings.turn_ttl == 7200
    assert SECRET not in repr(settings)
    assert load_settings(env={}).turn_ttl == 12 * 3600
    config = tmp_path / "conference.toml"
    config.write_text(f'turn_secret = "{SECRET}"\nturn_urls = ["turns:[2001:db8::1]:443"]\n')
    settings = load_settings(config, env={})
    assert settings.turn_urls == ["turns:[2001:db8::1]:443"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONFERENCE_TURN_SECRET": SECRET}, "turn_urls is not set"),
        ({"CONFERENCE_TURN_URLS": URLS[0]}, "turn_secret is not set"),
        ({"CONFERENCE_TURN_SECRET": "short", "CONFERENCE_TURN_URLS": URLS[0]}, "16 bytes"),
        ({"CONFERENCE_TURN_SECRET": "a b" * 8, "CONFERENCE_TURN_URLS": URLS[0]}, "spaces"),
        (
            {"CONFERENCE_TURN_SECRET": SECRET, "CONFERENCE_TURN_URLS": "stun:stun.huyen.vn"},
            "'stun:stun.huyen.vn' is not a turn: or turns: URL",
        ),
        (
            {"CONFERENCE_TURN_SECRET": SECRET, "CONFERENCE_TURN_URLS": "turn:user@host"},
            "not a turn: or turns: URL",
        ),
        ({"CONFERENCE_TURN_TTL": "10"}, "CONFERENCE_TURN_TTL: must be between 60 and 604800"),
    ],
)
def test_bad_turn_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings(env=env)
    assert SECRET not in str(caught.value)


# -- what clients get from a running server ------------------------------------------------


async def test_joined_and_whip_links_carry_fresh_credentials_per_participant(
    tmp_path: Path,
) -> None:
    server = start_server(
        tmp_path,
        env={
            "CONFERENCE_TURN_SECRET": SECRET,
            "CONFERENCE_TURN_URLS": ",".join(URLS),
            "CONFERENCE_TURN_TTL": "3600",
            "CONFERENCE_ICE_SERVERS": '[{"urls": ["stun:stun.huyen.vn:3478"]}]',
        },
    )
    try:
        async with aiohttp.ClientSession() as http:
            joined = []
            for identity in ("xa-a", "xa-b", "xa-a"):  # the third replaces the first
                ws = await http.ws_connect(f"ws://127.0.0.1:{server.port}/ws/meetings/m1")
                token = server.token(identity=identity)
                await ws.send_json({"type": "join", "version": 1, "token": token})
                message = await ws.receive_json(timeout=10)
                assert message["type"] == "joined", message
                joined.append(message)
            now = time.time()
            for message in joined:
                stun, turn = message["iceServers"]
                assert stun == {"urls": ["stun:stun.huyen.vn:3478"]}
                assert turn["urls"] == URLS
                expiry, user = turn["username"].split(":")
                assert user == message["participant"]["id"]
                assert now + 3600 - 15 <= int(expiry) <= now + 3600
                expected = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1)
                assert turn["credential"] == base64.b64encode(expected.digest()).decode()
            assert len({m["iceServers"][1]["username"] for m in joined}) == 3

            # WHIP: the answer's Link headers (RFC 9725, section 4.6), its own credential
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver(ToneAudioTrack(440.0), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            token = server.token(identity="obs-hall", role="chair")
            auth = {"Authorization": f"Bearer {token}"}
            async with http.post(
                f"{server.url}/whip/m1",
                data=pc.localDescription.sdp.encode(),
                headers=auth | {"Content-Type": "application/sdp"},
            ) as response:
                assert response.status == 201, await response.text()
                links = ", ".join(response.headers.getall("Link"))
                location = response.headers["Location"]
            whip_id = location.rsplit("/", 1)[1]
            assert '<stun:stun.huyen.vn:3478>; rel="ice-server"' in links
            assert links.count('rel="ice-server"; username="') == 3
            username = links.split('username="', 1)[1].split('"', 1)[0]
            assert username.endswith(f":{whip_id}")
            credential = links.split('credential="', 1)[1].split('"', 1)[0]
            expected = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1)
            assert credential == base64.b64encode(expected.digest()).decode()
            async with http.delete(f"{server.url}{location}", headers=auth) as response:
                assert response.status == 200
            await pc.close()
    finally:
        check_clean_exit(server)
    assert SECRET not in server.log()
