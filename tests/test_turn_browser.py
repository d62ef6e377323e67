"""TURN for the strictest firewalls, for real: coturn, per-participant credentials,
Chromium forced to relay.

coturn (Debian's ``coturn`` package, installed by .ci/run) runs on 127.0.0.1 with
``use-auth-secret`` and a ``static-auth-secret``: the TURN REST API.  The conference
server has the same secret (``turn_secret``) and hands each participant its own
expiring credential in ``joined`` (conference/turn.py).  Each Chromium page is forced
to ``iceTransportPolicy: "relay"`` (an init script wraps ``RTCPeerConnection``), as a
point that reaches nothing but the TURN server would be: media then flows only if
coturn accepted the participant's credential and relays to the server.

On this machine everything is on 127.0.0.1: coturn relays from 127.0.0.1 to the
server's host candidate 127.0.0.1, which coturn refuses unless ``allow-loopback-peers``
(a test setting only: docs/OPERATIONS.md).

TURN over TLS (``turns:``, port 443 in production): coturn also listens for TLS with a
self-signed certificate (conference/tls.py's), which Chromium checks like a web site's
and refuses (coturn logs "TLS/TCP socket buffer operation error"); the TLS case runs a
Chromium started with ``--ignore-certificate-errors``, as a real point trusts the
TURN server's real certificate.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint

from conference.tls import self_signed_certificate
from conference.turn import turn_credential

from .conftest import ServerProcess, check_clean_exit, start_server
from .test_browser import (
    browser,
    chromium,
    open_invitation,
    streams,
    wait_for_media,
    wait_js,
    wait_until,
)

__all__ = ["browser"]

pytestmark = pytest.mark.slow

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
if not Path(TURNSERVER).exists():  # pragma: no cover - .ci/run installs it
    pytest.skip(
        "coturn is not installed (apt-get install coturn: .ci/run does)", allow_module_level=True
    )

TURN_SECRET = "turn-static-auth-secret-" + "y" * 20
REALM = "conference.test"

# every peer connection of the page relays through TURN, whatever the page asks for
FORCE_RELAY = """(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(config = {}, ...rest) {
      super({ ...config, iceTransportPolicy: "relay" }, ...rest);
    }
  };
})();"""

# the selected candidate pair of a page's connection (publisher or subscriber)
SELECTED_JS = """async (which) => {
  const pc = window.conference && window.conference[which];
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
    local: {type: local.candidateType, address: local.address, relayProtocol: local.relayProtocol,
            url: local.url},
    remote: {type: remote.candidateType, address: remote.address, port: remote.port},
    policy: pc.getConfiguration().iceTransportPolicy,
    sdpCandidates: (pc.localDescription.sdp.match(/a=candidate:[^\\r]*/g) || [])};
}"""


@dataclass
class Coturn:
    port: int
    log_file: Path
    process: subprocess.Popen[bytes]
    tls_port: int = 0

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def urls(self, transports: tuple[str, ...] = ("udp", "tcp")) -> str:
        """``udp``, ``tcp``: TURN; ``tls``: TURN over TLS (TCP)."""
        return ",".join(
            f"turns:127.0.0.1:{self.tls_port}?transport=tcp"
            if t == "tls"
            else f"turn:127.0.0.1:{self.port}?transport={t}"
            for t in transports
        )


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    port, tls_port = free_port(), free_port()
    folder = tmp_path / "coturn"
    folder.mkdir()
    cert, key = self_signed_certificate(folder, ["127.0.0.1"])
    log_file = folder / "turn.log"
    config = folder / "turnserver.conf"
    config.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                f"listening-port={port}",
                f"tls-listening-port={tls_port}",
                f"cert={cert}",
                f"pkey={key}",
                "relay-ip=127.0.0.1",
                "use-auth-secret",
                f"static-auth-secret={TURN_SECRET}",
                f"realm={REALM}",
                "fingerprint",
                "no-dtls",
                "no-cli",
                "no-multicast-peers",
                # the conference server's candidate is 127.0.0.1 here: a test setting only
                "allow-loopback-peers",
                f"userdb={folder / 'turndb'}",
                f"pidfile={folder / 'turnserver.pid'}",
                f"log-file={log_file}",
                "simple-log",
                "verbose",
                "",
            ]
        )
    )
    output = open(folder / "stdout.txt", "wb")
    process = subprocess.Popen(
        [TURNSERVER, "-c", str(config)], stdout=output, stderr=subprocess.STDOUT, cwd=folder
    )
    server = Coturn(port, log_file, process, tls_port)
    try:
        deadline = time.monotonic() + 10
        ready = (
            f"UDP listener opened on: 127.0.0.1:{port}",
            f"TLS/TCP listener opened on : 127.0.0.1:{tls_port}",
        )
        while not all(line in server.log() for line in ready):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"turnserver did not start (exit {process.poll()}):\n{server.log()[-3000:]}"
                    + (folder / "stdout.txt").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


def turn_env(
    coturn: Coturn, secret: str, transports: tuple[str, ...] = ("udp", "tcp")
) -> dict[str, str]:
    return {
        "CONFERENCE_TURN_SECRET": secret,
        "CONFERENCE_TURN_URLS": coturn.urls(transports),
        "CONFERENCE_TURN_TTL": "3600",
    }


def enter(browser: Any, server: ServerProcess, identity: str, name: str) -> Any:
    """A point's page, relay only, in the room."""
    page = open_invitation(browser, server, identity, name, init_script=FORCE_RELAY)
    page.click("#join:not([disabled])")
    page.wait_for_selector("#room:not([hidden])")
    return page


def selected(page: Any, which: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = page.evaluate(SELECTED_JS, which)
    return found if found and found["state"] == "succeeded" else None


async def test_coturn_checks_the_credential_and_its_expiry(coturn: Coturn) -> None:
    """coturn takes conference/turn.py's credential, and refuses one made with another
    secret or an expired one; aioice's TURN client.  The ``turn_ttl`` trade-off: coturn
    checks the expiry when an allocation is made, not after (an allocation made in time
    keeps relaying, and binds new channels, with its credential expired)."""
    server = ("127.0.0.1", coturn.port)
    short = turn_credential(TURN_SECRET, "PA_short", 2)
    expires = time.time() + 2
    early, _ = await create_turn_endpoint(asyncio.DatagramProtocol, server, *short)
    username, credential = turn_credential(TURN_SECRET, "PA_aioice", 600)
    for transport in ("udp", "tcp"):
        relay, _ = await create_turn_endpoint(
            asyncio.DatagramProtocol, server, username, credential, transport=transport
        )
        assert relay.get_extra_info("sockname")[0] == "127.0.0.1"
        relay.close()
    refused = [
        turn_credential(TURN_SECRET, "PA_late", 60, now=time.time() - 61),  # expired
        (username, turn_credential("another-secret-" + "q" * 20, "PA_aioice", 600)[1]),
    ]
    for username, credential in refused:
        with pytest.raises(TransactionFailed, match="401"):
            await create_turn_endpoint(asyncio.DatagramProtocol, server, username, credential)

    # past its expiry, the early allocation still relays (a new channel to a new peer:
    # an authenticated CHANNEL_BIND), while the same credential allocates no more
    await asyncio.sleep(max(0.0, expires - time.time()) + 1.1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        early.sendto(b"after the expiry", peer.getsockname())
        received = asyncio.get_running_loop().sock_recvfrom(peer, 100)
        assert (await asyncio.wait_for(received, 5))[0] == b"after the expiry"
    early.close()
    with pytest.raises(TransactionFailed, match="401"):
        await create_turn_endpoint(asyncio.DatagramProtocol, server, *short)

    log = coturn.log()
    assert re.search(r"user <\d+:PA_aioice>: incoming packet ALLOCATE processed, success", log)
    assert re.search(r"Cannot find credentials of user <\d+:PA_late>", log)
    assert re.search(r"user <\d+:PA_short>: incoming packet CHANNEL_BIND processed, success", log)


@pytest.mark.parametrize("transports", [("udp",), ("tcp",), ("tls",)], ids=["udp", "tcp", "tls"])
def test_media_flows_through_coturn_with_per_participant_credentials(
    tmp_path: Path, coturn: Coturn, transports: tuple[str, ...]
) -> None:
    """Relayed media both ways, over TURN/UDP, over TURN/TCP (a firewall that lets no
    UDP out), or over TURN over TLS (one that lets only TLS out, on 443 in production).
    One transport at a time: with all the URLs, as a deployment gives them, Chromium
    may select any."""
    server = start_server(tmp_path, env=turn_env(coturn, TURN_SECRET, transports))
    # the TLS case: coturn's certificate is self-signed here
    trusting = ("--ignore-certificate-errors",) if transports == ("tls",) else ()
    try:
        with chromium(tmp_path, trusting) as browser:
            relayed_both_ways(server, coturn, browser, transports)
    finally:
        check_clean_exit(server)


def relayed_both_ways(
    server: ServerProcess, coturn: Coturn, browser: Any, transports: tuple[str, ...]
) -> None:
    """Two relay-only pages exchange media through coturn on ``transports``, each with
    its own credential."""
    names = {"huyen": "UBND huyện Đắk Glong", "xa-quang-son": "UBND xã Quảng Sơn"}
    pages = {identity: enter(browser, server, identity, name) for identity, name in names.items()}
    usernames = {}
    for identity, page in pages.items():
        me = page.evaluate("window.conference.me.id")
        servers = page.evaluate("window.conference.iceServers")
        assert TURN_SECRET not in str(servers)
        (turn,) = [s for s in servers if s["urls"][0].startswith(("turn:", "turns:"))]
        assert turn["urls"] == coturn.urls(transports).split(",")
        expiry, user = turn["username"].split(":")
        assert user == me and 0 < int(expiry) - time.time() <= 3600
        usernames[identity] = turn["username"]

    # each page decodes the other's camera and hears its microphone: both ways, relayed
    for identity, page in pages.items():
        wait_for_media(page, server, 1, 1, f"relayed media on {identity}", timeout=25)
        for which in ("publisher", "subscriber"):
            pair = wait_until(lambda: selected(page, which), 10, f"{which} pair of {identity}")  # noqa: B023
            assert pair["policy"] == "relay", pair
            assert pair["local"]["type"] == "relay", pair
            assert pair["local"]["url"] == coturn.urls(transports), pair
            assert pair["local"]["relayProtocol"] == transports[0], pair
            assert pair["remote"]["type"] == "host", pair  # the server itself
            # the publisher sends media over it, the subscriber receives
            moved = pair["bytesSent" if which == "publisher" else "bytesReceived"]
            assert moved > 0, pair
            # the page offered nothing but relay candidates
            assert pair["sdpCandidates"], pair
            assert all(" typ relay" in line for line in pair["sdpCandidates"]), pair
        assert not page.errors, page.errors

    # coturn checked each participant's own credential: an allocation in its name
    log = coturn.log()
    for identity, username in usernames.items():
        allocated = re.search(
            rf"user <{re.escape(username)}>: incoming packet ALLOCATE processed, success", log
        )
        assert allocated, f"no allocation for {identity} ({username}):\n{log[-4000:]}"
    assert TURN_SECRET not in server.log()
    for page in pages.values():
        page.context.close()


def test_a_wrong_secret_gets_no_relay(tmp_path: Path, coturn: Coturn, browser: Any) -> None:
    """The conference server's secret is not coturn's: coturn refuses the credential,
    a relay-only page gets no media path, and the page says it is reconnecting."""
    env = turn_env(coturn, "not-the-coturn-secret-" + "z" * 20) | {
        "CONFERENCE_CONNECT_TIMEOUT": "4"
    }
    server = start_server(tmp_path, env=env)
    try:
        page = enter(browser, server, "xa-dak-ha", "UBND xã Đắk Ha")
        username = page.evaluate("window.conference.iceServers")[0]["username"]
        wait_until(
            lambda: re.search(rf"user <{re.escape(username)}>.*401", coturn.log()),
            10,
            "coturn refusing the credential",
        )
        wait_js(page, "window.conference.reconnects > 0", timeout=20)
        assert page.is_visible("#reconnecting")
        assert selected(page, "publisher") is None
        assert not [s for s in streams(page) if s["frames"] or s["energy"]]
        assert not page.errors, page.errors
        assert "success" not in coturn.log().split(username, 1)[-1].split("\n", 1)[0]
        page.context.close()
    finally:
        check_clean_exit(server)
