"""Muxing already-encoded frames into WebM (VP8, Opus) or Matroska (H.264) with PyAV.

Nothing is decoded or encoded: streams are created with ``add_mux_stream``
(no codec context), except Opus, whose stream is copied from a tiny
in-memory Ogg file so that the file carries the ``OpusHead`` codec private
data that players need (the copy is parameters only; no codec is opened).

Timestamps are the RTP timestamps relative to the file's first frame, in the
RTP clock (``time_base = 1/clock_rate``); Matroska stores milliseconds.

Durability: FFmpeg's Matroska muxer keeps the current cluster in memory and
writes it when it closes; clusters are closed every ``CLUSTER_MS``
milliseconds (or 256 KB), and ``flush_packets`` pushes every write to the
kernel at once.  A ``kill -9`` therefore loses at most about one second,
and the part already written is a valid file without an index: FFmpeg,
browsers and VLC play it (unknown segment size).  A clean :meth:`close`
writes the duration and the cues (seek index).
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

__all__ = ["CLUSTER_MS", "TrackWriter", "opus_head"]

CLUSTER_MS = 1000
CLUSTER_BYTES = 256 * 1024


def opus_head(channels: int = 2, pre_skip: int = 0, rate: int = 48000) -> bytes:
    """The Opus identification header (RFC 7845, 5.1): Matroska's CodecPrivate."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, rate, 0, 0)


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(data: bytes, sequence: int, flags: int, granule: int = 0) -> bytes:
    lacing = bytes([255] * (len(data) // 255) + [len(data) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, 0x5EC0, sequence, 0, len(lacing))
    page = header + lacing + data
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def _opus_template() -> bytes:
    tags = b"OpusTags" + struct.pack("<I", 10) + b"conference" + struct.pack("<I", 0)
    silence = b"\xf8\xff\xfe"  # one 20 ms Opus frame of silence
    return (
        _ogg_page(opus_head(), 0, 0x02)
        + _ogg_page(tags, 1, 0x00)
        + _ogg_page(silence, 2, 0x04, granule=960)
    )


class TrackWriter:
    """One track's file.  Opened at the first frame (a keyframe for video)."""

    def __init__(self, path: Path, codec: str, clock_rate: int) -> None:
        if codec not in ("vp8", "h264", "opus"):
            raise ValueError(f"cannot record codec {codec!r}")
        self.path = path
        self.codec = codec
        self.clock_rate = clock_rate
        self.frames = 0
        self.bytes = 0
        self.first_timestamp: int | None = None  # extended RTP timestamp of pts 0
        self.last_pts = -1
        self.closed = False
        self._container: Any = None
        self._stream: Any = None
        self._time_base = Fraction(1, clock_rate)

    @property
    def opened(self) -> bool:
        return self._container is not None

    def _open(self, size: tuple[int, int] | None) -> None:
        fmt = "matroska" if self.codec == "h264" else "webm"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(
            str(self.path),
            "w",
            format=fmt,
            options={
                "cluster_time_limit": str(CLUSTER_MS),
                "cluster_size_limit": str(CLUSTER_BYTES),
            },
            container_options={"flush_packets": "1"},
        )
        try:
            stream: Any
            if self.codec == "opus":
                with av.open(io.BytesIO(_opus_template()), format="ogg") as template:
                    stream = container.add_stream_from_template(template.streams.audio[0])
            else:
                width, height = size or (0, 0)
                stream = container.add_mux_stream(self.codec, width=width, height=height)
            stream.time_base = self._time_base
            # the header is written at the first packet: PyAV takes H.264's SPS/PPS
            # (the codec private data) from it
        except Exception:
            container.close()
            raise
        self._container = container
        self._stream = stream

    def write(
        self, data: bytes, timestamp: int, keyframe: bool, size: tuple[int, int] | None = None
    ) -> bool:
        """Mux one frame at extended RTP ``timestamp``; False if it was skipped.

        A frame whose timestamp does not advance (a publisher restart, a
        duplicate) is skipped: Matroska needs increasing timestamps per track.
        """
        if self.closed:
            return False
        if self._container is None:
            if not keyframe or (self.codec != "opus" and size is None):
                return False  # a file starts with a keyframe that tells the picture size
            self._open(size)
            self.first_timestamp = timestamp
        assert self.first_timestamp is not None
        pts = timestamp - self.first_timestamp
        if pts <= self.last_pts:
            return False
        packet = av.Packet(data)
        packet.pts = pts
        packet.dts = pts
        packet.time_base = self._time_base
        packet.is_keyframe = keyframe
        packet.stream = self._stream
        self._container.mux_one(packet)
        self.last_pts = pts
        self.frames += 1
        self.bytes += len(data)
        return True

    @property
    def duration(self) -> float:
        """Seconds from the first to the last frame written."""
        return max(0, self.last_pts) / self.clock_rate

    def close(self) -> None:
        """Write the trailer (duration, cues); the file stays valid without it."""
        if self.closed:
            return
        self.closed = True
        if self._container is not None:
            container, self._container = self._container, None
            container.close()
