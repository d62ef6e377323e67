"""The one module that touches aiortc's internals.

aiortc's public API decodes every track it receives and encodes every track it
sends.  An SFU must do neither: it takes RTP packets after SRTP decryption and
hands them on.  This module keeps aiortc for what it does well (SDP
offer/answer, ICE, DTLS, SRTP, the RTP/RTCP router of a bundled transport) and
replaces the two objects on the media path:

* :class:`ForwardingReceiver` stands in for ``RTCRtpReceiver``: no jitter
  buffer, no decoder thread.  It unwraps RTX, keeps reception statistics,
  NACKs upstream loss, sends receiver reports and REMB to the publisher, and
  hands every packet to a :class:`PacketSink` (a Publication).
* :class:`ForwardingSender` stands in for ``RTCRtpSender``: no track, no
  encoder.  It sends the bytes a Subscription gives it, reports sender reports,
  and passes NACK, PLI/FIR and REMB from the subscriber to a
  :class:`FeedbackSink` (a Subscription).

:class:`ForwardingPeerConnection` is an ``RTCPeerConnection`` whose transceivers
are built with these two classes.  It hooks the (name-mangled) private method
``RTCPeerConnection.__createTransceiver``; the tests in
``tests/sfu/test_bridge.py`` pin the behaviour so that an aiortc upgrade that
changes it fails loudly.  The aiortc version is pinned in ``pyproject.toml``.

The last section, *client-side hooks*, is not used by the server: it lets the
load tester's simulated points (stock ``RTCRtpSender`` s sending pre-encoded
media) behave like a browser: a keyframe on PLI, RFC 6464 audio levels on
pre-encoded Opus, no receive-side bandwidth estimator, and a header-only receive
(`header_ingress`: the load tester's checks need only each packet's RTP header, which
SRTP leaves in the clear).

Everything else in ``conference/`` must use only what this module exports.

Size: over 600 lines on purpose: every aiortc internal the SFU touches is here and nowhere
else (docs/ARCHITECTURE.md), so an aiortc upgrade is checked against one file.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import operator
import random
import struct
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, Protocol, cast

import aioice
import aioice.ice
import aioice.stun
import aioice.turn
import aiortc.rtcdtlstransport as _rtcdtlstransport
import aiortc.rtcpeerconnection as _rtcpeerconnection
import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    clock,
)
from aiortc import clock as _clock
from aiortc.codecs import CODECS, HEADER_EXTENSIONS, get_capabilities
from aiortc.exceptions import InvalidStateError
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsTransport,
    RtpRouter,
    SRTPProtectionProfile,
)
from aiortc.rtcdtlstransport import State as _DtlsState
from aiortc.rtcicetransport import RTCIceCandidate
from aiortc.rtcrtpparameters import (
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    HeaderExtensions,
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from aiortc.sdp import candidate_from_sdp
from aiortc.stats import RTCOutboundRtpStreamStats, RTCStatsReport
from OpenSSL import SSL as _pyopenssl

from . import red, sysdtls
from .nack import NackTracker
from .rtpwire import build_rtp_with_block
from .simulcast import REPAIRED_RID_URI, RID_URI
from .twcc import TWCC_URI, FeedbackRecorder
from .udp import RECEIVE_BUFFER

__all__ = [
    "ABS_SEND_TIME_URI",
    "AUDIO_LEVEL_URI",
    "MID_URI",
    "FeedbackSink",
    "ForwardingPeerConnection",
    "HeaderSink",
    "ForwardingReceiver",
    "ForwardingSender",
    "PacketSink",
    "SystemDtlsCertificate",
    "accept_transport_cc",
    "begin_ice_restart",
    "finish_ice_restart",
    "ice_restart_offered",
    "ice_restart_pending",
    "local_ice_ufrag",
    "wait_ice_restart",
    "RtpPacket",
    "RTCSessionDescription",
    "announce_address",
    "attach_audio_levels",
    "codec_capability",
    "configure_ice_hosts",
    "datagram_reader",
    "honour_keyframe_requests",
    "ice_candidate_from_json",
    "light_receiver",
    "ntp_now",
    "system_dtls",
]

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
RTCP_INTERVAL = 1.0
NACK_INTERVAL = 0.02
#: a compound RTCP packet that the load tester's points send (`TransportReports`) stays
#: under this many bytes (SRTCP adds its trailer; libsrtp refuses more than it can hold)
RTCP_DATAGRAM = 1200
#: report blocks in one receiver report (its count field has five bits)
RR_BLOCKS = 31
#: the periodic reports of `RtcpClock` run at most this often (seconds)
RTCP_TICK = 0.05
#: a header-only receiver (`header_ingress`) still takes one packet in this many of a
#: stream through SRTP unprotect: libsrtp estimates each packet's index (its rollover
#: counter) from the last one it authenticated, and is right only within 2^15 of it
HEADER_REFRESH = 1024
#: SRTP authentication tag of each DTLS-SRTP profile (bytes after the payload)
_SRTP_TAG = {
    b"SRTP_AEAD_AES_256_GCM": 16,
    b"SRTP_AEAD_AES_128_GCM": 16,
    b"SRTP_AES128_CM_SHA1_80": 10,
    b"SRTP_AES128_CM_SHA1_32": 4,
}
#: REMB is sent at most this often (ms) unless the estimate drops (as libwebrtc does)
REMB_INTERVAL_MS = 200
#: a drop below this share of the last REMB sent goes out at once
REMB_DROP = 0.97


def ntp_now() -> int:
    """The current time as a 64-bit NTP timestamp."""
    now = time.time() + NTP_EPOCH_OFFSET
    seconds = int(now)
    return (seconds << 32) | int((now - seconds) * (1 << 32))


def configure_ice_hosts(addresses: Iterable[str]) -> None:
    """Restrict the host candidates of every ICE agent in this process.

    aioice gathers one host candidate per interface address and leaves
    127.0.0.1 out.  A server must be able to say which addresses it uses (the
    public interface, or 127.0.0.1 in tests).  An empty list restores aioice's
    own choice.
    """
    chosen = list(addresses)
    original = getattr(aioice.ice, "_conference_original_get_host_addresses", None)
    if original is None:
        original = aioice.ice.get_host_addresses
        aioice.ice._conference_original_get_host_addresses = original  # type: ignore[attr-defined]
    if not chosen:
        aioice.ice.get_host_addresses = original
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


#: STUN retransmissions of an ICE consent check (RFC 7675): 2 = sent at 0, 0.5 and
#: 1.5 s, failed after 3.5 s (aioice sends one and fails it after 0.5 s)
CONSENT_RETRANSMISSIONS = 2
#: failed consent checks in a row after which the connection is closed (aioice: 6)
CONSENT_FAILURES = 4


def patient_consent_checks() -> None:
    """Let ICE consent checks wait for a late answer (applied on import).

    aioice checks consent every ~5 s with a single STUN request that fails
    after 0.5 s without retransmission, and closes the connection after six
    failures in a row.  A busy peer (a chair receiving forty points, a laptop,
    a load-test process) answers late behind its own media backlog: each
    check fails, the connection closes although both ends are alive, and with
    it the whole subscriber connection (seen in every 40-point load test on a
    busy machine: ``Consent to send expired``).  Consent checks are the only
    requests aioice sends with ``retransmissions=0``; this gives them
    :data:`CONSENT_RETRANSMISSIONS`, as any STUN transaction has, and expires
    consent after four failed checks instead of six, so that a dead peer is
    still given up after ~34 s (4 x (5 + 3.5)), near RFC 7675's 30 s.  On a
    connection we control, a failed check first tries the other pairs
    (`_another_path`): a dead peer with other candidates is given up after ~48 s.
    """
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES
    if getattr(StunProtocol.request, "_conference_patient", False):
        return
    original = StunProtocol.request

    async def request(
        self: StunProtocol,
        request: Any,
        addr: tuple[str, int],
        integrity_key: bytes | None = None,
        retransmissions: int | None = None,
    ) -> Any:
        if retransmissions != 0:
            return await original(self, request, addr, integrity_key, retransmissions)
        try:
            return await original(self, request, addr, integrity_key, CONSENT_RETRANSMISSIONS)
        except aioice.stun.TransactionError:
            try:
                moved = await _another_path(self, addr, integrity_key, original)
            except Exception:  # never let the search end the consent checks
                logger.warning("ICE: looking for another path failed", exc_info=True)
                moved = None
            if moved is None:
                raise
            return moved

    request._conference_patient = True  # type: ignore[attr-defined]
    StunProtocol.request = request  # type: ignore[method-assign]


async def _another_path(
    protocol: StunProtocol, addr: tuple[str, int], key: bytes | None, send: Any
) -> Any:
    """After a failed consent check on the nominated pair of a connection we control,
    the pair that answers a check first among the others our candidates and the peer's
    make, now nominated (USE-CANDIDATE), with its answer; None if none answers.

    The controlling end alone nominates, and aioice never nominates again: when the
    peer's address on the nominated pair vanished (a PC's second interface went away)
    but the peer has others, it stays connected on its side (its checks on another pair
    are answered) and would restart nothing, while media went to the vanished address
    until consent expired and the session ended.  The server controls every subscriber
    connection (it offers them)."""
    connection = getattr(protocol, "receiver", None)
    if connection is None or not getattr(connection, "ice_controlling", False) or not key:
        return None
    nominated = connection._nominated.get(1)
    if nominated is None or nominated.protocol is not protocol or nominated.remote_addr != addr:
        return None  # not the nominated pair's consent check (or it moved meanwhile)
    pairs = []
    for local in connection._protocols:
        transport = getattr(local, "transport", None)
        closing = getattr(transport, "is_closing", None)  # (a TURN transport has none)
        if transport is None or (closing is not None and closing()):
            continue
        if local.local_candidate.component != 1:
            continue
        for remote in connection._remote_candidates:
            if remote.component != 1 or not local.local_candidate.can_pair_with(remote):
                continue
            if local is protocol and (remote._network_host, remote.port) == addr:
                continue  # the pair that stopped answering
            pairs.append(
                connection._find_pair(local, remote) or aioice.ice.CandidatePair(local, remote)
            )
    if not pairs:
        return None

    async def check(pair: Any) -> tuple[Any, Any]:
        message = connection.build_request(pair, nominate=True)
        response = await send(
            pair.protocol, message, pair.remote_addr, key, CONSENT_RETRANSMISSIONS
        )
        return pair, response

    tasks = [asyncio.ensure_future(check(pair)) for pair in pairs]
    try:
        for done in asyncio.as_completed(tasks):
            try:
                pair, response = await done
            except (aioice.stun.TransactionError, OSError, ConnectionError):
                continue
            if connection._nominated.get(1) is not nominated:
                return None  # moved meanwhile (an ICE restart, another check)
            pair.state = aioice.ice.CandidatePair.State.SUCCEEDED
            pair.nominated = pair.remote_nominated = True
            if pair not in connection._check_list:
                connection._check_list.append(pair)
            connection._nominated[1] = pair
            logger.info(
                "ICE: the nominated path %s stopped answering; moved to %s", nominated, pair
            )
            return response
        return None
    finally:
        for task in tasks:
            task.cancel()


patient_consent_checks()


def large_ice_receive_buffers() -> None:
    """Keep the large UDP receive buffers of our event loop (applied on import).

    :class:`conference.sfu.udp.BatchedUdpEventLoop` asks for
    :data:`~conference.sfu.udp.RECEIVE_BUFFER` on every UDP socket, but aioice
    sets ``SO_RCVBUF`` to its own 256 KiB right after binding each host
    candidate, so every ICE socket had 512 KiB (the kernel doubles it): a
    simulated chair receiving forty points (~4,000 datagrams/s, ~2.3 KB of
    buffer each) overflowed it whenever its process paused for ~50 ms, and
    the kernel dropped datagrams the server had sent.  aioice reads the size
    from ``aioice.turn.UDP_SOCKET_BUFFER_SIZE`` at run time.  The kernel caps
    it at ``net.core.rmem_max`` (docs/OPERATIONS.md).
    """
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = max(aioice.turn.UDP_SOCKET_BUFFER_SIZE, RECEIVE_BUFFER)


large_ice_receive_buffers()


def media_datagrams_skip_stun() -> None:
    """Hand RTP and RTCP datagrams on without trying them as STUN (applied on import).

    aioice's ``StunProtocol.datagram_received`` parses every datagram as a STUN
    message and passes it on when the parse raises ``ValueError``: one exception per
    media packet, on the server and on every simulated point.  STUN messages start
    with two zero bits (RFC 5389), RTP and RTCP with version 2 (first byte 128-191,
    RFC 7983), so those go to the connection at once; everything else keeps aioice's
    path.
    """
    stock = StunProtocol.datagram_received
    if getattr(stock, "_conference_media_first", False):
        return

    def datagram_received(self: StunProtocol, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if type(data) is bytes and data and 127 < data[0] < 192 and self.receiver is not None:
            self.receiver.data_received(data, self.local_candidate.component)
            return
        stock(self, data, addr)

    datagram_received._conference_media_first = True  # type: ignore[attr-defined]
    StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]


media_datagrams_skip_stun()


#: header-extension IDs we offer for the RID extensions (a browser's offer brings its own)
RID_EXTENSION_ID = 10
REPAIRED_RID_EXTENSION_ID = 11
TWCC_EXTENSION_ID = 12
#: transport-cc feedback goes out at most this often (seconds), on the next packet
TWCC_INTERVAL = 0.1


def accept_rid_extensions() -> None:
    """Let aiortc negotiate the RID and repaired-RID header extensions (on import).

    aiortc answers only the header extensions it lists in
    ``aiortc.codecs.HEADER_EXTENSIONS``; without these two, a browser's
    simulcast layers could not be told apart (``conference.sfu.simulcast``).
    aiortc's RTP parser already reads both into ``packet.extensions``.  The
    transport-wide sequence number extension is accepted too: with it the
    publisher's own bandwidth estimator runs on our transport-cc feedback
    (:class:`TransportFeedback`, :func:`accept_transport_cc`).
    """
    video = HEADER_EXTENSIONS["video"]
    known = {extension.uri for extension in video}
    for uri, ext_id in (
        (RID_URI, RID_EXTENSION_ID),
        (REPAIRED_RID_URI, REPAIRED_RID_EXTENSION_ID),
        (TWCC_URI, TWCC_EXTENSION_ID),
    ):
        if uri not in known:
            video.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


accept_rid_extensions()

#: Opus format parameters the server offers and answers (RFC 7587)
OPUS_PARAMETERS: dict[str, str | int | None] = {"minptime": 10, "useinbandfec": 1, "usedtx": 1}


def resilient_opus() -> None:
    """Negotiate Opus in-band FEC and DTX (applied on import).

    aiortc offers and answers Opus without format parameters, so a browser
    sends neither forward error correction (a lost 20 ms frame is rebuilt from
    the next packet: what keeps speech intelligible at a few per cent loss)
    nor discontinuous transmission (a silent microphone sends a packet every
    400 ms instead of 50 a second: a hundred muted communes stop costing the
    server and every receiver ~30 kbit/s each).  The sender decides from the
    other side's ``a=fmtp``, so the server's SDP carries both, towards
    publishers and subscribers.  The recorder and the composition follow
    packet timestamps, so DTX gaps stay silent gaps.
    """
    for codec in CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            for key, value in OPUS_PARAMETERS.items():
                codec.parameters.setdefault(key, value)


resilient_opus()

#: RED's payload type in the server's own offers (Chromium's choice too)
RED_PAYLOAD_TYPE = 63


def accept_red() -> None:
    """Let aiortc negotiate RED audio, ``red/48000/2`` (RFC 2198; applied on import).

    It goes *last* among the audio codecs: an answer follows the offer's order
    and a sender sends the first codec, so only a side that asks for RED first
    gets it (the room page does; aiortc clients, which cannot encode or
    decode RED, never do).  Its format parameter names the Opus payload type
    it carries: aiortc's own (96) in the server's offers,
    :meth:`ForwardingPeerConnection.red_follows_opus` fixes it in answers.
    """
    audio = CODECS["audio"]
    if any(codec.mimeType.lower() == "audio/red" for codec in audio):
        return
    opus = next(codec for codec in audio if codec.mimeType.lower() == "audio/opus")
    audio.append(
        RTCRtpCodecParameters(
            mimeType="audio/red",
            clockRate=48000,
            channels=2,
            payloadType=RED_PAYLOAD_TYPE,
            parameters={f"{opus.payloadType}/{opus.payloadType}": None},
        )
    )


accept_red()


# -- DTLS on the system's OpenSSL: FFmpeg's default certificate ---------------------

#: aiortc's DTLS cipher suites (``RTCCertificate._create_ssl_context``; test_bridge pins it)
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)


class SystemDtlsCertificate(RTCCertificate):
    """aiortc's certificate (same key, same fingerprint) whose DTLS runs on the
    system's OpenSSL 3 (:mod:`conference.sfu.sysdtls`) instead of the one bundled in
    ``cryptography``.

    FFmpeg's WHIP muxer signs its DTLS with an ECDSA P-224 key unless told
    otherwise; the bundled OpenSSL accepts a peer's key only on one of its groups and
    offers no P-224 any more.  The context has aiortc's settings (test_bridge checks
    them against aiortc's own method) plus the groups :data:`sysdtls.GROUPS`.
    """

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> Any:
        ctx = sysdtls.Context(sysdtls.DTLS_METHOD)
        ctx.set_options(sysdtls.OP_NO_TICKET)
        ctx.set_verify(sysdtls.VERIFY_PEER | sysdtls.VERIFY_FAIL_IF_NO_PEER_CERT)
        ctx.use_certificate(self._cert)
        ctx.use_privatekey(self._key)
        ctx.set_cipher_list(DTLS_CIPHERS)
        ctx.set_tlsext_use_srtp(b":".join(p.openssl_profile for p in srtp_profiles))
        ctx.set_groups(sysdtls.GROUPS)
        return ctx


class _EitherOpenSsl:
    """What aiortc's ``rtcdtlstransport`` module knows as ``SSL``: pyOpenSSL, except
    that a connection on a :class:`sysdtls.Context` is a :class:`sysdtls.Connection`.
    The exceptions aiortc catches (``SSL.WantReadError``, ``SSL.Error``...) are the
    same classes either way: sysdtls raises pyOpenSSL's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_pyopenssl, name)

    @staticmethod
    def Connection(context: Any, socket: Any = None) -> Any:  # noqa: N802 (pyOpenSSL's name)
        if isinstance(context, sysdtls.Context):
            return sysdtls.Connection(context)
        return _pyopenssl.Connection(context, socket)


def dtls_on_either_openssl() -> None:
    """Let aiortc's DTLS transport run on a :class:`SystemDtlsCertificate` (on import).

    ``RTCDtlsTransport.start`` makes its connection with ``SSL.Connection(context)``
    from the certificate's context; a stock certificate keeps pyOpenSSL's.
    """
    if not isinstance(_rtcdtlstransport.SSL, _EitherOpenSsl):
        _rtcdtlstransport.SSL = _EitherOpenSsl()  # type: ignore[assignment]


dtls_on_either_openssl()

_system_dtls_refused = False


def system_dtls() -> str | None:
    """The system's OpenSSL (``"OpenSSL 3.0.19 27 Jan 2026"``) when DTLS can run on it,
    else None; the first call that finds it unusable logs why, once."""
    global _system_dtls_refused
    library = sysdtls.load()
    if library is not None:
        return library.version_text
    if not _system_dtls_refused:
        _system_dtls_refused = True
        logger.warning(
            "DTLS: the system's OpenSSL 3 (libssl.so.3) cannot be used (%s): WHIP encoders "
            "get the bundled OpenSSL, which refuses FFmpeg's default P-224 certificate "
            "(FFmpeg then needs -cert_file/-key_file with a P-256 one)",
            sysdtls.unavailable_reason(),
        )
    return None


def with_system_dtls(certificate: RTCCertificate) -> RTCCertificate:
    """``certificate`` with its DTLS on the system's OpenSSL, or itself unchanged
    where that cannot be (:func:`system_dtls`)."""
    if system_dtls() is None:
        return certificate
    return SystemDtlsCertificate(key=certificate._key, cert=certificate._cert)


def announce_address(sdp: str, address: str | None) -> str:
    """Add a copy of each host candidate with ``address`` (1:1 NAT, cloud VMs).

    A server behind a static NAT knows its public address but only binds
    private ones; like mediasoup's ``announcedIp``, each host candidate is
    also offered with the public address and the same port (at a slightly
    lower priority), so remote points can reach it without STUN.
    """
    if not address:
        return sdp
    out: list[str] = []
    for line in sdp.split("\r\n"):
        out.append(line)
        if not line.startswith("a=candidate:") or " typ host" not in line:
            continue
        parts = line.split(" ")
        if len(parts) < 8 or parts[4] == address:
            continue
        parts[0] = "a=candidate:" + "p" + parts[0][len("a=candidate:") :]
        try:
            parts[3] = str(max(int(parts[3]) - 1, 0))
        except ValueError:
            continue
        parts[4] = address
        out.append(" ".join(parts))
    return "\r\n".join(out)


def codec_capability(kind: str, name: str) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for one codec name (e.g. ``VP8``), RTX included."""
    caps = get_capabilities(kind).codecs
    chosen = [c for c in caps if c.name.lower() == name.lower()]
    chosen += [c for c in caps if c.name.lower() == "rtx"]
    return chosen


def ice_candidate_from_json(data: dict[str, Any]) -> RTCIceCandidate | None:
    """Parse a browser's ``RTCIceCandidateInit``; ``None`` for end-of-candidates.

    Raises ``ValueError`` on malformed input.
    """
    line = data.get("candidate")
    if not isinstance(line, str):
        raise ValueError("candidate must be a string")
    if not line:
        return None
    if line.startswith("candidate:"):
        line = line[len("candidate:") :]
    try:
        candidate = candidate_from_sdp(line)
    except (ValueError, IndexError, AssertionError) as exc:  # aiortc asserts on bad input
        raise ValueError("malformed ICE candidate") from exc
    mid = data.get("sdpMid")
    index = data.get("sdpMLineIndex")
    candidate.sdpMid = mid if isinstance(mid, str) else None
    candidate.sdpMLineIndex = index if isinstance(index, int) else None
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0
    return candidate


_RTP_FIXED = struct.Struct("!BBHII")
_TWO_U16 = struct.Struct("!HH")
_CSRC = struct.Struct("!I")
#: every value of the RFC 6464 audio-level byte, as aiortc gives it: (voice, -dBov)
_AUDIO_LEVELS = [((byte & 0x80) == 0x80, byte & 0x7F) for byte in range(256)]
# the header extensions `parse_rtp` reads (codes of `LeanExtensionsMap.table`)
_EXT_MID, _EXT_RID, _EXT_RRID, _EXT_ABS, _EXT_TOFFSET, _EXT_LEVEL, _EXT_TWCC = range(7)
_new = object.__new__


class LeanExtensionsMap(HeaderExtensionsMap):
    """aiortc's header-extension map of a DTLS transport, plus :attr:`table` (the
    negotiated ID of each extension `parse_rtp` reads -> what it is), kept up to date
    by every ``configure`` (each registered sender and receiver).  `fast_ingress`
    swaps a transport's map to this class."""

    table: dict[int, int]
    #: `table` without MID, RID and repaired RID: for the packets of streams whose
    #: routing and layer are settled (`fast_ingress`), which need none of them
    lean: dict[int, int]
    #: the extension blocks' layouts of settled streams (`parse_rtp`), by SSRC; emptied
    #: whenever the IDs change
    layouts: dict[int, dict[int, _Layout]]

    def configure(self, parameters: Any) -> None:
        super().configure(parameters)
        self.refresh()

    def refresh(self) -> None:
        ids = self._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
        pairs = (
            (ids.mid, _EXT_MID),
            (ids.rtp_stream_id, _EXT_RID),
            (ids.repaired_rtp_stream_id, _EXT_RRID),
            (ids.abs_send_time, _EXT_ABS),
            (ids.transmission_offset, _EXT_TOFFSET),
            (ids.audio_level, _EXT_LEVEL),
            (ids.transport_sequence_number, _EXT_TWCC),
        )
        self.table = {x_id: code for x_id, code in pairs if x_id}
        self.lean = {
            x_id: code
            for x_id, code in self.table.items()
            if code not in (_EXT_MID, _EXT_RID, _EXT_RRID)
        }
        self.layouts = {}


def _extension(
    extensions: Any, code: int, data: bytes | memoryview, start: int, length: int
) -> None:
    """Set the field of aiortc's ``HeaderExtensions`` that extension ``code`` fills
    (as aiortc's own parser does; a value of a length the extension never has is
    ignored)."""
    if code == _EXT_TWCC:
        if length == 2:
            extensions.transport_sequence_number = (data[start] << 8) | data[start + 1]
    elif code == _EXT_LEVEL:
        if length == 1:
            extensions.audio_level = _AUDIO_LEVELS[data[start]]
    elif code == _EXT_ABS:
        if length == 3:
            extensions.abs_send_time = int.from_bytes(data[start : start + 3], "big")
    elif code == _EXT_MID:
        extensions.mid = str(data[start : start + length], "utf8")
    elif code == _EXT_RID:
        extensions.rtp_stream_id = str(data[start : start + length], "ascii")
    elif code == _EXT_RRID:
        extensions.repaired_rtp_stream_id = str(data[start : start + length], "ascii")
    elif code == _EXT_TOFFSET and length == 3:
        extensions.transmission_offset = int.from_bytes(data[start : start + 3], "big", signed=True)


#: a one-byte extension block's layout: a getter of its structural bytes (element
#: headers, padding, the ID-15 stop: ``operator.itemgetter`` of their places), their
#: values as it returns them, and the elements to read as (code, position, length)
_Layout = tuple[Callable[[Any], Any], Any, tuple[tuple[int, int, int], ...]]
#: the lengths of the extensions read inline (others go through `_extension`)
_INLINE_LENGTHS = {_EXT_TWCC: 2, _EXT_LEVEL: 1, _EXT_ABS: 3}


def _layout(data: bytes | memoryview, pos: int, end: int, table: dict[int, int]) -> _Layout | None:
    """The layout of the one-byte extension block in ``data[pos:end]`` (None: an
    element is truncated, the full parse raises)."""
    marks: list[tuple[int, int]] = []
    fields: list[tuple[int, int, int]] = []
    while pos < end:
        byte = data[pos]
        marks.append((pos, byte))
        if byte == 0:
            pos += 1
            continue
        if byte >> 4 == 15:
            break
        pos += 1
        length = (byte & 0x0F) + 1
        if pos + length > end:
            return None
        code = table.get(byte >> 4)
        if code is not None and _INLINE_LENGTHS.get(code, length) == length:
            fields.append((code, pos, length))
        pos += length
    places = [place for place, _ in marks]
    values = tuple(value for _, value in marks)
    return (operator.itemgetter(*places), values if len(values) > 1 else values[0], tuple(fields))


def parse_rtp(
    data: bytes | memoryview,
    table: dict[int, int],
    lean: dict[int, int] | None = None,
    settled: set[int] | frozenset[int] = frozenset(),
    layouts: dict[int, dict[int, _Layout]] | None = None,
) -> RtpPacket:
    """aiortc's ``RtpPacket.parse`` for the ingress path, about twice as fast.

    The same ``RtpPacket`` and ``HeaderExtensions`` come out (the test compares them
    on every shape of packet), made without their ``__init__`` and reading only the
    extensions in ``table`` (`LeanExtensionsMap`); RFC 8285's ID 15 ends the one-byte
    elements.  ``data`` may be a view of a buffer (the payload is copied out into
    bytes).  A packet of an SSRC in ``settled`` is read with ``lean`` instead (its
    MID and RIDs left None: they matter only for a stream's first packets), and, with
    ``layouts``, its one-byte extension block is checked against the layouts its
    stream's blocks had (the same structural bytes at the same places: the same
    parse) and read straight from the places the layout names.  Raises
    ValueError for a packet aiortc refuses (too short, not version 2, truncated
    CSRC, extension block or element, bad padding, a MID or RID that is not text).
    """
    size = len(data)
    if size < 12:
        raise ValueError("RTP packet length is less than 12 bytes")
    first, m_pt, sequence_number, timestamp, ssrc = _RTP_FIXED.unpack_from(data)
    if first & 0xC0 != 0x80:
        raise ValueError("RTP packet has invalid version")
    known: dict[int, _Layout] | None = None
    if lean is not None and ssrc in settled:
        table = lean
        if layouts is not None:
            known = layouts.get(ssrc)
            if known is None:
                known = layouts[ssrc] = {}
    pos = 12
    csrc: list[int] = []
    count = first & 0x0F
    if count:
        if size < 12 + 4 * count:
            raise ValueError("RTP packet has truncated CSRC")
        csrc = [_CSRC.unpack_from(data, 12 + 4 * i)[0] for i in range(count)]
        pos += 4 * count
    extensions = _new(HeaderExtensions)  # every field None (the class's defaults)
    if first & 0x10:
        if size < pos + 4:
            raise ValueError("RTP packet has truncated extension profile / length")
        profile, words = _TWO_U16.unpack_from(data, pos)
        pos += 4
        end = pos + 4 * words
        if end > size:
            raise ValueError("RTP packet has truncated extension value")
        layout: _Layout | None = None
        if known is not None and profile == 0xBEDE and pos < end:
            key = (pos << 24) | (words << 8) | data[pos]
            layout = known.get(key)
            if layout is not None and layout[0](data) != layout[1]:
                layout = None  # not this stream's usual shape: learnt below
            if layout is None:
                layout = _layout(data, pos, end, table)
                if layout is not None:
                    if len(known) >= 4:  # a stream whose blocks keep changing shape
                        known.clear()
                    known[key] = layout
            if layout is not None:
                for kind, at, size_at in layout[2]:
                    if kind == _EXT_TWCC:
                        extensions.transport_sequence_number = (data[at] << 8) | data[at + 1]
                    elif kind == _EXT_LEVEL:
                        extensions.audio_level = _AUDIO_LEVELS[data[at]]
                    elif kind == _EXT_ABS:
                        extensions.abs_send_time = (
                            (data[at] << 16) | (data[at + 1] << 8) | data[at + 2]
                        )
                    else:
                        _extension(extensions, kind, data, at, size_at)
        if layout is not None:
            pass  # read above
        elif profile == 0xBEDE:
            while pos < end:
                byte = data[pos]
                if byte == 0:  # padding
                    pos += 1
                    continue
                x_id = byte >> 4
                if x_id == 15:  # RFC 8285: stop reading the block
                    break
                pos += 1
                length = (byte & 0x0F) + 1
                if pos + length > end:
                    raise ValueError("RTP one-byte header extension value is truncated")
                code = table.get(x_id)
                # the common ones inline (as `_extension`), the rest through it
                if code == _EXT_TWCC:
                    if length == 2:
                        extensions.transport_sequence_number = (data[pos] << 8) | data[pos + 1]
                elif code == _EXT_LEVEL:
                    if length == 1:
                        extensions.audio_level = _AUDIO_LEVELS[data[pos]]
                elif code is not None:
                    _extension(extensions, code, data, pos, length)
                pos += length
        elif profile == 0x1000:
            while pos < end:
                x_id = data[pos]
                if x_id == 0:
                    pos += 1
                    continue
                if pos + 2 > end:
                    raise ValueError("RTP two-byte header extension is truncated")
                length = data[pos + 1]
                pos += 2
                if pos + length > end:
                    raise ValueError("RTP two-byte header extension value is truncated")
                code = table.get(x_id)
                if code is not None:
                    _extension(extensions, code, data, pos, length)
                pos += length
        pos = end
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if not padding or padding > size - pos:
            raise ValueError("RTP packet padding length is invalid")
    packet = _new(RtpPacket)
    packet.__dict__ = {
        "version": 2,
        "marker": m_pt >> 7,
        "payload_type": m_pt & 0x7F,
        "sequence_number": sequence_number,
        "timestamp": timestamp,
        "ssrc": ssrc,
        "csrc": csrc,
        "extensions": extensions,
        "payload": data[pos : size - padding]
        if type(data) is bytes
        else bytes(data[pos : size - padding]),
        "padding_size": padding,
    }
    return packet


def fast_ingress(dtls: RTCDtlsTransport, headers_only: bool = False) -> bool:
    """Handle each SRTP/SRTCP datagram of ``dtls`` as it arrives, without aiortc's layers.

    aiortc receives every datagram through a queue: aioice's ``Connection.data_received``
    puts it there, and the DTLS transport's receive task takes it out through four
    coroutines (``__run``, ``_recv_next``, ``RTCIceTransport._recv``, aioice's
    ``recv``/``recvfrom``), unprotects it, parses it (``RtpPacket.parse``), routes it
    and awaits the receiver's handler: a queue hand-off, a task switch and half a dozen
    coroutines per packet.  Once the transport is connected, this hook does it all
    right in ``data_received``: SRTP unprotect (`fast_unprotect`), `parse_rtp`, the
    transport's router, and a `ForwardingReceiver`'s synchronous `handle_rtp` (another
    receiver's coroutine runs through `run_now`); SRTCP is unprotected the same way
    and handled by `handle_rtcp` (aiortc's ``_handle_rtcp_data`` through `run_now` where
    a recipient is not a forwarding sender or receiver).  Everything else (DTLS records, and any
    datagram while an earlier one still waits in the queue, so that order is kept) takes
    aiortc's path.  A handler that fails is logged and the next packet is handled
    (aiortc's task would stop the transport).  Returns False when aioice's connection
    is not the pinned shape (the stock path stays).

    On the connection's sockets read by `conference.sfu.udp` (host candidates) the same
    work starts one step earlier (``media``, `_BatchedDatagramTransport.media`): the
    datagram goes from the loop's read buffer straight into the SRTP session's buffer,
    is unprotected there and parsed from it, without the bytes object, the copies in
    and out of pylibsrtp and the three calls (the protocol's ``datagram_received``,
    ``data_received``, the unprotect) that the path above takes per packet.

    ``headers_only`` (the load tester's points, never the server): RTP packets of a
    receiver with a `HeaderSink` are read from their header alone (`header_ingress`;
    such a connection's datagrams come from the load tester's loop through
    `datagram_reader`, never through ``media``).
    """
    connection = getattr(getattr(dtls, "transport", None), "_connection", None)
    queue = getattr(connection, "_queue", None)
    if connection is None or queue is None or not hasattr(connection, "data_received"):
        return False
    if getattr(connection, "_conference_fast_ingress", False):
        return True
    extension_map = dtls._rtp_header_extensions_map
    if extension_map.__class__ is HeaderExtensionsMap:
        extension_map.__class__ = LeanExtensionsMap
    if not isinstance(extension_map, LeanExtensionsMap):
        return False
    extension_map.refresh()
    router = dtls._rtp_router
    ssrc_table = router.ssrc_table
    waiting = getattr(queue, "_queue", None)  # asyncio.Queue's deque (``empty()`` inline)
    if waiting is None:
        return False
    #: SSRCs whose receiver has its layer (`ForwardingReceiver._settle`): parsed lean;
    #: the transport's, kept when an ICE restart hooks its new connection
    settled: set[int] | None = getattr(dtls, "_conference_settled", None)
    if settled is None:
        settled = dtls._conference_settled = set()  # type: ignore[attr-defined]
    unprotect: list[Any] = [None, None]  # (the receive session, its fast unprotect)
    unprotect_rtcp: list[Any] = [None, None]  # the same for SRTCP

    def data_received(data: bytes, component: int) -> None:
        srtp = dtls._rx_srtp
        if (
            srtp is not None
            and 127 < data[0] < 192
            and len(data) > 7
            and dtls._state is _DtlsState.CONNECTED
            and not waiting
        ):
            dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
            dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
            if not hooked[0]:
                hook()
            try:
                if 191 < data[1] < 209:  # RTCP (RFC 5761: packet types 192-208)
                    if unprotect_rtcp[0] is not srtp:
                        unprotect_rtcp[0], unprotect_rtcp[1] = srtp, fast_unprotect_rtcp(srtp)
                    plain = unprotect_rtcp[1](data)
                    if not handle_rtcp(plain, router):
                        run_now(dtls._handle_rtcp_data(plain))
                    return
                if unprotect[0] is not srtp:
                    unprotect[0], unprotect[1] = srtp, fast_unprotect(srtp)
                plain = unprotect[1](data)
            except pylibsrtp.Error:
                return  # as aiortc: a packet that does not authenticate is dropped
            try:
                packet = parse_rtp(
                    plain, extension_map.table, extension_map.lean, settled, extension_map.layouts
                )
            except ValueError as exc:
                logger.debug("RTP parsing failed: %s", exc)
                return
            receiver = ssrc_table.get(packet.ssrc) or router.route_rtp(packet)
            if receiver is None:
                return
            try:
                if type(receiver) is ForwardingReceiver:
                    receiver.handle_rtp(packet)
                else:
                    run_now(
                        receiver._handle_rtp_packet(packet, arrival_time_ms=_clock.current_ms())
                    )
            except Exception:
                logger.exception("a packet handler failed")
        else:
            queue.put_nowait((data, component))

    rx: list[Any] = [None]  # (the receive session, then what `media` needs of it)

    def media(buffer: memoryview, size: int) -> bool:
        """A datagram read by udp.py's transport into its buffer (`_BatchedDatagramTransport.media`):
        what ``data_received`` does, with the datagram copied once, into the SRTP
        session's own buffer, unprotected there and parsed from it."""
        srtp = dtls._rx_srtp
        if srtp is None or dtls._state is not _DtlsState.CONNECTED or waiting:
            return False
        bound = rx[0]
        if bound is None or bound[0] is not srtp:
            binding = _srtp_binding(srtp, "srtp_unprotect")
            binding_rtcp = _srtp_binding(srtp, "srtp_unprotect_rtcp")
            if binding is None or binding_rtcp is None:
                return False
            _, function, handle, cdata, cbuffer, length, ok = binding
            view = memoryview(cbuffer)
            bound = (srtp, function, binding_rtcp[1], handle, cdata, cbuffer, view, length, ok)
            rx[0] = bound
        _, function, function_rtcp, handle, cdata, cbuffer, view, length, ok = bound
        if size > len(cdata):
            return False
        dtls._RTCDtlsTransport__rx_bytes += size  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
        cbuffer[0:size] = buffer[:size]
        length[0] = size
        if 191 < buffer[1] < 209:  # RTCP (RFC 5761: packet types 192-208)
            if function_rtcp(handle, cdata, length) != ok:
                return True  # as aiortc: a packet that does not authenticate is dropped
            plain = cbuffer[0 : length[0]]
            try:
                if not handle_rtcp(plain, router):
                    run_now(dtls._handle_rtcp_data(plain))
            except Exception:
                logger.exception("an RTCP handler failed")
            return True
        if function(handle, cdata, length) != ok:
            return True
        try:
            packet = parse_rtp(
                view[: length[0]],
                extension_map.table,
                extension_map.lean,
                settled,
                extension_map.layouts,
            )
        except ValueError as exc:
            logger.debug("RTP parsing failed: %s", exc)
            return True
        receiver = ssrc_table.get(packet.ssrc) or router.route_rtp(packet)
        if receiver is None:
            return True
        try:
            if type(receiver) is ForwardingReceiver:
                receiver.handle_rtp(packet)
            else:
                run_now(receiver._handle_rtp_packet(packet, arrival_time_ms=_clock.current_ms()))
        except Exception:
            logger.exception("a packet handler failed")
        return True

    def hook() -> None:
        """Set ``media`` on the connection's sockets (they exist once candidates are
        gathered, which may come after this function: done on the first packet)."""
        hooked[0] = True
        for protocol in getattr(connection, "_protocols", ()):
            transport: Any = getattr(protocol, "transport", None)
            if type(protocol) is StunProtocol and hasattr(type(transport), "media"):
                transport.media = media

    hooked = [headers_only]  # (header_ingress must see every datagram)
    connection.data_received = data_received
    if headers_only:
        connection.data_received = header_ingress(dtls, data_received, queue)
    connection._conference_fast_ingress = True
    connection._conference_headers_only = headers_only
    return True


def srtp_tag_length(dtls: RTCDtlsTransport) -> int:
    """Bytes of SRTP authentication tag after each RTP payload, by the negotiated
    profile (16 for the AEAD GCM profiles aiortc prefers)."""
    ssl = getattr(dtls, "_ssl", None)
    profile = ssl.get_selected_srtp_profile() if ssl is not None else None
    return _SRTP_TAG.get(profile, 16) if profile else 16


def header_ingress(
    dtls: RTCDtlsTransport, stock: Callable[[bytes, int], None], queue: asyncio.Queue[Any]
) -> Callable[[bytes, int], None]:
    """A ``data_received`` that reads RTP packets from their header alone.

    SRTP encrypts the payload of an RTP packet and leaves its header in the clear (RFC
    3711 section 3.1; the AEAD profiles of RFC 7714 authenticate the header without
    encrypting it): payload type, marker, sequence number, timestamp, SSRC and the
    header extensions can be read without the key.  For a packet of a receiver's media
    SSRC whose receiver has a `HeaderSink`, `ForwardingReceiver.handle_header` gets
    those fields and the payload's size (the datagram minus header and tag; RTP padding,
    encrypted, is counted as payload): no SRTP unprotect, no authentication (a load
    generator on a network it trusts can skip it; a server never does), no
    ``RtpPacket`` (nor aiortc's transport counters, which only its ``getStats`` reads).
    Everything else takes ``stock`` (`fast_ingress`'s path): RTCP, DTLS,
    RTX (the original sequence number is in the encrypted payload), RED, an SSRC not yet
    learned, and each packet the receiver or its sink hands back (one in
    `HEADER_REFRESH`, and those whose payload the sink needs: a keyframe awaited).

    RTCP: transport-cc feedback and receiver reports about what the point sends (an
    SRTCP datagram holding one RTPFB packet of format 15, or one RR: SRTCP leaves its
    first 8 bytes in the clear) are dropped unread: a load generator's points send
    pre-encoded media at a fixed rate, with no congestion control to feed (aiortc's
    sender parsed them for statistics nobody reads here).  Counted in the transport's
    ``_conference_feedback_skipped``.  Sender reports (with SDES) are decrypted and read
    without aiortc's parse (`ForwardingReceiver.rtcp_sender_report`: their time goes
    back in our receiver reports); any other RTCP (NACK, PLI, BYE) takes `fast_ingress`'s
    way (`handle_rtcp`).
    """
    router = dtls._rtp_router
    ssrc_table = router.ssrc_table
    unpack_from = _RTP_FIXED.unpack_from
    connected = _DtlsState.CONNECTED
    waiting = queue._queue  # type: ignore[attr-defined]  # datagrams aiortc's task has yet to take
    tag = 0  # the SRTP tag's length, once the profile is known
    dtls._conference_feedback_skipped = 0  # type: ignore[attr-defined]

    unprotect: list[Any] = [None, None]  # (the receive session, its fast unprotect_rtcp)

    def sender_reports(data: bytes) -> None:
        """A compound of sender reports (no report blocks) and SDES: each SR straight to
        its receiver; anything else in it goes to aiortc's RTCP handling."""
        srtp = dtls._rx_srtp
        if unprotect[0] is not srtp:
            unprotect[0], unprotect[1] = srtp, fast_unprotect_rtcp(srtp)
        try:
            plain = unprotect[1](data)
        except pylibsrtp.Error:
            return  # as aiortc: a packet that does not authenticate is dropped
        pos, end, reports = 0, len(plain), []
        while pos + 8 <= end:
            first, kind, words = _RTCP_HEADER.unpack_from(plain, pos)
            if kind == 200 and first & 0x1F == 0 and pos + 28 <= end:
                reports.append(_SENDER_INFO.unpack_from(plain, pos + 4))
            elif kind != 202:  # not SDES: `handle_rtcp` (else aiortc's way), all of it
                if not handle_rtcp(plain, router):
                    run_now(dtls._handle_rtcp_data(plain))
                return
            pos += (words + 1) * 4
        now = time.monotonic()
        for ssrc, ntp, rtp_timestamp in reports:
            receiver = ssrc_table.get(ssrc)
            if receiver.__class__ is ForwardingReceiver:
                receiver.rtcp_sender_report(ssrc, ntp, rtp_timestamp, now)

    def headers(data: bytes | memoryview) -> bool:
        """Handle an RTP or RTCP datagram where it can without ``stock``; whether it
        did (False: nothing done, the datagram is ``stock``'s, as bytes)."""
        nonlocal tag
        size = len(data)
        if size < 12 or waiting or dtls._state is not connected:
            return False
        kind = data[1]
        if 191 < kind < 209:  # RTCP (RFC 5761)
            if not tag:
                tag = srtp_tag_length(dtls)
            # one packet (its length, the SRTCP index and the tag make the datagram)
            alone = ((data[2] << 8) + data[3] + 1) * 4 + 4 + tag == size
            if alone and (kind == 201 or (kind == 205 and data[0] & 0x1F == 15)):
                dtls._conference_feedback_skipped += 1  # type: ignore[attr-defined]
                return True
            if kind == 200:
                sender_reports(bytes(data))
                return True
            return False
        first, m_pt, seq, timestamp, ssrc = unpack_from(data)
        receiver = ssrc_table.get(ssrc)
        if receiver.__class__ is not ForwardingReceiver:
            return False
        start = 12 + 4 * (first & 0x0F)
        if first & 0x10:
            if size < start + 4:
                return False
            start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
        if not tag:
            tag = srtp_tag_length(dtls)
        payload = size - start - tag
        return payload >= 0 and receiver.handle_header(ssrc, m_pt, seq, timestamp, payload)

    def data_received(data: bytes, component: int) -> None:
        if not (data and 127 < data[0] < 192 and headers(data)):
            stock(data, component)

    data_received.headers = headers  # type: ignore[attr-defined]  # (`datagram_reader`)
    data_received.stock = stock  # type: ignore[attr-defined]
    return data_received


def datagram_reader(protocol: Any) -> Callable[[memoryview, Any], None] | None:
    """How the load tester's event loop hands a datagram it read into its buffer to an
    ICE connection whose RTP is read from headers (`header_ingress`): ``read(view,
    address)`` with a view of the buffer, copied to bytes only when the datagram goes
    on whole (STUN, DTLS, a packet `header_ingress` declines).  None for any other
    protocol, or before the connection is up (ask again later)."""
    if type(protocol) is not StunProtocol:
        return None
    connection = protocol.receiver
    data_received = getattr(connection, "data_received", None)
    headers = getattr(data_received, "headers", None)
    if headers is None:
        return None
    stock = data_received.stock  # type: ignore[union-attr]
    component = protocol.local_candidate.component
    received = protocol.datagram_received

    def read(view: memoryview, address: Any) -> None:
        if 127 < view[0] < 192:  # RTP or RTCP (RFC 7983)
            if not headers(view):
                stock(bytes(view), component)
        else:
            received(bytes(view), address)

    return read


def run_now(work: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to its end now if it never waits; else let a task finish it."""
    try:
        blocked_on = work.send(None)
    except StopIteration:
        return
    except Exception:
        logger.exception("a packet handler failed")
        return
    asyncio.ensure_future(_finish(work, blocked_on))


@types.coroutine
def _resume(work: Coroutine[Any, Any, None], blocked_on: Any) -> Generator[Any, Any, None]:
    yield blocked_on  # the task waits for what the coroutine waits for, then resumes it
    yield from work


async def _finish(work: Coroutine[Any, Any, None], blocked_on: Any) -> None:
    try:
        await _resume(work, blocked_on)
    except Exception:
        logger.exception("a packet handler failed")


def _srtp_binding(session: Any, name: str) -> tuple[Any, ...] | None:
    """What the fast SRTP calls need of a pylibsrtp ``session``: (its error class, the
    C function ``name``, the session's handle, its buffer as cdata and as a Python
    buffer, a length cell, the ok status); None when pylibsrtp's layout is not the one
    pinned."""
    try:
        from pylibsrtp import Error
        from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

        return (
            Error,
            getattr(lib, name),
            session._srtp[0],
            session._cdata,
            session._buffer,
            ffi.new("int *"),
            lib.srtp_err_status_ok,
        )
    except (ImportError, AttributeError, TypeError):
        return None


#: room a protect call needs after the packet in the session's buffer
#: (libsrtp's SRTP_MAX_TRAILER_LEN; SRTCP adds its 4-byte index)
_SRTP_TRAILER = 16 + 128


def fast_protect(session: Any) -> Callable[[bytes], bytes]:
    """``session.protect`` without pylibsrtp's per-call Python overhead.

    pylibsrtp's ``Session.protect`` checks its argument, allocates an
    ``int *`` and copies through a generic helper on every call; on the
    fan-out path that costs several times the encryption itself.  This
    closure keeps the length cell and the C function at hand and uses the
    session's own buffer, exactly as ``protect`` does.  Falls back to
    ``session.protect`` if pylibsrtp's layout is not the one pinned.
    """
    return _fast_srtp(session, "srtp_protect", session.protect, _SRTP_TRAILER)


def fast_protect_rtcp(session: Any) -> Callable[[bytes], bytes]:
    """``session.protect_rtcp`` without pylibsrtp's per-call Python overhead, as
    `fast_protect` (`DirectWire`'s RTCP)."""
    return _fast_srtp(session, "srtp_protect_rtcp", session.protect_rtcp, _SRTP_TRAILER + 4)


def fast_unprotect(session: Any) -> Callable[[bytes], bytes]:
    """``session.unprotect`` (SRTP, not SRTCP) without pylibsrtp's per-call Python
    overhead, as `fast_protect`; raises ``pylibsrtp.Error`` for a packet that does
    not authenticate (or replays one)."""
    return _fast_srtp(session, "srtp_unprotect", session.unprotect)


def fast_unprotect_rtcp(session: Any) -> Callable[[bytes], bytes]:
    """``session.unprotect_rtcp`` without pylibsrtp's per-call Python overhead, as
    `fast_unprotect`."""
    return _fast_srtp(session, "srtp_unprotect_rtcp", session.unprotect_rtcp)


def _fast_srtp(
    session: Any, name: str, slow: Callable[[bytes], bytes], reserve: int = 0
) -> Callable[[bytes], bytes]:
    """The one builder of `fast_protect`, `fast_protect_rtcp`, `fast_unprotect` and
    `fast_unprotect_rtcp`: the C function ``name`` on the session's own buffer, with
    ``reserve`` bytes kept free after the packet; ``slow`` (pylibsrtp's method) where
    the layout is not the one pinned, and for a packet too long (it raises pylibsrtp's
    error)."""
    binding = _srtp_binding(session, name)
    if binding is None:
        return slow
    Error, function, handle, cdata, buffer, length, ok = binding
    limit = len(cdata) - reserve

    def call(data: bytes) -> bytes:
        size = len(data)
        if size > limit:
            return slow(data)  # raises pylibsrtp's error
        length[0] = size
        buffer[0:size] = data
        status = function(handle, cdata, length)
        if status != ok:
            raise Error(f"{name} failed ({status})")
        return cast(bytes, buffer[0 : length[0]])

    return call


def packet_writing(session: Any) -> tuple[Any, ...] | None:
    """What writing an RTP packet into ``session``'s buffer and protecting it there
    takes (`protect_into`, and `ForwardingSender.send_media` inline): (a view of the
    buffer, the fixed header's ``pack_into``, the length cell, the C function, the
    session's handle, its buffer as cdata, the ok status, the longest packet).  None
    when pylibsrtp's layout is not the one pinned."""
    binding = _srtp_binding(session, "srtp_protect")
    if binding is None:
        return None
    _, function, handle, cdata, buffer, length, ok = binding
    limit = len(cdata) - _SRTP_TRAILER
    return (memoryview(buffer), _RTP_FIXED.pack_into, length, function, handle, cdata, ok, limit)


#: `protect_into`'s writer: (marker and payload type, seq, timestamp, SSRC, extension block,
#: payload) -> the protected packet
PacketWriter = Callable[[int, int, int, int, bytes | bytearray, bytes], memoryview]


def protect_into(session: Any) -> PacketWriter | None:
    """A function that writes an RTP packet straight into ``session``'s buffer and
    SRTP-protects it there: ``write(marker_pt, seq, timestamp, ssrc, block, payload)``
    returns a view of the protected packet, valid until the session's next use (the
    caller hands it to ``sendto`` at once).  The fan-out's copies are built this way:
    no packet is assembled as bytes, copied into the buffer and copied out again.
    ``block`` is a header-extension block (`extension_block`, may be empty).  None
    when pylibsrtp's layout is not the one pinned (the caller builds bytes instead).
    """
    parts = packet_writing(session)
    if parts is None:
        return None
    view, pack_into, length, function, handle, cdata, ok, limit = parts
    Error = pylibsrtp.Error

    def write(
        marker_pt: int,
        seq: int,
        timestamp: int,
        ssrc: int,
        block: bytes | bytearray,
        payload: bytes,
    ) -> memoryview:
        start = 12 + len(block)
        size = start + len(payload)
        if size > limit:
            raise Error(f"packet is too long for {session!r}")  # (the closure keeps it alive)
        pack_into(view, 0, 0x90 if block else 0x80, marker_pt, seq, timestamp, ssrc)
        if block:
            view[12:start] = block
        view[start:size] = payload
        length[0] = size
        status = function(handle, cdata, length)
        if status != ok:
            raise Error(f"srtp_protect failed ({status})")
        return view[: length[0]]

    return write


# -- RTCP without aiortc's objects and coroutines -----------------------------------------
#
# aiortc handles every SRTCP datagram by parsing it into dataclasses, routing each
# packet to a set of recipients and awaiting each recipient's coroutine; it sends RTCP
# through four coroutines (`RTCDtlsTransport._send_rtp` to aioice's ``sendto``), and
# every sender and receiver keeps a task of its own that wakes up about once a
# second.  For the forwarding parts of this module the same work is done by plain
# functions: `handle_rtcp` reads a compound packet straight into calls of the
# recipients' synchronous ``rtcp_*`` methods, `DirectWire` protects and sends on the
# nominated pair's socket, and one `RtcpClock` per event loop runs every sender's and
# receiver's periodic reports (and the receivers' NACK retries) from one timer.

_RTCP_HEADER = struct.Struct("!BBH")
_TWO_U32 = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQI")  # SSRC, NTP timestamp, RTP timestamp
_REPORT_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|lost, highest, jitter, LSR, DLSR
_SR_PACKET = struct.Struct("!BBHIQIII")  # an SR without report blocks
_RR_HEADER = struct.Struct("!BBHI")  # an RR's header and SSRC
_NACK_ITEM = struct.Struct("!HH")
_RTCP_SR, _RTCP_RR, _RTCP_SDES, _RTCP_BYE, _RTCP_RTPFB, _RTCP_PSFB = 200, 201, 202, 203, 205, 206


def _rr_header(ssrc: int, count: int) -> bytes:
    """The header of a receiver report from ``ssrc`` with ``count`` report blocks."""
    return _RR_HEADER.pack(0x80 | count, _RTCP_RR, 1 + 6 * count, ssrc)


def _rtcp_actions(data: bytes, router: Any) -> list[tuple[Any, int, Any]] | None:
    """The calls one compound RTCP packet asks of the forwarding senders and receivers of
    ``router`` (aiortc's `RtpRouter`): (recipient, what, arguments), in aiortc's order
    (`RtcpPacket.parse`, then ``route_rtcp`` packet by packet).  ValueError where aiortc's
    parser raises (nothing of the datagram is then handled, as with aiortc); SDES and
    unknown packet types go nowhere, as with aiortc.  None when a
    recipient is not one of ours (the caller takes aiortc's path)."""
    actions: list[tuple[Any, int, Any]] = []
    senders = router.senders
    receivers = router.ssrc_table
    size = len(data)
    pos = 0
    while pos < size:
        if size < pos + 4:
            raise ValueError("RTCP packet length is less than 4 bytes")
        first, packet_type, length = _RTCP_HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise ValueError("RTCP packet has invalid version")
        start = pos + 4
        end = start + 4 * length
        if size < end:
            raise ValueError("RTCP packet is truncated")
        pos = end
        if first & 0x20:
            padding = data[end - 1] if end > start else 0
            if not padding or padding > end - start:
                raise ValueError("RTCP packet padding length is invalid")
            end -= padding
        count = first & 0x1F
        body = end - start
        targets: list[Any] = []  # (recipient, what, arguments) of this packet, one per recipient
        if packet_type == _RTCP_SR or packet_type == _RTCP_RR:
            fixed = 24 if packet_type == _RTCP_SR else 4
            if body != fixed + 24 * count:
                raise ValueError("RTCP report length is invalid")
            if packet_type == _RTCP_SR:
                ssrc, ntp, rtp = _SENDER_INFO.unpack_from(data, start)
                receiver = receivers.get(ssrc)
                if receiver is not None:
                    targets.append((receiver, _SENDER_REPORT, (ssrc, ntp, rtp)))
            reports: dict[Any, list[tuple[int, ...]]] = {}
            offset = start + fixed
            for _ in range(count):
                ssrc, word, highest, _jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
                offset += 24
                lost = word & 0xFFFFFF
                if lost & 0x800000:
                    lost -= 0x1000000
                sender = senders.get(ssrc)
                if sender is not None:
                    reports.setdefault(sender, []).append((word >> 24, lost, highest, lsr, dlsr))
            for sender, blocks in reports.items():
                targets.append((sender, _REPORTS, blocks))
        elif packet_type == _RTCP_SDES:
            RtcpSdesPacket.parse(data[start:end], count)  # raises where aiortc's parser does
        elif packet_type == _RTCP_BYE:
            if body < 4 * count:
                raise ValueError("RTCP bye length is invalid")
            sources = [_CSRC.unpack_from(data, start + 4 * i)[0] for i in range(count)]
            seen: list[Any] = []
            for source in sources:
                receiver = receivers.get(source)
                if receiver is not None and receiver not in seen:
                    seen.append(receiver)
                    targets.append((receiver, _BYE, sources))
        elif packet_type == _RTCP_RTPFB:
            if body < 8 or body % 4:
                raise ValueError("RTCP RTP feedback length is invalid")
            _, media_ssrc = _TWO_U32.unpack_from(data, start)
            sender = senders.get(media_ssrc)
            if sender is not None:
                lost_list: list[int] | None = None
                if count == RTCP_RTPFB_NACK:
                    lost_list = []
                    for offset in range(start + 8, end, 4):
                        pid, blp = _NACK_ITEM.unpack_from(data, offset)
                        lost_list.append(pid)
                        for d in range(16):
                            if (blp >> d) & 1:
                                lost_list.append(pid + d + 1)
                targets.append((sender, _RTPFB, (media_ssrc, lost_list)))
        elif packet_type == _RTCP_PSFB:
            if body < 8:
                raise ValueError("RTCP payload-specific feedback length is invalid")
            _, media_ssrc = _TWO_U32.unpack_from(data, start)
            fci = data[start + 8 : end]
            found: list[Any] = []
            sender = senders.get(media_ssrc)
            if sender is not None:
                found.append(sender)
            if count == RTCP_PSFB_APP:
                try:
                    for ssrc in unpack_remb_fci(fci)[1]:
                        sender = senders.get(ssrc)
                        if sender is not None and sender not in found:
                            found.append(sender)
                except ValueError:
                    pass
            for sender in found:
                targets.append((sender, _PSFB, (count, fci)))
        for target in targets:
            kind = type(target[0])
            if kind is not ForwardingSender and kind is not ForwardingReceiver:
                return None
        actions.extend(targets)
    return actions


_SENDER_REPORT, _REPORTS, _BYE, _RTPFB, _PSFB = range(5)


def handle_rtcp(data: bytes, router: Any) -> bool:
    """Handle one (unprotected) compound RTCP packet for the forwarding parts of
    ``router``; False (nothing done) when a recipient is not a forwarding sender or
    receiver, for aiortc's path.  A malformed packet is dropped, as by aiortc."""
    try:
        actions = _rtcp_actions(data, router)
    except ValueError as exc:
        logger.debug("RTCP parsing failed: %s", exc)
        return True
    if actions is None:
        return False
    now = time.monotonic()
    for recipient, what, arguments in actions:
        try:
            if what == _SENDER_REPORT:
                recipient.rtcp_sender_report(*arguments, now)
            elif what == _REPORTS:
                recipient.last_feedback = now
                for block in arguments:
                    recipient.rtcp_report(*block)
            elif what == _BYE:
                recipient.rtcp_bye(arguments, now)
            elif what == _RTPFB:
                recipient.last_feedback = now
                if arguments[1] is not None and arguments[0] == recipient._ssrc:
                    recipient.rtcp_nack(arguments[1])
            else:
                recipient.last_feedback = now
                recipient.rtcp_payload_feedback(*arguments)
        except Exception:
            logger.exception("an RTCP handler failed")
    return True


def pair_socket(pair: Any) -> tuple[Any, Any, Any]:
    """(socket, datagram transport, remote address) of an aioice candidate pair whose
    packets may go straight to ``sendto``; (None, None, None) for one relayed by TURN
    (aiortc's own send path)."""
    protocol = pair.protocol
    transport = protocol.transport
    if type(protocol) is StunProtocol and transport is not None:
        return getattr(transport, "_sock", None), transport, pair.remote_addr
    return None, None, None


class DirectWire:
    """Sends RTCP of one DTLS transport as `ForwardingSender.send_media` sends RTP: SRTCP
    protected without pylibsrtp's wrapper and handed to ``sendto`` on the nominated
    candidate pair's socket, right now (aiortc's `_send_rtp` for a TURN-relayed pair).
    Nothing is sent (as aiortc raises, and our callers ignored) before the transport is
    connected or after it closed.  One per transport (`wire`)."""

    __slots__ = (
        "dtls",
        "_nominated",
        "_pair",
        "_sock",
        "_datagrams",
        "_address",
        "_session",
        "_protect",
    )

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        connection = _media_connection(dtls.transport)
        #: the nominated pairs of the aioice connection media flows on (`follow`)
        self._nominated: dict[int, Any] = connection._nominated if connection is not None else {}
        self._pair: Any = None
        self._sock: Any = None
        self._datagrams: Any = None
        self._address: Any = None
        self._session: Any = None
        self._protect: Callable[[bytes], bytes] = bytes

    def rtcp(self, data: bytes) -> None:
        dtls = self.dtls
        if dtls._state is not _DtlsState.CONNECTED:
            return
        pair = self._nominated.get(1)
        if pair is None:
            return
        if pair is not self._pair:
            if self._pair is not None:  # ICE nominated another pair: the path moved
                logger.info("media path moved: %s to %s", self._pair, pair)
            self._pair = pair
            self._sock, self._datagrams, self._address = pair_socket(pair)
        sock = self._sock
        if sock is None:
            _spawn(_send_slow(dtls, data))
            return
        session = dtls._tx_srtp
        if session is not self._session:
            self._session = session
            self._protect = fast_protect_rtcp(session)
        try:
            protected = self._protect(data)
        except pylibsrtp.Error as exc:
            logger.debug("RTCP protect failed: %s", exc)
            return
        try:
            sock.sendto(protected, self._address)
        except (BlockingIOError, InterruptedError):
            self._datagrams.sendto(protected, self._address)  # asyncio queues it
        except OSError as exc:  # as asyncio does: report, never raise
            logger.debug("send failed: %s", exc)

    def follow(self, nominated: dict[int, Any]) -> None:
        """Send on the pairs ``nominated`` (a new aioice connection's: an ICE restart
        found its path) from now on."""
        self._nominated = nominated
        self._pair = None


def _media_connection(ice: Any) -> Any:
    """The aioice connection media flows on: the ICE transport's, except during an ICE
    restart, whose new connection the transport describes before it has a path
    (`IceRestart.media`).  None where aiortc's ICE transport has no connection."""
    restart: IceRestart | None = getattr(ice, "_conference_restart", None)
    return restart.media if restart is not None else getattr(ice, "_connection", None)


def wire(dtls: RTCDtlsTransport) -> DirectWire:
    """The `DirectWire` of a DTLS transport (made on first use)."""
    found: DirectWire | None = getattr(dtls, "_conference_wire", None)
    if found is None:
        found = DirectWire(dtls)
        dtls._conference_wire = found  # type: ignore[attr-defined]
    return found


async def _send_slow(dtls: RTCDtlsTransport, data: bytes) -> None:
    try:
        await dtls._send_rtp(data)
    except ConnectionError:
        pass


class RtcpClock:
    """The periodic RTCP of one event loop's forwarding senders and receivers on one timer.

    Each sender sends a sender report, and each receiver a receiver report, every
    `RTCP_INTERVAL` x 0.5-1.5 s (RFC 3550's randomised interval); receivers with packets
    missing retry their NACKs every `NACK_INTERVAL`.  Instead of a task per sender and
    receiver (four hundred wake-ups a second in a 40-point briefing), one timer runs
    whatever fell due, at most every `RTCP_TICK` (reports) or `NACK_INTERVAL` (while
    NACKs are pending)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Any]] = []
        self._order = 0
        #: receivers with NACK retries pending
        self.nacking: set[ForwardingReceiver] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.ticks = 0

    def add(self, member: Any, periodic: bool = True) -> None:
        """Run ``member._rtcp_report(now)`` (which returns when to run it next) from now
        on, first at a random point of the first interval.  Not ``periodic``: only
        `nack_pending` (a member whose reports go out per transport: `TransportReports`)."""
        member._rtcp_clock = self
        if periodic:
            self._push(time.monotonic() + RTCP_INTERVAL * (0.5 + random.random()), member)

    def remove(self, member: Any) -> None:
        if member._rtcp_clock is self:
            member._rtcp_clock = None
        self.nacking.discard(member)

    def nack_pending(self, receiver: ForwardingReceiver) -> None:
        """``receiver`` has packets missing: retry its NACKs every `NACK_INTERVAL`."""
        if receiver._rtcp_clock is self:
            self.nacking.add(receiver)
            self._arm(time.monotonic() + NACK_INTERVAL)

    def _push(self, when: float, member: Any) -> None:
        self._order += 1
        heapq.heappush(self._heap, (when, self._order, member))
        self._arm(when)

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when + 0.001:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.ticks += 1
        now = time.monotonic()
        if self.nacking:
            for receiver in list(self.nacking):
                try:
                    if not receiver._retry_nacks(now):
                        self.nacking.discard(receiver)
                except Exception:
                    self.nacking.discard(receiver)
                    logger.exception("NACK retries failed")
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, member = heapq.heappop(heap)
            if member._rtcp_clock is not self:
                continue  # stopped
            try:
                due = member._rtcp_report(now)
            except Exception:
                logger.exception("a periodic RTCP report failed")
                due = now + RTCP_INTERVAL
            self._order += 1
            heapq.heappush(heap, (due, self._order, member))
        if self.nacking:
            self._arm(now + NACK_INTERVAL)
        if heap:
            self._arm(max(heap[0][0], now + RTCP_TICK))


def rtcp_clock() -> RtcpClock:
    """The `RtcpClock` of the running event loop."""
    loop = asyncio.get_running_loop()
    clock: RtcpClock | None = getattr(loop, "_conference_rtcp_clock", None)
    if clock is None:
        clock = RtcpClock(loop)
        loop._conference_rtcp_clock = clock  # type: ignore[attr-defined]
    return clock


class TransportReports:
    """RTCP reports of a whole transport, as a browser sends them: about every
    `RTCP_INTERVAL` one compound packet with a sender report per `ForwardingSender`
    that sent, then receiver reports with a block per SSRC every `ForwardingReceiver`
    received (31 blocks a packet), and the senders' CNAME.  For connections whose
    senders and receivers have ``shared_reports`` (the load tester's lean points: one
    `RtcpClock` member per transport, not one per stream).  Leaves the clock once the
    transport is closed or failed."""

    __slots__ = ("dtls", "_rtcp_clock")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self._rtcp_clock: RtcpClock | None = None

    def _rtcp_report(self, now: float) -> float:
        dtls = self.dtls
        state = dtls._state
        if state is _DtlsState.CLOSED or state is _DtlsState.FAILED:
            if self._rtcp_clock is not None:
                self._rtcp_clock.remove(self)
        elif state is _DtlsState.CONNECTED:
            for data in self.compounds():
                wire(dtls).rtcp(data)
        return now + RTCP_INTERVAL * (0.5 + random.random())

    def compounds(self) -> list[bytes]:
        """The transport's compound reports now, each at most `RTCP_DATAGRAM` bytes
        before SRTCP's trailer, as browsers split theirs (a chair's page receiving 100
        cameras and 100 microphones reports on 200 streams: 4.8 kB, more than SRTCP
        protects in one datagram); none when there is nothing to report yet.  The first
        carries the sender reports and the CNAMEs, every one starts with a report."""
        router = self.dtls._rtp_router
        parts: list[bytes] = []
        chunks = []
        for sender in {id(s): s for s in router.senders.values()}.values():
            if isinstance(sender, ForwardingSender):
                report = sender.sender_report()
                if report:
                    parts.append(report)
                    if sender._cname is not None:
                        cname = sender._cname.encode("utf8")
                        chunks.append(RtcpSourceInfo(ssrc=sender.ssrc, items=[(1, cname)]))
        blocks: list[bytes] = []
        ssrc = None
        for receiver in router.receivers:
            if isinstance(receiver, ForwardingReceiver) and receiver._rtcp_ssrc is not None:
                ssrc = receiver._rtcp_ssrc if ssrc is None else ssrc
                blocks.extend(receiver.report_blocks())
        reports = []
        if ssrc is not None:
            for first in range(0, len(blocks), RR_BLOCKS):
                some = blocks[first : first + RR_BLOCKS]
                reports.append(_rr_header(ssrc, len(some)) + b"".join(some))
        if not parts and not reports:
            return []
        sdes = bytes(RtcpSdesPacket(chunks=chunks)) if chunks else b""
        datagrams = [b"".join(parts)]
        for report in reports:
            if datagrams[-1] and len(datagrams[-1]) + len(report) > RTCP_DATAGRAM:
                datagrams.append(b"")
            datagrams[-1] += report
        datagrams[0] += sdes
        return datagrams


class SlidingRateCounter:
    """aiortc's ``RateCounter`` (bits per second over the last second), made cheap.

    aiortc keeps 1,000 one-millisecond bucket objects per counter and, on
    every packet, walks one bucket per millisecond elapsed since the last
    one.  This keeps the packets of the window in a deque instead: the same
    results (``tests/sfu/test_bridge.py`` compares them), a few objects per
    counter, and work proportional to the packets that leave the window.
    """

    __slots__ = ("_window", "_scale", "_origin_ms", "_entries", "_total", "_count")

    def __init__(self, window_size: int = 1000, scale: int = 8000) -> None:
        self._window = window_size
        self._scale = scale
        self._origin_ms: int | None = None
        self._entries: deque[tuple[int, int]] = deque()
        self._total = 0
        self._count = 0

    def reset(self) -> None:
        self._origin_ms = None
        self._entries.clear()
        self._total = 0
        self._count = 0

    def _erase_old(self, origin: int, now_ms: int) -> None:
        new_origin = now_ms - self._window + 1
        if origin < new_origin:
            self._origin_ms = new_origin
            entries = self._entries
            while entries and entries[0][0] < new_origin:
                self._total -= entries.popleft()[1]
                self._count -= 1

    def add(self, value: int, now_ms: int) -> None:
        origin = self._origin_ms
        if origin is None:
            self._origin_ms = now_ms
        else:
            self._erase_old(origin, now_ms)
        self._entries.append((now_ms, value))
        self._total += value
        self._count += 1

    def rate(self, now_ms: int) -> int | None:
        origin = self._origin_ms
        if origin is None:
            return None
        self._erase_old(origin, now_ms)
        active = now_ms - cast(int, self._origin_ms) + 1
        if self._count > 0 and active > 1:
            return round(self._scale * self._total / active)
        return None


def bitrate_estimator() -> RemoteBitrateEstimator:
    """aiortc's receive-side (REMB) estimator with a :class:`SlidingRateCounter`."""
    estimator = RemoteBitrateEstimator()
    estimator.incoming_bitrate = SlidingRateCounter(1000, 8000)  # type: ignore[assignment]
    return estimator


class ReceptionStatistics(StreamStatistics):
    """aiortc's per-stream reception statistics (what receiver reports carry), with
    ``add`` written for the ingress path: the same fields, one 16-bit comparison
    instead of aiortc's helper calls."""

    def add(self, packet: RtpPacket, now: float | None = None) -> None:
        """One packet, which arrived at ``now`` (`add_header`; ``time.time()``, the clock
        aiortc's ``add`` reads, when None: the caller's own clock read saves one)."""
        self.add_header(
            packet.sequence_number, packet.timestamp, time.time() if now is None else now
        )

    def add_header(self, seq: int, timestamp: int, now: float) -> None:
        """`add` for a packet read from its header alone (`header_ingress`), which
        arrived at ``now``: seconds on any clock every packet of the stream is timed by
        (only differences count; `ForwardingReceiver` gives ``time.monotonic()``)."""
        max_seq = self.max_seq
        self.packets_received += 1
        if self.base_seq is None:
            self.base_seq = seq
        if max_seq is None or 0 < ((seq - max_seq) & 0xFFFF) < 0x8000:
            arrival = int(now * self._clockrate)
            if max_seq is not None and seq < max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq
            last = self._last_timestamp
            if timestamp != last and self.packets_received > 1:
                diff = abs((arrival - self._last_arrival) - (timestamp - last))  # type: ignore[operator]
                self._jitter_q4 += diff - ((self._jitter_q4 + 8) >> 4)
            self._last_arrival = arrival
            self._last_timestamp = timestamp


class HeaderSink(Protocol):
    """Where a :class:`ForwardingReceiver` whose connection reads headers only
    (`header_ingress`) delivers each packet: its header's fields and the size of its
    (still encrypted) payload."""

    def on_header(self, seq: int, timestamp: int, marker: int, size: int, now: float) -> bool:
        """Account for one packet (``now``: ``time.monotonic()``); False, having
        accounted for nothing, when the payload matters for this one: the packet then
        comes whole, decrypted, to the receiver's `PacketSink` ``on_rtp``."""
        ...


class PacketSink(Protocol):
    """Where a :class:`ForwardingReceiver` delivers what it receives."""

    def on_rtp(self, packet: RtpPacket, repaired: bool, layer: int = 0) -> None: ...

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, layer: int = 0) -> None: ...

    def on_bye(self) -> None: ...


class FeedbackSink(Protocol):
    """Where a :class:`ForwardingSender` delivers the subscriber's feedback."""

    def on_nack(self, sequence_numbers: list[int]) -> None: ...

    def on_picture_loss(self) -> None: ...

    def on_remb(self, bitrate: int) -> None: ...

    def sender_report(self) -> tuple[int, int] | None: ...


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    task.add_done_callback(_log_task_error)


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, ConnectionError):
            logger.warning("media task failed: %r", exc)


class TransportFeedback:
    """Transport-cc feedback to one publisher transport (shared by its receivers).

    Every packet that carries a transport-wide sequence number is recorded on
    arrival; feedback goes out with the first packet at least
    :data:`TWCC_INTERVAL` after the previous feedback, so no timer runs per
    transport.  While it is in use the receivers send no REMB: the
    publisher's send-side estimate (GoogCC) takes the lower of its own
    estimate and our REMB, and aiortc's receive-side estimate is what held
    Chromium at a few hundred kbit/s.
    """

    __slots__ = ("recorder", "last_sent", "packets")

    def __init__(self) -> None:
        self.recorder = FeedbackRecorder()
        self.last_sent = 0.0
        self.packets = 0


def transport_feedback(transport: RTCDtlsTransport) -> TransportFeedback:
    """The :class:`TransportFeedback` of a DTLS transport (made on first use)."""
    feedback: TransportFeedback | None = getattr(transport, "_conference_twcc", None)
    if feedback is None:
        feedback = TransportFeedback()
        transport._conference_twcc = feedback  # type: ignore[attr-defined]
    return feedback


def accept_transport_cc(answer: str) -> str:
    """Add ``a=rtcp-fb:<pt> transport-cc`` to each answered m-line that
    negotiated the transport-wide sequence number extension (aiortc's codecs
    list only nack, pli and goog-remb feedback)."""
    out: list[str] = []
    section: list[str] = []

    def flush() -> None:
        if section and any(TWCC_URI in line for line in section if line.startswith("a=extmap:")):
            types = [
                line.split(":", 1)[1].split(" ", 1)[0]
                for line in section
                if line.startswith("a=rtpmap:") and " rtx/" not in line.lower()
            ]
            have = {line for line in section if line.startswith("a=rtcp-fb:")}
            for pt in types:
                line = f"a=rtcp-fb:{pt} transport-cc"
                if line not in have:
                    section.append(line)
        out.extend(section)
        section.clear()

    lines = answer.split("\r\n")
    for line in lines:
        if line.startswith("m="):
            flush()
        section.append(line)
    trailing = section and section[-1] == ""
    if trailing:
        section.pop()
    flush()
    return "\r\n".join(out) + ("\r\n" if trailing else "")


class MidRtpRouter(RtpRouter):
    """aiortc's router, plus routing of unknown SSRCs by the MID extension.

    aiortc routes a packet of an unsignalled SSRC only when its payload type
    belongs to a single receiver; a camera and a screen share on one bundle
    share payload types, so the MID header extension must decide.
    """

    def route_rtp(self, packet: RtpPacket) -> Any:
        receiver = self.ssrc_table.get(packet.ssrc)
        if receiver is None and packet.extensions.mid is not None:
            receiver = self.mid_table.get(packet.extensions.mid)
            if receiver is not None:
                self.ssrc_table[packet.ssrc] = receiver
                return receiver
        return super().route_rtp(packet)


class ForwardingReceiver:
    """Receives one incoming track without decoding it (see module doc)."""

    def __init__(self, kind: str, transport: RTCDtlsTransport) -> None:
        self.kind = kind
        self._enabled = True
        self._track: Any = None
        self._transport = transport
        self._codecs: dict[int, RTCRtpCodecParameters] = {}
        self._rtx_ssrc: dict[int, int] = {}
        self._rtcp_ssrc: int | None = None
        self._streams: dict[int, ReceptionStatistics] = {}
        self._payload_types: dict[int, tuple[RTCRtpCodecParameters, str]] = {}
        self._lsr: dict[int, tuple[int, float]] = {}
        #: simulcast: the RIDs of the layers, lowest first (empty: one layer)
        self.rids: list[str] = []
        self._ssrc_layer: dict[int, int] = {}  # media SSRC -> layer index
        self._layer_ssrc: list[int | None] = [None]  # layer index -> its (latest) media SSRC
        self._nacks: list[NackTracker | None] = [self._new_nack()]
        #: whether to estimate the publisher's bandwidth (REMB); the estimator is
        #: made on the first packet, so subscriber-side receivers never build one
        self.estimate_bandwidth = kind == "video"
        #: answer transport-wide sequence numbers with transport-cc feedback (instead
        #: of REMB); off on the client side (load tester)
        self.transport_cc = True
        self._twcc: TransportFeedback | None = None
        self._remb: RemoteBitrateEstimator | None = None
        self._rtcp_clock: RtcpClock | None = None  # runs the reports and NACK retries
        self._remb_sent: tuple[int, int] | None = None  # (arrival time ms, bitrate)
        self._started = False
        self.sink: PacketSink | None = None
        #: with a connection that reads headers only (`header_ingress`): where this
        #: receiver's media packets go as headers (None: every packet whole, to `sink`)
        self.header_sink: HeaderSink | None = None
        self._header_ssrc: int | None = None  # the media SSRC (one layer), once seen
        self._header_pt: int | None = None  # the media codec's payload type
        self._header_count = 0  # packets read from their header since the last whole one
        #: packets read from their header alone (of `packets_received`)
        self.headers_read = 0
        #: receiver reports go out per transport (`TransportReports`), not from here
        self.shared_reports = False
        self.mid: str | None = None
        self.codec: RTCRtpCodecParameters | None = None
        self.packets_received = 0
        #: retransmissions of packets already received (RTX padding): not forwarded
        self.duplicates = 0
        #: RED audio: the highest sequence number seen, frames rebuilt from redundant
        #: blocks (packets lost on the publisher's uplink), malformed packets dropped
        self._red_high: int | None = None
        self.red_packets = 0
        self.red_recovered = 0
        self.red_malformed = 0
        self.bytes_received = 0
        self.last_packet_time = 0.0
        self.estimated_bitrate: int | None = None
        #: NACK messages sent to the publisher (per loss found and per retry, not per packet)
        self.nacks_sent = 0

    # -- what RTCPeerConnection and RTCRtpTransceiver use --------------------------
    @property
    def track(self) -> Any:
        return self._track

    @property
    def transport(self) -> RTCDtlsTransport:
        return self._transport

    def setTransport(self, transport: RTCDtlsTransport) -> None:  # noqa: N802 (aiortc API)
        self._transport = transport

    def _set_rtcp_ssrc(self, ssrc: int) -> None:
        self._rtcp_ssrc = ssrc

    def _new_nack(self) -> NackTracker | None:
        return NackTracker() if self.kind == "video" else None

    def set_layers(self, rids: list[str]) -> None:
        """Receive simulcast: one layer per RID, lowest first (before media flows)."""
        if rids == self.rids:
            return
        self.rids = list(rids)
        count = max(len(rids), 1)
        self._unsettle()
        self._ssrc_layer.clear()
        self._layer_ssrc = [None] * count
        self._nacks = [self._new_nack() for _ in range(count)]

    @property
    def _media_ssrc(self) -> int | None:
        """The lowest layer's SSRC (the only one without simulcast)."""
        return self._layer_ssrc[0]

    def _layer_of(self, ssrc: int, rid: str | None) -> int | None:
        """The layer of a new media SSRC, from its RID (simulcast) or first come."""
        if self.rids:
            if rid is None or rid not in self.rids:
                return None
            layer = self.rids.index(rid)
            self._layer_ssrc[layer] = ssrc
        else:
            layer = 0
            if self._layer_ssrc[0] is None:
                self._layer_ssrc[0] = ssrc
            self._header_ssrc = self._layer_ssrc[0]
        self._ssrc_layer[ssrc] = layer
        self._settle(ssrc)
        return layer

    def _settle(self, ssrc: int) -> None:
        """The stream ``ssrc`` has its layer (or, RTX, its original): its next packets
        are parsed without MID and RIDs (`fast_ingress`)."""
        settled: set[int] | None = getattr(self._transport, "_conference_settled", None)
        if settled is not None:
            settled.add(ssrc)

    def _unsettle(self) -> None:
        """This receiver's streams are parsed in full again (it stops or changes
        layers: the SSRCs may be routed anew)."""
        settled: set[int] | None = getattr(self._transport, "_conference_settled", None)
        if settled is not None:
            settled.difference_update(self._ssrc_layer)
            settled.difference_update(self._rtx_ssrc)
        layouts = getattr(self._transport._rtp_header_extensions_map, "layouts", None)
        if layouts is not None:
            for ssrc in [*self._ssrc_layer, *self._rtx_ssrc]:
                layouts.pop(ssrc, None)

    def _rtx_original(self, rtx_ssrc: int, repaired_rid: str | None) -> int | None:
        """The media SSRC an unsignalled RTX stream repairs (by repaired-RID)."""
        if not self.rids:
            return self._layer_ssrc[0]
        if repaired_rid is None or repaired_rid not in self.rids:
            return None
        original = self._layer_ssrc[self.rids.index(repaired_rid)]
        if original is not None:
            self._rtx_ssrc[rtx_ssrc] = original
            self._settle(rtx_ssrc)
        return original

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        if self._started:
            return
        for codec in parameters.codecs:
            if codec.payloadType is not None:
                self._codecs[codec.payloadType] = codec
        # the media codec: with RED first (redundant audio), the codec inside it
        primary = [c for c in parameters.codecs if c.name.lower() not in ("rtx", "red")]
        self.codec = primary[0] if primary else None
        self._header_pt = self.codec.payloadType if self.codec is not None else None
        for encoding in parameters.encodings:
            if encoding.rtx:
                self._rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        self.mid = parameters.muxId
        if self._transport._rtp_router.__class__ is RtpRouter:
            self._transport._rtp_router.__class__ = MidRtpRouter
        self._transport._register_rtp_receiver(self, parameters)
        rtcp_clock().add(self, periodic=not self.shared_reports)
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._transport._unregister_rtp_receiver(self)
            self._started = False
        self._unsettle()
        if self._rtcp_clock is not None:
            self._rtcp_clock.remove(self)
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.on_bye()

    def _handle_disconnect(self) -> None:
        pass

    async def getStats(self) -> RTCStatsReport:  # noqa: N802 (aiortc API)
        return RTCStatsReport()

    # -- media path ---------------------------------------------------------------
    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        """aiortc's entry (`handle_rtcp` calls the ``rtcp_*`` methods directly)."""
        now = time.monotonic()
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            self.rtcp_sender_report(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp, now)
        elif isinstance(packet, RtcpByePacket):
            self.rtcp_bye(packet.sources, now)
        else:
            self.last_packet_time = now

    def rtcp_sender_report(self, ssrc: int, ntp: int, rtp: int, now: float) -> None:
        """A sender report of the publisher's stream ``ssrc``: its time goes back in our
        receiver reports (LSR, DLSR: the sender's round-trip time), and to the sink."""
        self.last_packet_time = now
        self._lsr[ssrc] = ((ntp >> 16) & 0xFFFFFFFF, time.time())
        layer = self._ssrc_layer.get(ssrc)
        if self.sink is not None and layer is not None:
            self.sink.on_sender_report(ntp, rtp, layer)

    def rtcp_bye(self, sources: list[int], now: float) -> None:
        """A BYE naming (at least) one of this receiver's streams."""
        self.last_packet_time = now
        if self.sink is not None and any(s not in self._rtx_ssrc for s in sources):
            self.sink.on_bye()

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """aiortc's entry (its receive task, before `fast_ingress` takes over)."""
        self.handle_rtp(packet, arrival_time_ms)

    def handle_rtp(self, packet: RtpPacket, arrival_time_ms: int | None = None) -> None:
        """One RTP packet of this track: statistics, feedback (transport-cc or REMB,
        NACK), RTX and RED unwrapped, then the sink; runs to its end without waiting
        (feedback goes out at once too: aiortc's send path never waits, see `run_now`).
        ``arrival_time_ms`` (aiortc's clock) is read here when None, and only for the
        REMB estimator, the one user of it."""
        if not self._enabled:
            return
        known = self._payload_types.get(packet.payload_type)
        if known is None:
            codec = self._codecs.get(packet.payload_type)
            if codec is None:
                return
            # once per payload type, not a string split per packet
            known = self._payload_types[packet.payload_type] = (codec, codec.name.lower())
        codec, name = known
        self.packets_received += 1
        self.bytes_received += len(packet.payload) + 12
        self.last_packet_time = now = time.monotonic()
        stats = self._streams.get(packet.ssrc)
        if stats is None:
            stats = self._streams[packet.ssrc] = ReceptionStatistics(codec.clockRate)
        stats.add(packet, now)

        sequence = packet.extensions.transport_sequence_number
        if sequence is not None and self.transport_cc:
            feedback = self._twcc
            if feedback is None:
                feedback = self._twcc = transport_feedback(self._transport)
            feedback.recorder.received(sequence, int(now * 1_000_000))
            feedback.packets += 1
            if now - feedback.last_sent >= TWCC_INTERVAL and self._rtcp_ssrc is not None:
                feedback.last_sent = now
                for data in feedback.recorder.build(self._rtcp_ssrc, packet.ssrc):
                    self.send_rtcp(data)
        elif self.estimate_bandwidth and packet.extensions.abs_send_time is not None:
            estimator = self._remb
            if estimator is None:
                estimator = self._remb = bitrate_estimator()
            if arrival_time_ms is None:
                arrival_time_ms = _clock.current_ms()
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            if remb is not None:
                self.estimated_bitrate = bitrate = remb[0]
                last = self._remb_sent
                # aiortc's estimator has a value for most packets; libwebrtc sends
                # one every 200 ms, or at once when the estimate drops
                if (
                    last is None
                    or arrival_time_ms - last[0] >= REMB_INTERVAL_MS
                    or bitrate < last[1] * REMB_DROP
                ):
                    self._remb_sent = (arrival_time_ms, bitrate)
                    self._send_remb(bitrate, remb[1])

        repaired = False
        if name == "rtx":
            original_ssrc = self._rtx_ssrc.get(packet.ssrc)
            if original_ssrc is None:
                original_ssrc = self._rtx_original(
                    packet.ssrc, packet.extensions.repaired_rtp_stream_id
                )
            apt = codec.parameters.get("apt")
            if original_ssrc is None or not isinstance(apt, int) or len(packet.payload) < 2:
                return
            original_seq = (packet.payload[0] << 8) | packet.payload[1]
            repaired_packet = RtpPacket(
                payload_type=apt,
                marker=packet.marker,
                sequence_number=original_seq,
                timestamp=packet.timestamp,
                ssrc=original_ssrc,
                payload=packet.payload[2:],
            )
            repaired_packet.extensions = packet.extensions
            packet = repaired_packet
            repaired = True
        layer = self._ssrc_layer.get(packet.ssrc)
        if layer is None:
            layer = self._layer_of(packet.ssrc, packet.extensions.rtp_stream_id)
            if layer is None:
                return  # a simulcast packet of no announced layer

        nack = self._nacks[layer]
        if nack is not None and packet.ssrc == self._layer_ssrc[layer]:
            if repaired:
                if not nack.repairs(packet.sequence_number):
                    # a copy of a packet already forwarded: the publisher's RTX
                    # padding (its bandwidth probes) or a late retransmission;
                    # forwarded, it would flood every subscriber of this layer
                    self.duplicates += 1
                    return
            else:
                lost = nack.received(packet.sequence_number, now)
                if lost:
                    self._lost(packet.ssrc, lost)

        if self.sink is not None:
            if name == "red":
                self._unwrap_red(packet, layer)
            else:
                self.sink.on_rtp(packet, repaired, layer)

    def handle_header(self, ssrc: int, m_pt: int, seq: int, timestamp: int, size: int) -> bool:
        """One RTP packet read from its header alone (`header_ingress`): what
        `handle_rtp` does for a media packet of one layer (statistics for receiver
        reports, NACKs, the sink), the sink being the `HeaderSink`.  False, having done
        nothing, when the packet must take the whole path instead: not this receiver's
        media SSRC or codec (RTX, RED), no header sink, one packet in `HEADER_REFRESH`,
        or the sink wants its payload."""
        sink = self.header_sink
        if ssrc != self._header_ssrc or sink is None or m_pt & 0x7F != self._header_pt:
            return False
        count = self._header_count
        if count >= HEADER_REFRESH or not self._enabled:
            self._header_count = 0
            return False
        now = time.monotonic()
        if not sink.on_header(seq, timestamp, m_pt >> 7, size, now):
            return False
        self._header_count = count + 1
        self.headers_read += 1
        self.packets_received += 1
        self.bytes_received += size + 12
        self.last_packet_time = now
        stats = self._streams.get(ssrc)
        if stats is not None:  # made by the SSRC's first packet, which came whole
            stats.add_header(seq, timestamp, now)
        nack = self._nacks[0]
        if nack is not None:
            lost = nack.received(seq, now)
            if lost:
                self._lost(ssrc, lost)
        return True

    def _unwrap_red(self, packet: RtpPacket, layer: int) -> None:
        """Forward a RED packet's primary Opus frame, after the frames its
        redundant blocks bring back for packets that never arrived (see
        :mod:`.red`)."""
        sink = self.sink
        if not self.red_packets:
            logger.info("audio m-line %s: the publisher sends RED (redundant audio)", self.mid)
        self.red_packets += 1
        parsed = red.parse(packet.payload)
        if parsed is None or sink is None:
            self.red_malformed += 1
            return
        primary_pt, blocks, primary = parsed
        seq = packet.sequence_number
        high = self._red_high
        gap = (seq - high) & 0xFFFF if high is not None else 1
        if gap >= 0x8000:
            return  # late: what it carries went out already (or was rebuilt)
        self._red_high = seq
        # blocks[-k] is the frame of packet seq - k (libwebrtc: consecutive frames)
        for back in range(min(gap - 1, len(blocks)), 0, -1):
            _, offset, data = blocks[-back]
            if not data:
                continue
            rebuilt = RtpPacket(
                payload_type=primary_pt,
                sequence_number=(seq - back) & 0xFFFF,
                timestamp=(packet.timestamp - offset) & 0xFFFFFFFF,
                ssrc=packet.ssrc,
                payload=data,
            )
            rebuilt.extensions = packet.extensions
            self.red_recovered += 1
            sink.on_rtp(rebuilt, False, layer)
        plain = RtpPacket(
            payload_type=primary_pt,
            marker=packet.marker,
            sequence_number=seq,
            timestamp=packet.timestamp,
            ssrc=packet.ssrc,
            payload=primary,
        )
        plain.extensions = packet.extensions
        sink.on_rtp(plain, False, layer)

    # -- feedback to the publisher --------------------------------------------------
    def request_keyframe(self, layer: int = 0) -> None:
        """Send a PLI for one layer to the publisher (the caller throttles)."""
        ssrc = self._layer_ssrc[layer] if 0 <= layer < len(self._layer_ssrc) else None
        if ssrc is not None and self._rtcp_ssrc is not None:
            pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self._rtcp_ssrc, media_ssrc=ssrc)
            self.send_rtcp(bytes(pli))

    def _send_remb(self, bitrate: int, ssrcs: list[int]) -> None:
        if self._rtcp_ssrc is None:
            return
        remb = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=self._rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs)
        )
        self.send_rtcp(bytes(remb))

    def _send_nack(self, media_ssrc: int, lost: list[int]) -> None:
        if self._rtcp_ssrc is None:
            return
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self._rtcp_ssrc, media_ssrc=media_ssrc)
        nack.lost = sorted(lost)
        self.nacks_sent += 1
        self.send_rtcp(bytes(nack))

    def _lost(self, ssrc: int, lost: list[int]) -> None:
        """Packets of ``ssrc`` found missing: NACK them at once, and have the `RtcpClock`
        retry every `NACK_INTERVAL` while they stay missing."""
        self._send_nack(ssrc, lost)
        clock = self._rtcp_clock
        if clock is not None:
            clock.nack_pending(self)

    def send_rtcp(self, data: bytes) -> None:
        """Send one RTCP packet to the publisher, right now (`DirectWire`)."""
        wire(self._transport).rtcp(data)

    def _retry_nacks(self, now: float) -> bool:
        """Send the NACK retries that fell due (`RtcpClock`, every `NACK_INTERVAL` while
        packets are missing); whether packets are still missing."""
        missing = False
        for nack, ssrc in zip(self._nacks, self._layer_ssrc, strict=True):
            if nack is not None and ssrc is not None:
                due = nack.due(now)
                if due:
                    self._send_nack(ssrc, due)
                missing = missing or bool(nack.missing)
        return missing

    def _rtcp_report(self, now: float) -> float:
        """The periodic receiver report (`RtcpClock`); when the next one is due."""
        self._send_receiver_report()
        return now + RTCP_INTERVAL * (0.5 + random.random())

    def _send_receiver_report(self) -> None:
        if self._rtcp_ssrc is None or not self._streams:
            return
        blocks = self.report_blocks()
        self.send_rtcp(_rr_header(self._rtcp_ssrc, len(blocks)) + b"".join(blocks))

    def report_blocks(self) -> list[bytes]:
        """A receiver report's blocks about what this receiver received, one per SSRC
        (24 bytes each)."""
        wall = time.time()
        blocks = []
        for ssrc, stream in self._streams.items():
            lsr, dlsr = 0, 0
            if ssrc in self._lsr:
                lsr, when = self._lsr[ssrc]
                delay = wall - when
                if 0 < delay < 65536:
                    dlsr = int(delay * 65536)
            blocks.append(
                _REPORT_BLOCK.pack(
                    ssrc,
                    (stream.fraction_lost << 24) | (stream.packets_lost & 0xFFFFFF),
                    stream.max_seq or 0,
                    stream.jitter,
                    lsr,
                    dlsr,
                )
            )
        return blocks

    def media_loss(self) -> tuple[int, int]:
        """(packets expected, packets lost) so far over every media layer (RTX and
        duplicates left out; lost may shrink a little as late packets arrive)."""
        expected = lost = 0
        for ssrc in self._layer_ssrc:
            stream = self._streams.get(ssrc) if ssrc is not None else None
            if stream is not None and stream.max_seq is not None:
                expected += stream.packets_expected
                lost += stream.packets_lost
        return expected, lost

    def loss_stats(self) -> tuple[int, int]:
        """(packets expected, packets lost) of the media stream so far."""
        if self._media_ssrc is None or self._media_ssrc not in self._streams:
            return (0, 0)
        stream = self._streams[self._media_ssrc]
        return (stream.packets_expected, stream.packets_lost)


class ForwardingSender:
    """Sends one outgoing track made of forwarded packets (see module doc)."""

    def __init__(self, kind: str, transport: RTCDtlsTransport, ssrc: int, rtx_ssrc: int) -> None:
        self.kind = kind
        self._enabled = True
        self._transport = transport
        self._ssrc = ssrc
        self._rtx_ssrc = rtx_ssrc
        self._stream_id = ""
        self._track_id = f"{kind}-{ssrc:08x}"
        self._cname: str | None = None
        self._sdes = b""  # the SDES (CNAME) packet after each sender report
        self._rtcp_clock: RtcpClock | None = None  # runs the sender reports
        self._started = False
        self._stats = RTCStatsReport()
        self.feedback: FeedbackSink | None = None
        self.mid: str | None = None
        self.codec: RTCRtpCodecParameters | None = None
        self.payload_type = 0
        self.rtx_payload_type: int | None = None
        #: with RED negotiated first: the Opus payload type of the blocks inside
        self.red_block_pt: int | None = None
        self.extension_ids: dict[str, int] = {}
        self.packets_sent = 0
        self.bytes_sent = 0
        self.rtt: float | None = None
        self.fraction_lost = 0
        #: packets the subscriber reported lost, and expected, over its receiver
        #: reports (deltas of the cumulative counts; the allocator reads and resets)
        self.report_lost = 0
        self.report_expected = 0
        #: the same, never reset (/metrics), and the subscriber's NACK messages
        self.lost_total = 0
        self.expected_total = 0
        self.nacks_received = 0
        self._report_mark: tuple[int, int] | None = None  # (cumulative lost, highest seq)
        self.remote_bitrate: int | None = None  # the subscriber's latest REMB
        self.remote_bitrate_time = 0.0  # monotonic time it arrived
        self.last_feedback = 0.0  # monotonic time of the last RTCP from the subscriber
        self._srtp_session: Any = None
        self._protect: Callable[[bytes], bytes] = bytes
        #: what `send_media` needs of the SRTP session (`packet_writing`)
        self._out: tuple[Any, ...] | None = None
        #: `send_media`, or (once bound to a pair's socket) the same work with the
        #: pair, socket and SRTP buffer at hand (`_emitter`): what the fan-out calls
        self.emit: Callable[[int, int, int, bytes | bytearray, bytes], None] = self.send_media
        self._pair: Any = None
        self._sock: Any = None
        self._datagrams: Any = None
        self._address: Any = None
        self._nominated: dict[int, Any] = {}
        self._last_sr: tuple[int, float] | None = None
        # continuity of the outgoing stream, kept across subscriptions that
        # reuse this sender: last sequence number, timestamp and send time
        self.last_seq = random.randrange(0, 32768)
        self.last_ts = random.randrange(0, 1 << 32)
        self.last_time: float | None = None
        self.rtx_seq = random.randrange(0, 32768)
        self.ready = asyncio.Event()
        self.on_ready: Callable[[], None] | None = None
        #: sender reports go out per transport (`TransportReports`), not from here
        self.shared_reports = False

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def rtx_ssrc(self) -> int:
        return self._rtx_ssrc

    # -- what RTCPeerConnection and RTCRtpTransceiver use --------------------------
    @property
    def track(self) -> None:
        return None

    @property
    def transport(self) -> RTCDtlsTransport:
        return self._transport

    def replaceTrack(self, track: Any) -> None:  # noqa: N802 (aiortc API)
        if track is not None:
            raise ValueError("a forwarding sender carries no local track")

    def setTransport(self, transport: RTCDtlsTransport) -> None:  # noqa: N802 (aiortc API)
        self._transport = transport
        self._pair = None
        self.emit = self.send_media
        if self._started:
            self.follow(_media_connection(transport.transport)._nominated)

    def follow(self, nominated: dict[int, Any]) -> None:
        """Send on the pairs ``nominated`` (an aioice connection's: this transport's, or
        the new one of an ICE restart that found its path) from now on."""
        self._nominated = nominated
        self._pair = None
        self.emit = self.send_media

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        if self._started:
            return
        self._cname = parameters.rtcp.cname
        self.mid = parameters.muxId
        primary = [c for c in parameters.codecs if c.name.lower() != "rtx"]
        if not primary:
            return
        self.codec = primary[0]
        self.payload_type = self.codec.payloadType or 0
        inner = [c for c in primary[1:] if c.name.lower() == "opus"]
        if self.codec.name.lower() == "red" and inner:
            # RED first: packets go out as RED (the payload type above) around
            # Opus frames; the media codec is Opus
            self.codec = inner[0]
            self.red_block_pt = inner[0].payloadType
        for codec in parameters.codecs:
            if codec.name.lower() == "rtx" and codec.parameters.get("apt") == self.payload_type:
                self.rtx_payload_type = codec.payloadType
        self.extension_ids = {ext.uri: ext.id for ext in parameters.headerExtensions}
        self.follow(_media_connection(self._transport.transport)._nominated)
        self._transport._register_rtp_sender(self, parameters)
        if self._cname is not None:
            cname = self._cname.encode("utf8")
            self._sdes = bytes(
                RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, cname)])])
            )
        rtcp_clock().add(self, periodic=not self.shared_reports)
        self._started = True
        self.ready.set()
        if self.on_ready is not None:
            self.on_ready()

    async def stop(self) -> None:
        if self._started:
            self._transport._unregister_rtp_sender(self)
            self._started = False
        if self._rtcp_clock is not None:
            self._rtcp_clock.remove(self)
            try:
                bye = RtcpByePacket(sources=[self._ssrc])
                await self._transport._send_rtp(bytes(bye))
            except ConnectionError:
                pass

    async def getStats(self) -> RTCStatsReport:  # noqa: N802 (aiortc API)
        self._stats.add(
            RTCOutboundRtpStreamStats(
                timestamp=clock.current_datetime(),
                type="outbound-rtp",
                id=f"outbound-rtp_{id(self)}",
                ssrc=self._ssrc,
                kind=self.kind,
                transportId=self._transport._stats_id,
                packetsSent=self.packets_sent,
                bytesSent=self.bytes_sent,
                trackId=self._track_id,
            )
        )
        return self._stats

    # -- media path ---------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started

    def send_rtp(self, data: bytes, payload_size: int) -> None:
        """Send one RTP packet already addressed to this sender, right now.

        The fan-out of one incoming packet to every subscriber runs without
        yielding to the event loop: SRTP-protect, then ``sendto`` on the
        nominated candidate pair's socket.  aiortc's own path
        (``RTCDtlsTransport._send_rtp`` → ``RTCIceTransport._send`` →
        ``Connection.send`` → ``sendto`` → ``send_data``) does the same
        through four coroutines per packet; it is kept for TURN-relayed
        local candidates, whose protocol must wrap the data.  The socket,
        address and SRTP session are looked up again only when ICE nominates
        another pair.
        """
        if not self._started:
            return
        pair = self._nominated.get(1)
        if pair is None:
            return
        if pair is not self._pair:
            self._bind(pair)
        self.packets_sent += 1
        self.bytes_sent += payload_size
        sock = self._sock
        if sock is None:
            _spawn(self._send_slow(data))
            return
        protected = self._protect(data)
        try:
            sock.sendto(protected, self._address)
        except (BlockingIOError, InterruptedError):
            self._datagrams.sendto(protected, self._address)  # asyncio queues it
        except OSError as exc:  # as asyncio does: report, never raise into the fan-out
            logger.debug("send failed: %s", exc)

    def send_media(
        self, marker: int, seq: int, timestamp: int, block: bytes | bytearray, payload: bytes
    ) -> None:
        """Send one forwarded packet of this track (its payload type and SSRC): the
        header, the extension block ``block`` and ``payload`` are written straight into
        the SRTP session's buffer, protected there and sent from it (`emit`, made for
        the nominated pair: the fan-out calls it directly); built as bytes and sent by
        `send_rtp` where the pair's socket cannot be written to (a TURN relay).
        ``seq`` and ``timestamp`` are already reduced to 16 and 32 bits; the caller
        checked that the sender has started."""
        pair = self._nominated.get(1)
        if pair is None:
            return
        if pair is not self._pair:
            self._bind(pair)
        if self._sock is not None and self._out is not None:  # `emit` is `_emitter`'s
            self.emit(marker, seq, timestamp, block, payload)
            return
        data = build_rtp_with_block(
            self.payload_type, marker, seq, timestamp, self._ssrc, payload, bytes(block)
        )
        self.send_rtp(data, len(payload))

    def _bind(self, pair: Any) -> None:
        self._pair = pair
        self._sock, self._datagrams, self._address = pair_socket(pair)
        session = self._transport._tx_srtp
        if session is not self._srtp_session:
            self._srtp_session = session
            self._protect = fast_protect(session)
            self._out = packet_writing(session)
        self.emit = self.send_media
        if self._sock is not None and self._out is not None:
            self.emit = self._emitter(pair, self._sock, self._address, self._out)

    def _emitter(
        self, pair: Any, sock: Any, address: Any, out: tuple[Any, ...]
    ) -> Callable[[int, int, int, bytes | bytearray, bytes], None]:
        """`send_media` for one candidate pair, socket and SRTP session, which it keeps at
        hand; it hands back to `send_media` (which makes a new one) when ICE nominates
        another pair."""
        view, pack_into, length, function, handle, cdata, ok, limit = out
        nominated = self._nominated
        ssrc = self._ssrc
        sender = self

        def emit(
            marker: int, seq: int, timestamp: int, block: bytes | bytearray, payload: bytes
        ) -> None:
            if nominated.get(1) is not pair:
                sender.send_media(marker, seq, timestamp, block, payload)
                return
            sender.packets_sent += 1
            sender.bytes_sent += len(payload)
            start = 12 + len(block)
            size = start + len(payload)
            if size > limit:
                logger.debug("protect failed: packet too long (%d bytes)", size)
                return
            payload_type = sender.payload_type
            pack_into(
                view,
                0,
                0x90 if block else 0x80,
                (0x80 | payload_type) if marker else payload_type,
                seq,
                timestamp,
                ssrc,
            )
            if block:
                view[12:start] = block
            view[start:size] = payload
            length[0] = size
            status = function(handle, cdata, length)
            if status != ok:
                logger.debug("protect failed: srtp_protect %s", status)
                return
            protected = view[: length[0]]
            try:
                sock.sendto(protected, address)
            except (BlockingIOError, InterruptedError):
                sender._datagrams.sendto(bytes(protected), address)  # asyncio queues a copy
            except OSError as exc:  # as asyncio does: report, never raise into the fan-out
                logger.debug("send failed: %s", exc)

        return emit

    async def _send_slow(self, data: bytes) -> None:
        try:
            await self._transport._send_rtp(data)
        except ConnectionError:
            pass

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        """aiortc's entry (`handle_rtcp` calls the ``rtcp_*`` methods directly)."""
        self.last_feedback = time.monotonic()
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == self._ssrc:
                    self.rtcp_report(
                        report.fraction_lost,
                        report.packets_lost,
                        report.highest_sequence,
                        report.lsr,
                        report.dlsr,
                    )
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            if packet.media_ssrc == self._ssrc:
                self.rtcp_nack(packet.lost)
        elif isinstance(packet, RtcpPsfbPacket):
            self.rtcp_payload_feedback(packet.fmt, packet.fci)

    def rtcp_report(
        self, fraction_lost: int, packets_lost: int, highest: int, lsr: int, dlsr: int
    ) -> None:
        """The subscriber's report block about this sender's stream."""
        self.fraction_lost = fraction_lost
        mark = (packets_lost, highest)
        if self._report_mark is not None:
            expected = (mark[1] - self._report_mark[1]) & 0xFFFFFFFF
            if 0 < expected < 0x8000:  # not a reset (a new stream on this sender)
                lost = min(max(mark[0] - self._report_mark[0], 0), expected)
                self.report_expected += expected
                self.report_lost += lost
                self.expected_total += expected
                self.lost_total += lost
        self._report_mark = mark
        if self._last_sr is not None and lsr == self._last_sr[0] and dlsr:
            rtt = time.time() - self._last_sr[1] - dlsr / 65536
            if rtt >= 0:
                self.rtt = rtt if self.rtt is None else 0.85 * self.rtt + 0.15 * rtt

    def rtcp_nack(self, lost: list[int]) -> None:
        """The subscriber's NACK of this sender's packets ``lost``."""
        if self.feedback is not None:
            self.nacks_received += 1
            self.feedback.on_nack(list(lost))

    def rtcp_payload_feedback(self, fmt: int, fci: bytes) -> None:
        """The subscriber's payload-specific feedback: PLI, FIR or REMB."""
        feedback = self.feedback
        if fmt == RTCP_PSFB_PLI or fmt == RTCP_PSFB_FIR:
            if feedback is not None:
                feedback.on_picture_loss()
        elif fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(fci)
            except ValueError:
                return
            if self._ssrc in ssrcs:
                self.remote_bitrate = bitrate
                self.remote_bitrate_time = time.monotonic()
                if feedback is not None:
                    feedback.on_remb(bitrate)

    def _rtcp_report(self, now: float) -> float:
        """The periodic sender report, with the CNAME (`RtcpClock`); when the next one
        is due."""
        data = self.sender_report()
        if data:
            wire(self._transport).rtcp(data + self._sdes)
        return now + RTCP_INTERVAL * (0.5 + random.random())

    def sender_report(self) -> bytes:
        """This sender's sender report (SR, no report blocks) as bytes; empty before
        anything was sent or when the feedback sink has no clock to report."""
        if self.packets_sent == 0:
            return b""
        report = self.feedback.sender_report() if self.feedback is not None else None
        if report is None:
            return b""
        ntp, rtp_ts = report
        self._last_sr = (((ntp >> 16) & 0xFFFFFFFF), time.time())
        return _SR_PACKET.pack(
            0x80,
            _RTCP_SR,
            6,
            self._ssrc,
            ntp,
            rtp_ts,
            self.packets_sent & 0xFFFFFFFF,
            self.bytes_sent & 0xFFFFFFFF,
        )


class ForwardingPeerConnection(RTCPeerConnection):
    """An ``RTCPeerConnection`` whose transceivers forward instead of decoding.

    aiortc calls ``self.__createTransceiver`` (mangled to
    ``_RTCPeerConnection__createTransceiver``) both from ``addTransceiver`` and
    when a remote offer brings a new m-line; overriding it here swaps the
    sender and receiver of every transceiver for the forwarding ones.

    ``system_dtls``: the DTLS handshake runs on the system's OpenSSL
    (:class:`SystemDtlsCertificate`), which accepts FFmpeg's default P-224
    certificate; where that library cannot be used, the stock one (logged once).
    """

    def __init__(
        self,
        ice_servers: list[RTCIceServer] | None = None,
        system_dtls: bool = False,
        headers_only: bool = False,
    ) -> None:
        #: read received RTP from headers where a receiver has a header sink
        #: (`header_ingress`), and send RTCP reports per transport (`TransportReports`):
        #: the load tester's points, never the server
        self.headers_only = headers_only
        self._reports: dict[RTCDtlsTransport, TransportReports] = {}
        # max-bundle: every m-line on one transport from the start.  With
        # aiortc's default (balanced), a second m-line of a kind reuses the
        # first one's transport and is marked bundled; when the answer's BUNDLE
        # group moves the first to the primary transport and stops the old one,
        # the second stays on the stopped transport and never sends (two
        # cameras in a subscriber's first offer, or a camera and a screen
        # share in a publisher's).  WebRTC browsers and WHIP/WHEP clients
        # (RFC 9725 requires BUNDLE) all bundle.
        super().__init__(
            RTCConfiguration(iceServers=ice_servers or [], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        if system_dtls:  # before any transport exists: each takes the list at creation
            certificates = self._RTCPeerConnection__certificates  # type: ignore[attr-defined]
            certificates[:] = [with_system_dtls(c) for c in certificates]

    async def _RTCPeerConnection__connect(self) -> None:  # noqa: N802 (aiortc private hook)
        """aiortc's connection task (started by each description), which raises when
        the connection is closed while it runs (a participant leaving, or the server
        shutting down, during ICE): nobody awaits that task, so asyncio logs the
        error with a traceback.  A closed connection has nothing left to connect."""
        for transceiver in self.getTransceivers():
            dtls = transceiver.receiver.transport
            fast_ingress(dtls, self.headers_only)
            if self.headers_only and dtls not in self._reports:
                self._reports[dtls] = reports = TransportReports(dtls)
                rtcp_clock().add(reports)
        try:
            await RTCPeerConnection._RTCPeerConnection__connect(self)  # type: ignore[attr-defined]
        except (InvalidStateError, ConnectionError):
            if self.signalingState != "closed":
                raise

    async def close(self) -> None:
        for reports in self._reports.values():
            if reports._rtcp_clock is not None:
                reports._rtcp_clock.remove(reports)
        await super().close()

    def _RTCPeerConnection__createTransceiver(  # noqa: N802 (aiortc private hook)
        self, direction: str, kind: str, sender_track: Any = None
    ) -> Any:
        # aiortc builds the receiver from its module's global ``RTCRtpReceiver``:
        # for this synchronous call it is ours (a stock receiver would set up a
        # jitter buffer and a 1,000-bucket bitrate counter, 3 ms per m-line, only
        # to be thrown away)
        stock_receiver = _rtcpeerconnection.RTCRtpReceiver
        _rtcpeerconnection.RTCRtpReceiver = ForwardingReceiver  # type: ignore[misc,assignment]
        try:
            transceiver = RTCPeerConnection._RTCPeerConnection__createTransceiver(  # type: ignore[attr-defined]
                self, direction, kind, None
            )
        finally:
            _rtcpeerconnection.RTCRtpReceiver = stock_receiver  # type: ignore[misc]
        stock_sender = transceiver.sender
        dtls = stock_sender.transport
        sender = ForwardingSender(kind, dtls, stock_sender._ssrc, stock_sender._rtx_ssrc)
        sender._stream_id = stock_sender._stream_id
        receiver = transceiver.receiver
        if not isinstance(receiver, ForwardingReceiver):  # aiortc changed: see test_bridge
            receiver = ForwardingReceiver(kind, dtls)
            transceiver._RTCRtpTransceiver__receiver = receiver
        receiver._set_rtcp_ssrc(sender._ssrc)
        receiver.shared_reports = sender.shared_reports = self.headers_only
        transceiver._RTCRtpTransceiver__sender = sender
        return transceiver

    @staticmethod
    def answer_one_codec(transceiver: Any, preferred: str) -> None:
        """After a remote offer, answer a single codec (``preferred`` if offered).

        aiortc would answer every common codec; an SFU wants the publisher to
        send exactly one, the one the room forwards.  RTX for it is kept.
        """
        codecs = transceiver._codecs
        primary = [c for c in codecs if c.name.lower() != "rtx"]
        chosen = [c for c in primary if c.name.lower() == preferred.lower()][:1] or primary[:1]
        if not chosen:
            return
        pt = chosen[0].payloadType
        rtx = [c for c in codecs if c.name.lower() == "rtx" and c.parameters.get("apt") == pt]
        transceiver._codecs = chosen + rtx

    @staticmethod
    def red_follows_opus(transceiver: Any) -> None:
        """Make RED's format parameter name this m-line's Opus payload type
        (aiortc answers with its own codec's parameters, which name its own)."""
        codecs = transceiver._codecs
        opus = next((c for c in codecs if c.name.lower() == "opus"), None)
        for codec in codecs:
            if codec.name.lower() == "red":
                if opus is None:
                    transceiver._codecs = [c for c in codecs if c is not codec]
                else:
                    codec.parameters = {f"{opus.payloadType}/{opus.payloadType}": None}

    @staticmethod
    def offered_codecs(transceiver: Any) -> list[str]:
        """Names of the media codecs both sides support, in the remote's order."""
        names: list[str] = []
        for codec in transceiver._codecs:
            if codec.name.lower() != "rtx" and codec.name not in names:
                names.append(codec.name)
        return names

    @staticmethod
    def media_codec(transceiver: Any) -> RTCRtpCodecParameters | None:
        """The negotiated media codec of a transceiver (RTX left out, and RED: the
        codec inside it)."""
        return next((c for c in transceiver._codecs if c.name.lower() not in ("rtx", "red")), None)

    @staticmethod
    def remote_sends(transceiver: Any) -> bool:
        """Whether the remote side's latest description sends on this m-line."""
        direction = transceiver._offerDirection or transceiver.currentDirection
        return direction in ("recvonly", "sendrecv")


# -- ICE restart ---------------------------------------------------------------------
#
# aiortc 1.16 cannot restart ICE: an offer with new ICE credentials goes to the ICE
# transport it already has, whose aioice ``Connection`` keeps the old credentials and
# the old (dead) path.  A point whose network changed (Wi-Fi to 4G, a 4G handover, a
# new NAT binding) then had to leave and join again.  WebRTC keeps the DTLS association
# and its SRTP keys across an ICE restart (RFC 8445 section 9, RFC 8829 section 3.5.1):
# only the ICE layer below it is new.  These functions do that on aiortc's objects:
#
# * `begin_ice_restart` (before our offer, or before applying the remote's restart
#   offer): a new aioice ``Connection`` with new credentials gathers its candidates and
#   becomes the one aiortc's ICE transport and gatherer describe (the new ufrag, pwd and
#   candidates go into the next offer or answer) and adds remote candidates to.  Media
#   keeps flowing on the old connection meanwhile (its consent checks stop: the old
#   path is about to be dropped, and must not close the transport under the restart).
# * `finish_ice_restart` (once the remote description with the other side's new
#   credentials is applied): the new connection runs its connectivity checks; when a
#   pair is nominated, DTLS (``RTCIceTransport._send``/``_recv``, looked up on every
#   datagram), the forwarding senders' fast path (`ForwardingSender._nominated`) and the
#   fast ingress hook move to it, and the old connection is closed.  The DTLS transport,
#   its SRTP sessions, every sender, receiver and SSRC stay as they were.  If no new
#   path is found within `ICE_RESTART_TIMEOUT`, the ICE transport fails as it would have
#   (the participant then rejoins).

#: seconds a restarted ICE connection may take to nominate a pair before the transport fails
ICE_RESTART_TIMEOUT = 20.0
#: a datagram the DTLS transport's receive task ignores (neither DTLS nor SRTP): wakes it
#: from the old connection's queue so that its next read goes to the new connection
_WAKE_UP = (b"\x00", 1)
_ICE_UFRAG = "a=ice-ufrag:"


class IceRestart:
    """An ICE restart in progress on one ICE transport."""

    __slots__ = ("ice", "dtls", "media", "pending", "remote_known", "task", "started")

    def __init__(self, ice: Any, dtls: RTCDtlsTransport, media: Any, pending: Any) -> None:
        self.ice = ice
        self.dtls = dtls
        #: the connection media flows on until `pending` has a nominated pair
        self.media = media
        self.pending = pending
        #: set by `finish_ice_restart`: `pending` knows the remote's new credentials
        self.remote_known = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.started = time.monotonic()


def _transports(pc: RTCPeerConnection) -> list[tuple[Any, RTCDtlsTransport]]:
    """The (ICE transport, DTLS transport) pairs of ``pc``'s transceivers (one with
    BUNDLE)."""
    found: dict[int, tuple[Any, RTCDtlsTransport]] = {}
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        found.setdefault(id(dtls), (dtls.transport, dtls))
    return list(found.values())


def ice_ufrag(sdp: str) -> str | None:
    """The first ``a=ice-ufrag`` of a session description (BUNDLE: every m-line's)."""
    for line in sdp.split("\n"):
        if line.startswith(_ICE_UFRAG):
            return line[len(_ICE_UFRAG) :].strip()
    return None


def ice_restart_offered(pc: RTCPeerConnection, sdp: str) -> bool:
    """Whether a remote offer restarts ICE: it brings other ICE credentials than those
    ``pc``'s connected ICE transport checks with (RFC 8839 section 4.4.1.1.1)."""
    ufrag = ice_ufrag(sdp)
    for ice, _ in _transports(pc):
        remote = ice._connection.remote_username
        if remote is not None and ufrag is not None and ufrag != remote:
            return True
    return False


def local_ice_ufrag(pc: RTCPeerConnection) -> str | None:
    """The ICE username fragment ``pc`` answers checks with now (a restart changes it)."""
    transports = _transports(pc)
    return str(transports[0][0]._connection.local_username) if transports else None


def ice_restart_pending(pc: RTCPeerConnection) -> bool:
    """Whether an ICE restart of ``pc`` is still looking for its new path."""
    return any(getattr(ice, "_conference_restart", None) is not None for ice, _ in _transports(pc))


async def begin_ice_restart(
    pc: RTCPeerConnection, *, controlling: bool, timeout: float = ICE_RESTART_TIMEOUT
) -> None:
    """Give ``pc``'s ICE transport new credentials and candidates (see the section's
    comment); the next offer or answer carries them.  ``controlling``: this side offers
    the restart (the offerer is controlling).  The new path must be found within
    ``timeout`` seconds from now (the other side's answer, or offer, included), or the
    transport fails.  Raises ``ConnectionError`` when the transport is not connected
    (nothing to restart: the caller rejoins)."""
    transports = _transports(pc)
    if not transports or any(
        ice.state != "completed" or dtls.state != "connected" for ice, dtls in transports
    ):
        raise ConnectionError("no connected transport to restart")
    for ice, dtls in transports:
        restart: IceRestart | None = getattr(ice, "_conference_restart", None)
        media = restart.media if restart is not None else ice._connection
        connection = aioice.Connection(
            ice_controlling=controlling,
            stun_server=media.stun_server,
            turn_server=media.turn_server,
            turn_username=media.turn_username,
            turn_password=media.turn_password,
            turn_ssl=media.turn_ssl,
            turn_transport=media.turn_transport,
            use_ipv4=media._use_ipv4,
            use_ipv6=media._use_ipv6,
            transport_policy=media._transport_policy,
        )
        try:
            await connection.gather_candidates()
        except BaseException:
            _spawn(connection.close())  # cancelled (the session ends): its sockets too
            raise
        if ice.state != "completed" or dtls.state != "connected":  # closed meanwhile
            await connection.close()
            raise ConnectionError("the transport closed during the ICE restart")
        # from here on, nothing waits until the swap is complete
        restart = getattr(ice, "_conference_restart", None)  # (another one may have begun)
        if restart is not None:  # a restart of a restart: the last one's checks stop
            if restart.task is not None:
                restart.task.cancel()
            superseded = restart.pending
            media = restart.media
        else:
            superseded = None
            media = ice._connection
            consent = media._query_consent_task
            if consent is not None and not consent.done():
                consent.cancel()
            _guard_stop(ice)
        monitor = ice._RTCIceTransport__monitor_task
        if monitor is not None:
            monitor.cancel()  # aiortc's watcher of the old connection (or ours)
        ice._connection = connection
        ice.iceGatherer._connection = connection
        ice.iceGatherer._remote_candidates_end = False
        ice._RTCIceTransport__monitor_task = asyncio.ensure_future(_watch(ice, connection))
        restart = ice._conference_restart = IceRestart(ice, dtls, media, connection)
        restart.task = asyncio.ensure_future(_complete(restart, timeout))
        if getattr(media, "_conference_fast_ingress", False):
            fast_ingress(dtls, getattr(media, "_conference_headers_only", False))
        if superseded is not None:
            _spawn(superseded.close())
        logger.info(
            "ICE restart: new credentials %s (%d candidates)",
            connection.local_username,
            len(connection.local_candidates),
        )


def finish_ice_restart(pc: RTCPeerConnection) -> None:
    """Start the connectivity checks of ``pc``'s restarted ICE connection, now that the
    remote description (with the remote's new credentials) is applied; the switch to the
    new path happens when a pair is nominated (`IceRestart`)."""
    remote = pc._RTCPeerConnection__remoteIce  # type: ignore[attr-defined]
    for ice, dtls in _transports(pc):
        restart: IceRestart | None = getattr(ice, "_conference_restart", None)
        if restart is None or restart.remote_known.is_set():
            continue
        parameters = next(
            (
                remote[t]
                for t in pc.getTransceivers()
                if t.receiver.transport is dtls and t in remote
            ),
            None,
        )
        if parameters is None:
            continue
        connection = restart.pending
        connection.remote_username = parameters.usernameFragment
        connection.remote_password = parameters.password
        connection.remote_is_lite = parameters.iceLite
        restart.remote_known.set()


async def wait_ice_restart(pc: RTCPeerConnection) -> bool:
    """Wait for ``pc``'s ICE restarts to end; True when every one found its new path."""
    ok = True
    for ice, _ in _transports(pc):
        restart: IceRestart | None = getattr(ice, "_conference_restart", None)
        if restart is not None and restart.task is not None:
            try:
                await asyncio.shield(restart.task)
            except asyncio.CancelledError:
                if restart.task.cancelled():  # superseded by another restart
                    return await wait_ice_restart(pc)
                raise
        ok = ok and ice.state == "completed" and ice._connection._nominated
    return bool(ok)


async def _complete(restart: IceRestart, timeout: float) -> None:
    ice, dtls, media, connection = restart.ice, restart.dtls, restart.media, restart.pending
    try:
        async with asyncio.timeout(timeout):
            await restart.remote_known.wait()
            await connection.connect()
    except (ConnectionError, TimeoutError) as exc:
        logger.info("ICE restart %s failed: %s", connection.local_username, exc or "timeout")
        if ice._conference_restart is restart:
            ice._conference_restart = None
            await connection.close()  # `_watch` fails the transport
            await media.close()
        return
    if ice._conference_restart is not restart:
        return
    ice._conference_restart = None
    # DTLS sends through the new connection from its next datagram, and reads from it
    # once its receive task, now waiting on the old queue, is woken
    ice._send = connection.send
    ice._recv = connection.recv
    for sender in dtls._rtp_router.senders.values():
        if isinstance(sender, ForwardingSender):
            sender.follow(connection._nominated)
    found: DirectWire | None = getattr(dtls, "_conference_wire", None)
    if found is not None:
        found.follow(connection._nominated)
    media._queue.put_nowait(_WAKE_UP)
    pair = connection._nominated.get(1)
    logger.info(
        "ICE restart %s: new path %s -> %s in %.1f s",
        connection.local_username,
        pair.local_addr if pair else None,
        pair.remote_addr if pair else None,
        time.monotonic() - restart.started,
    )
    await media.close()


async def _watch(ice: Any, connection: Any) -> None:
    """aiortc's ``RTCIceTransport._monitor`` for one connection: the transport fails
    when ``connection`` closes while it is still the transport's (consent expired, or
    a restart found no path)."""
    while True:
        event = await connection.get_event()
        if event is None or isinstance(event, aioice.ConnectionClosed):
            break
    if ice._connection is connection and ice.state == "completed":
        ice._RTCIceTransport__setState("failed")


def _guard_stop(ice: Any) -> None:
    """Make ``ice.stop()`` (the peer connection closing) also end a restart in
    progress: cancel its checks and close the old connection media still flows on."""
    if getattr(ice, "_conference_stop_guarded", False):
        return
    stock = ice.stop

    async def stop() -> None:
        restart: IceRestart | None = getattr(ice, "_conference_restart", None)
        ice._conference_restart = None
        if restart is not None and restart.task is not None:
            restart.task.cancel()
        await stock()
        if restart is not None:
            await restart.media.close()

    ice.stop = stop
    ice._conference_stop_guarded = True


# -- client-side hooks (the load tester's simulated points; never the server) ------------
#
# A simulated point sends pre-encoded packets through aiortc's stock
# RTCRtpSender and receives through a ForwardingReceiver.  Three behaviours of
# a browser need a hook; tests/sfu/test_bridge.py pins the internals they use.


def honour_keyframe_requests(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the remote side asks ``sender`` for a keyframe.

    ``RTCRtpSender`` answers a PLI/FIR by calling its ``_send_keyframe()``,
    which only sets a flag for its encoder; pre-encoded packets bypass the
    encoder, so the hook also tells whoever produces them.
    """
    original: Callable[[], None] = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


def attach_audio_levels(sender: RTCRtpSender, level: Callable[[], int]) -> None:
    """Give pre-encoded audio frames of ``sender`` the RFC 6464 level ``level()``.

    ``RTCRtpSender._next_encoded_frame()`` fills ``RTCEncodedFrame.audio_level``
    (dBov, <= 0) only for frames it encodes.  ``level()`` is read right after
    the track returned the packet (0 loudest, 127 silence) and goes into the
    ``ssrc-audio-level`` header extension.
    """
    original: Callable[[Any], Awaitable[Any]] = sender._next_encoded_frame

    async def next_encoded_frame(codec: Any) -> Any:
        frame = await original(codec)
        if frame is not None and frame.audio_level is None:
            frame.audio_level = -level()
        return frame

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]


def light_receiver(receiver: ForwardingReceiver) -> None:
    """Switch off the REMB estimator of a client-side :class:`ForwardingReceiver`.

    The receive-side bandwidth estimator (pure Python, ~10 % of a load-test
    process) feeds REMB to the server, which ignores a subscriber's REMB.
    """
    receiver.estimate_bandwidth = False
    receiver.transport_cc = False
    receiver._remb = None
