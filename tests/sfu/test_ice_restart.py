"""ICE restart on aiortc's objects (conference/sfu/bridge.py): a new ICE connection under
the same DTLS association, after the old path went dark (a point's network changed)."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from conference.sfu.bridge import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    begin_ice_restart,
    configure_ice_hosts,
    finish_ice_restart,
    ice_restart_offered,
    ice_restart_pending,
    wait_ice_restart,
    wire,
)


@pytest.fixture(autouse=True)
def loopback():
    configure_ice_hosts(["127.0.0.1"])


def _ice(pc):
    return pc.getTransceivers()[0].receiver.transport.transport


def go_dark(pc) -> None:
    """The network under ``pc``'s current ICE connection is gone: nothing arrives on its
    sockets any more (the same on both ends: neither hears the other)."""
    for protocol in _ice(pc)._connection._protocols:
        protocol.datagram_received = lambda *args, **kwargs: None


async def connected(offerer, answerer) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def restart(offerer, answerer, timeout: float = 20.0) -> None:
    """One ICE restart, offered by ``offerer``, as the server and the test client do it."""
    await begin_ice_restart(offerer, controlling=True, timeout=timeout)
    await offerer.setLocalDescription(await offerer.createOffer())
    assert ice_restart_offered(answerer, offerer.localDescription.sdp)
    await begin_ice_restart(answerer, controlling=False, timeout=timeout)
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    finish_ice_restart(answerer)
    await offerer.setRemoteDescription(answerer.localDescription)
    finish_ice_restart(offerer)


async def packets_in(receiver: ForwardingReceiver, seconds: float) -> int:
    before = receiver.packets_received
    await asyncio.sleep(seconds)
    return receiver.packets_received - before


def feed(sender: ForwardingSender) -> Callable[[], Awaitable[None]]:
    """Send an audio packet through ``sender`` every 20 ms (once it has started) until
    the returned function is awaited."""
    running = True

    async def run() -> None:
        seq = 0
        while running:
            seq += 1
            if sender.started:
                header = struct.pack(
                    "!BBHII", 0x80, sender.payload_type, seq & 0xFFFF, seq * 960, sender.ssrc
                )
                sender.send_rtp(header + bytes(40), 40)
            await asyncio.sleep(0.02)

    task = asyncio.ensure_future(run())

    async def stop() -> None:
        nonlocal running
        running = False
        await task

    return stop


async def viewing() -> tuple[Any, Any, ForwardingSender, Any, Callable[[], Awaitable[None]]]:
    """A subscriber connection as the server makes it (the server offers, so it controls
    ICE) with an audio stream flowing to the viewer: (server, viewer, the server's
    sender, the viewer's receiver, the function that stops the stream)."""
    server = ForwardingPeerConnection()
    viewer = ForwardingPeerConnection()
    sender = server.addTransceiver("audio", direction="sendonly").sender
    assert isinstance(sender, ForwardingSender)
    stop = feed(sender)
    await connected(server, viewer)
    receiver = viewer.getTransceivers()[0].receiver
    await wait_packets(receiver, 10)
    return server, viewer, sender, receiver, stop


async def wait_packets(receiver: ForwardingReceiver, count: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while receiver.packets_received < count:
        assert asyncio.get_running_loop().time() < deadline, receiver.packets_received
        await asyncio.sleep(0.05)


async def test_media_resumes_on_a_new_path_under_the_same_dtls_session():
    publisher = RTCPeerConnection()
    server = ForwardingPeerConnection()
    publisher.addTrack(AudioStreamTrack())
    try:
        await connected(publisher, server)
        receiver = server.getTransceivers()[0].receiver
        await wait_packets(receiver, 20)
        dtls, srtp = receiver.transport, receiver.transport._rx_srtp
        old = _ice(server)._connection
        old_ufrag = old.local_username
        # both ends lose the path (the point moved to another network)
        go_dark(publisher)
        go_dark(server)
        await asyncio.sleep(0.2)
        assert await packets_in(receiver, 0.5) == 0
        await restart(publisher, server)
        assert ice_restart_pending(server)
        # RTCP (reports, NACK, PLI, transport-cc) stays on the path media takes
        assert wire(dtls)._nominated is old._nominated
        assert await wait_ice_restart(publisher) and await wait_ice_restart(server)
        assert not ice_restart_pending(server)
        assert await packets_in(receiver, 1.0) >= 30  # 50 packets a second of audio
        receiver._send_receiver_report()  # and moves with it
        assert wire(dtls)._pair is _ice(server)._connection._nominated[1]
        # the same DTLS association and SRTP session; a new ICE connection, the old closed
        assert receiver.transport is dtls and dtls._rx_srtp is srtp and dtls.state == "connected"
        new = _ice(server)._connection
        assert new is not old and new.local_username != old_ufrag and old._closed
        assert new._conference_fast_ingress  # packets still skip aiortc's receive task
        assert server.connectionState == publisher.connectionState == "connected"
        # a renegotiation with the same credentials is no restart
        await publisher.setLocalDescription(await publisher.createOffer())
        assert not ice_restart_offered(server, publisher.localDescription.sdp)
    finally:
        await publisher.close()
        await server.close()


async def test_forwarded_packets_follow_the_new_path():
    """The server's fast send path (a ForwardingSender writing on the nominated pair's
    socket) moves to the new pair: a subscriber connection restarted by the server."""
    server, viewer, sender, receiver, stop = await viewing()
    try:
        go_dark(server)
        go_dark(viewer)
        await asyncio.sleep(0.2)
        assert await packets_in(receiver, 0.4) == 0
        sent_before = sender.packets_sent
        await restart(server, viewer)
        assert await wait_ice_restart(server)
        assert await packets_in(receiver, 1.0) >= 30
        assert sender.packets_sent > sent_before
        assert sender._pair is _ice(server)._connection._nominated[1]
    finally:
        await stop()
        await server.close()
        await viewer.close()


def test_in_place_ingress_moves_to_the_new_connection_on_the_servers_loop():
    """On the server's event loop (udp.py's transport) media is unprotected in place from
    the read buffer (``_BatchedDatagramTransport.media``); after a restart the new
    connection's sockets take over that hook and media flows on them."""
    from conference.sfu.udp import PortRangeEventLoop

    loop = PortRangeEventLoop()

    async def run() -> None:
        publisher = RTCPeerConnection()
        server = ForwardingPeerConnection()
        publisher.addTrack(AudioStreamTrack())
        try:
            await connected(publisher, server)
            receiver = server.getTransceivers()[0].receiver
            await wait_packets(receiver, 20)
            old = _ice(server)._connection
            assert all(p.transport.media is not None for p in old._protocols)
            go_dark(publisher)
            go_dark(server)
            for protocol in old._protocols:  # what arrives there is no more read in place
                protocol.transport.media = None
            await asyncio.sleep(0.2)
            assert await packets_in(receiver, 0.5) == 0
            await restart(publisher, server)
            assert await wait_ice_restart(publisher) and await wait_ice_restart(server)
            assert await packets_in(receiver, 1.0) >= 30
            new = _ice(server)._connection
            assert new is not old and new._conference_fast_ingress
            assert all(p.transport.media is not None for p in new._protocols)
            stock = new.data_received
            handed: list[int] = []

            def counted(data: bytes, component: int) -> None:
                handed.append(len(data))
                stock(data, component)

            new.data_received = counted
            assert await packets_in(receiver, 0.5) >= 15
            assert not handed  # every packet read in place
        finally:
            await publisher.close()
            await server.close()

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


async def test_a_second_restart_replaces_one_still_checking():
    """The network changed twice in a row (or the page asked again): the second restart
    takes over from the first, whose new connection is dropped; media comes back."""
    publisher = RTCPeerConnection()
    server = ForwardingPeerConnection()
    publisher.addTrack(AudioStreamTrack())
    try:
        await connected(publisher, server)
        receiver = server.getTransceivers()[0].receiver
        await wait_packets(receiver, 10)
        go_dark(publisher)
        go_dark(server)
        await begin_ice_restart(publisher, controlling=True)
        first = _ice(publisher)._connection
        await restart(publisher, server)  # begins again before the first was answered
        assert await wait_ice_restart(publisher) and await wait_ice_restart(server)
        assert _ice(publisher)._connection is not first and first._closed
        assert await packets_in(receiver, 1.0) >= 30
        # and the server side restarted twice: the first answer's checks are dropped too
        await restart(publisher, server)
        await restart(publisher, server)
        assert await wait_ice_restart(publisher) and await wait_ice_restart(server)
        assert await packets_in(receiver, 1.0) >= 30
        assert server.connectionState == "connected"
    finally:
        await publisher.close()
        await server.close()


async def test_a_restart_that_finds_no_path_fails_the_connection():
    publisher = RTCPeerConnection()
    server = ForwardingPeerConnection()
    publisher.addTrack(AudioStreamTrack())
    states: list[str] = []
    server.on("connectionstatechange", lambda: states.append(server.connectionState))
    try:
        await connected(publisher, server)
        await wait_packets(server.getTransceivers()[0].receiver, 5)
        old = _ice(server)._connection
        await begin_ice_restart(publisher, controlling=True)
        await publisher.setLocalDescription(await publisher.createOffer())
        await begin_ice_restart(server, controlling=False, timeout=1.0)
        go_dark(server)  # the new connection's checks go nowhere either
        go_dark(publisher)
        await server.setRemoteDescription(publisher.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        finish_ice_restart(server)
        assert not await wait_ice_restart(server)
        for _ in range(50):
            if "failed" in states or "closed" in states:
                break
            await asyncio.sleep(0.05)
        assert "failed" in states  # the participant then rejoins
        assert old._closed and _ice(server)._connection._closed
    finally:
        await publisher.close()
        await server.close()


async def test_a_restart_never_answered_fails_after_its_timeout():
    """The server offered a restart and the point never answered (it is gone, or
    rejoining): the connection does not hang on the old path without consent checks."""
    publisher = RTCPeerConnection()
    server = ForwardingPeerConnection()
    publisher.addTrack(AudioStreamTrack())
    try:
        await connected(publisher, server)
        await wait_packets(server.getTransceivers()[0].receiver, 5)
        await begin_ice_restart(server, controlling=True, timeout=0.5)
        assert not await wait_ice_restart(server)
        for _ in range(50):
            if server.connectionState in ("failed", "closed"):
                break
            await asyncio.sleep(0.05)
        assert server.connectionState in ("failed", "closed")
    finally:
        await publisher.close()
        await server.close()


async def test_closing_during_a_restart_closes_both_connections():
    publisher = RTCPeerConnection()
    server = ForwardingPeerConnection()
    publisher.addTrack(AudioStreamTrack())
    try:
        await connected(publisher, server)
        await wait_packets(server.getTransceivers()[0].receiver, 5)
        old = _ice(server)._connection
        await begin_ice_restart(server, controlling=True)
        new = _ice(server)._connection
        assert not old._closed and old._protocols and new._protocols
        await asyncio.wait_for(server.close(), 5)
        assert old._closed and new._closed and not old._protocols and not new._protocols
    finally:
        await publisher.close()
        await server.close()


async def test_nothing_to_restart_before_the_connection_is_up():
    pc = ForwardingPeerConnection()
    pc.addTransceiver("audio")
    try:
        with pytest.raises(ConnectionError):
            await begin_ice_restart(pc, controlling=True)
        assert not ice_restart_offered(pc, "v=0\r\na=ice-ufrag:abcd\r\n")
    finally:
        await pc.close()


async def test_the_controlling_end_moves_to_a_path_that_answers(monkeypatch, caplog):
    """A subscriber connection (the server offers, so it controls ICE and alone nominates)
    whose nominated path stops answering while the viewer still has another address:
    the server's failed consent check tries the other pairs and nominates the first that
    answers; media goes on there, without an ICE restart and without waiting for consent
    to expire (a PC's second interface went away while its other one carries on)."""
    configure_ice_hosts(["127.0.0.1", "127.0.0.2"])
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 1)
    caplog.set_level(logging.INFO, logger="conference.sfu.bridge")
    server, viewer, sender, receiver, stop = await viewing()
    try:
        connection = _ice(server)._connection
        assert connection.ice_controlling
        old = connection._nominated[1]
        # the viewer's address on that path is gone: nothing arrives there any more
        dead = old.remote_addr
        for protocol in _ice(viewer)._connection._protocols:
            if protocol.local_candidate.host == dead[0]:
                protocol.datagram_received = lambda *args, **kwargs: None
        await asyncio.sleep(0.2)
        assert await packets_in(receiver, 0.4) == 0
        deadline = asyncio.get_running_loop().time() + 15
        while connection._nominated[1] is old:
            assert asyncio.get_running_loop().time() < deadline, "still on the dead path"
            await asyncio.sleep(0.1)
        new = connection._nominated[1]
        assert new.remote_addr[0] != dead[0]
        assert await packets_in(receiver, 1.0) >= 30  # 50 packets a second
        assert sender._pair is new
        assert server.connectionState == viewer.connectionState == "connected"
        assert "stopped answering; moved to" in caplog.text
    finally:
        await stop()
        await server.close()
        await viewer.close()
        configure_ice_hosts(["127.0.0.1"])
