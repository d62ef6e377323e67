"""FFmpeg's WHIP muxer (through PyAV) publishes H.264 + Opus into the server.

FFmpeg's default certificate
----------------------------
With default options the muxer signs its DTLS with a self-signed ECDSA **P-224**
certificate: PyAV's wheels (and most distributions) build FFmpeg with GnuTLS,
whose backend makes the key with ``gnutls_sec_param_to_pk_bits(GNUTLS_PK_ECDSA,
GNUTLS_SEC_PARAM_MEDIUM)``.  In (D)TLS 1.2 OpenSSL accepts the peer's ECDSA key
only if its curve is one of its own groups (``tls12_check_peer_sigalg`` ->
``tls1_check_group_id``), and the OpenSSL bundled in ``cryptography`` (4.0
here), which aiortc's DTLS uses through pyOpenSSL, no longer offers P-224 at all
(``SSL_CTX_set1_curves_list(ctx, "P-224")`` fails): it ends the handshake with
"wrong curve" and an ``illegal_parameter`` alert, whichever side is the DTLS
client (FFmpeg's default ``a=setup:passive`` makes the server the client, which
rejects the ServerKeyExchange; with ``whip_flags=dtls_active`` it rejects the
CertificateVerify).  No setting of that SSL context can accept the key.

So WHIP sessions do their DTLS on the system's OpenSSL 3 instead
(``conference/sfu/sysdtls.py``, ctypes on ``libssl.so.3``, with P-224 in the
groups list; wired into aiortc by ``bridge.SystemDtlsCertificate``; setting
``whip_system_dtls``, on by default).  These tests publish with FFmpeg's
defaults.  Two cases still need a P-256 certificate, given with the muxer's
``cert_file``/``key_file`` options (docs/OPERATIONS.md): the setting off (or no
OpenSSL 3 on the system), where the default certificate is refused as above; and
``whip_flags=dtls_active``, where FFmpeg is the DTLS client and the server's
OpenSSL, as DTLS server, also wants the client's curve among the groups the client
itself offered, which FFmpeg's GnuTLS does not (no P-224 there)::

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
        -keyout whip.key -out whip.crt -days 365 -subj /CN=ffmpeg
    ffmpeg ... -f whip -authorization TOKEN \\
        -cert_file whip.crt -key_file whip.key https://host/whip/MEETING
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from conference.sfu import sysdtls
from conference.tls import self_signed_certificate
from conference.tools.client import Client
from conference.tools.testmedia import draw_barcode, tone_frames

from .conftest import ServerProcess, check_clean_exit, start_server
from .mediacheck import audio_frequency, increasing, video_numbers, wait_track, wait_tracks

pytestmark = pytest.mark.media  # real-time media: shares the machine (tests/conftest.py)

WIDTH, HEIGHT, FPS = 320, 240, 30
SYSTEM_DTLS_LOG = "DTLS of WHIP encoders on the system's OpenSSL"
#: FFmpeg's default (P-224) certificate needs the system's OpenSSL 3 (libssl.so.3)
needs_system_openssl = pytest.mark.skipif(
    sysdtls.load() is None, reason=f"no usable libssl.so.3: {sysdtls.unavailable_reason()}"
)
FIRST_FRAME = 1000
TONE_HZ = 660.0


def write_p256_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate and key, PEM, for FFmpeg's DTLS.

    The server's own self-signed certificate maker does what an operator's
    ``openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256`` does.
    """
    return self_signed_certificate(directory, ["ffmpeg-whip.local"])


@pytest.fixture
def stock_dtls_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose WHIP sessions keep aiortc's own DTLS (``whip_system_dtls = false``)."""
    proc = start_server(tmp_path, env={"CONFERENCE_WHIP_SYSTEM_DTLS": "false"})
    try:
        yield proc
    finally:
        check_clean_exit(proc)


class FfmpegWhipPublisher:
    """Encodes barcode video (libx264) and a tone (libopus) into FFmpeg's WHIP muxer.

    ``run`` blocks (the DTLS handshake happens in the first ``mux``), so the
    test runs it in a thread; frames are paced in real time.
    """

    def __init__(self, url: str, options: dict[str, str], seconds: float, gop: int = FPS) -> None:
        self.url = url
        self.gop = gop
        self.options = options
        self.seconds = seconds
        self.frames_sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        container = av.open(self.url, mode="w", format="whip", options=self.options)
        try:
            video = container.add_stream(
                "libx264",
                rate=FPS,
                options={
                    "tune": "zerolatency",
                    "preset": "ultrafast",
                    "profile": "baseline",
                    "bf": "0",
                    "g": str(self.gop),
                },
            )
            video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            audio = container.add_stream("libopus", rate=48000, layout="stereo")
            tones = tone_frames(TONE_HZ, self.seconds + 1.0)
            tone = next(tones, None)
            start = time.monotonic()
            for n in range(round(self.seconds * FPS)):
                if self.stop.is_set():
                    break
                frame = draw_barcode(FIRST_FRAME + n, WIDTH, HEIGHT)
                frame.pts, frame.time_base = n, Fraction(1, FPS)
                for packet in video.encode(frame):
                    container.mux(packet)
                self.frames_sent += 1
                # audio up to the end of this video frame
                while tone is not None and (tone.pts or 0) / 48000 < (n + 1) / FPS:
                    for packet in audio.encode(tone):
                        container.mux(packet)
                    tone = next(tones, None)
                delay = start + (n + 1) / FPS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            for stream in (video, audio):
                for packet in stream.encode(None):
                    container.mux(packet)
        finally:
            container.close()  # sends the WHIP DELETE


async def publish_and_check(server: ServerProcess, options: dict[str, str]) -> None:
    """FFmpeg publishes 5 s into meeting m1 with ``options``; a viewer decodes the
    barcodes and hears the tone; FFmpeg ends its session with a DELETE."""
    token = server.token(identity="ffmpeg-hall", role="chair", name="FFmpeg hội trường")
    publisher = FfmpegWhipPublisher(
        f"{server.url}/whip/m1", {"authorization": token, **options}, seconds=5.0
    )
    viewer = Client(server.url, "m1", server.token(identity="xa-tan-thinh"))
    await viewer.connect()
    publishing = asyncio.ensure_future(asyncio.to_thread(publisher.run))

    def encoders() -> list[dict[str, Any]]:
        return [p for p in viewer.room["participants"] if p["id"] != viewer.id]

    try:
        try:
            await wait_tracks(viewer, 2, timeout=8.0)
        except TimeoutError:
            if publishing.done():
                publishing.result()  # FFmpeg's own error (e.g. "DTLS session failed")
            raise
        await viewer.wait_for(lambda: len(encoders()) == 1, 5.0)
        encoder = encoders()[0]
        assert encoder["name"] == "FFmpeg hội trường" and encoder["transport"] == "whip", encoder
        codecs = {pub["source"]: pub["codec"] for pub in encoder["publications"]}
        assert codecs == {"camera": "h264", "microphone": "opus"}, encoder

        numbers = await video_numbers(await wait_track(viewer, encoder["id"], "camera"), 2.5)
        decoded = [n for n in numbers if n is not None]
        assert len(decoded) >= 45 and increasing(numbers), numbers
        assert min(decoded) >= FIRST_FRAME and max(decoded) < FIRST_FRAME + 5 * FPS, decoded
        # nothing lost or undecodable at 30 fps over loopback (allow a stray frame)
        assert len(decoded) >= 0.9 * len(numbers), numbers
        freq = await audio_frequency(await wait_track(viewer, encoder["id"], "microphone"), 1.0)
        assert abs(freq - TONE_HZ) < 15, freq

        await asyncio.wait_for(publishing, 10.0)  # FFmpeg ends and DELETEs its session
        await viewer.wait_for(lambda: not encoders(), 5.0)
    finally:
        publisher.stop.set()
        await asyncio.wait([publishing], timeout=10.0)
        await viewer.leave()


async def expect_refusal(server: ServerProcess, options: dict[str, str]) -> None:
    """FFmpeg's DTLS handshake with ``options`` fails: FFmpeg gets the server's alert,
    the server logs the failed connection."""
    publisher = FfmpegWhipPublisher(
        f"{server.url}/whip/m1", {"authorization": server.token(identity="ffmpeg"), **options}, 1.0
    )
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)  # PyAV drops FFmpeg's log by default
    try:
        with av.logging.Capture(local=False) as logs:
            # av.error.OSError, or av.error.ConnectionRefusedError when the server's
            # socket was already gone for FFmpeg's next datagram (both builtin OSErrors)
            with pytest.raises(OSError) as info:
                await asyncio.wait_for(asyncio.to_thread(publisher.run), 15.0)
    finally:
        av.logging.set_level(level)
    assert isinstance(info.value, av.error.FFmpegError), info.value
    messages = [message for _, _, message in logs]
    refused = isinstance(info.value, ConnectionRefusedError)
    assert refused or any("TLS fatal alert" in m for m in messages), messages
    assert any("DTLS session failed" in m for m in messages) or "DTLS session failed" in str(
        info.value
    ), messages
    assert publisher.frames_sent == 0
    deadline = time.monotonic() + 5
    while "connection failed" not in server.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "connection failed" in server.log()


@needs_system_openssl
async def test_ffmpeg_whip_publishes_h264_and_opus_with_default_options(server):
    """No ``cert_file``: FFmpeg's own P-224 certificate, accepted by the system's
    OpenSSL (the default ``whip_system_dtls = true``).  FFmpeg offers
    ``a=setup:passive``, the server answers ``active``: it is the DTLS client.

    What is still refused: FFmpeg as the DTLS *client* (``whip_flags=dtls_active``)
    with that key.  A DTLS server's OpenSSL also wants the client's curve among the
    groups the client itself offered, and FFmpeg's GnuTLS offers no P-224
    (``tls1_check_group_id``; docs/OPERATIONS.md says to give it a P-256 certificate).
    If that starts working, update the docs."""
    assert SYSTEM_DTLS_LOG in server.log()
    await publish_and_check(server, {})
    await expect_refusal(server, {"whip_flags": "dtls_active"})


async def test_with_the_bundled_openssl_only_a_p256_certificate_works(stock_dtls_server, tmp_path):
    """``whip_system_dtls = false`` (aiortc's own DTLS, on the OpenSSL bundled in
    ``cryptography``): FFmpeg's default P-224 certificate is refused, as the module
    docstring explains, and a P-256 one given with ``cert_file``/``key_file`` works.
    If the refusal stops, the bundled OpenSSL accepts P-224 again (a new
    ``cryptography``): the system's OpenSSL may then be unneeded."""
    server = stock_dtls_server
    assert SYSTEM_DTLS_LOG not in server.log()
    await expect_refusal(server, {})
    cert_file, key_file = write_p256_certificate(tmp_path)
    await publish_and_check(server, {"cert_file": str(cert_file), "key_file": str(key_file)})


@needs_system_openssl
async def test_first_picture_without_waiting_for_the_encoder(server):
    """FFmpeg ignores keyframe requests and sends a keyframe every 10 s: a WHEP viewer
    joining between two keyframes still decodes its first picture within 1 s (the
    server starts it from the last keyframe it kept), and then follows the live
    picture; the viewer already watching is not disturbed."""
    from conference.tools.whipclient import whep_watch

    token = server.token(identity="ffmpeg-hall", role="chair", name="FFmpeg hội trường")
    publisher = FfmpegWhipPublisher(
        f"{server.url}/whip/m1",
        {"authorization": token},  # FFmpeg's own (P-224) certificate
        seconds=14.0,
        gop=10 * FPS,
    )
    viewer = Client(server.url, "m1", server.token(identity="xa-tan-thinh"))
    await viewer.connect()
    publishing = asyncio.ensure_future(asyncio.to_thread(publisher.run))
    watcher = None
    try:
        await wait_tracks(viewer, 2, timeout=8.0)

        def encoders() -> list[dict[str, Any]]:
            return [p for p in viewer.room["participants"] if p["transport"] == "whip"]

        await viewer.wait_for(lambda: len(encoders()) == 1, 5.0)
        track = await wait_track(viewer, encoders()[0]["id"], "camera")
        await video_numbers(track, 0.5)  # the first viewer decodes
        await asyncio.sleep(3.0)  # well after the first keyframe, far before the next
        asked = time.monotonic()
        watcher = await whep_watch(
            f"{server.url}/whep/m1/ffmpeg-hall", server.token(identity="radio", role="viewer")
        )
        frame = await asyncio.wait_for(watcher.tracks["video"].recv(), 5.0)
        waited = time.monotonic() - asked
        assert waited < 1.0, f"first picture after {waited:.2f} s"
        numbers = await video_numbers(watcher.tracks["video"], 1.5)
        decoded = [n for n in numbers if n is not None]
        # it catches up with the live picture: frames of the current second
        assert decoded and max(decoded) >= FIRST_FRAME + publisher.frames_sent - 2 * FPS, (
            decoded,
            publisher.frames_sent,
        )
        assert frame is not None
        first_viewer = await video_numbers(track, 1.5)
        assert len([n for n in first_viewer if n is not None]) >= 20, first_viewer
    finally:
        publisher.stop.set()
        if watcher is not None:
            await watcher.delete()
        await asyncio.wait([publishing], timeout=10.0)
        await viewer.leave()
