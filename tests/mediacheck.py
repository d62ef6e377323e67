"""Reading what a decoding test client received."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from conference.tools.client import Client
from conference.tools.testmedia import audio_samples, dominant_frequency, read_barcode


def drain(track: Any) -> None:
    """Forget frames decoded earlier and not read (aiortc queues them all)."""
    queue = getattr(track, "_queue", None)
    while queue is not None and not queue.empty():
        if queue.get_nowait() is None:  # end of track: keep the marker
            queue.put_nowait(None)
            break


async def frames_for(track: Any, seconds: float, fresh: bool = True) -> list[Any]:
    """The frames decoded during ``seconds`` from now (older queued ones dropped)."""
    if fresh:
        drain(track)
    frames: list[Any] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = await asyncio.wait_for(track.recv(), max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        frames.append(frame)
    return frames


async def video_numbers(track: Any, seconds: float) -> list[int | None]:
    """Barcode numbers of the frames decoded during ``seconds`` from now."""
    return [read_barcode(frame) for frame in await frames_for(track, seconds)]


async def video_numbers_no_drain(track: Any, seconds: float) -> list[int | None]:
    """Like :func:`video_numbers`, keeping the frames already queued."""
    return [read_barcode(frame) for frame in await frames_for(track, seconds, fresh=False)]


async def audio_frequency(track: Any, seconds: float) -> float:
    """Dominant frequency of the audio decoded during ``seconds``."""
    frames = await frames_for(track, seconds)
    if not frames:
        return 0.0
    samples = np.concatenate([audio_samples(frame) for frame in frames])
    return dominant_frequency(samples, frames[-1].sample_rate)


async def wait_tracks(client: Client, count: int, timeout: float = 15.0) -> None:
    await client.wait_for(lambda: len(client.tracks) >= count, timeout)


async def wait_track(
    client: Client, participant_id: str, source: str, timeout: float = 15.0
) -> Any:
    """Wait until ``client`` receives ``source`` of ``participant_id``; return the track."""

    def received() -> bool:
        try:
            track_for(client, participant_id, source)
        except KeyError:
            return False
        return True

    await client.wait_for(received, timeout)
    return track_for(client, participant_id, source)


def track_for(client: Client, participant_id: str, source: str) -> Any:
    for participant in client.room.get("participants", []):
        if participant["id"] != participant_id:
            continue
        for publication in participant["publications"]:
            if publication["source"] == source and publication["id"] in client.tracks:
                return client.tracks[publication["id"]]
    raise KeyError(f"{participant_id} has no received {source}")


def increasing(numbers: list[int | None]) -> bool:
    seen = [n for n in numbers if n is not None]
    return all(b > a for a, b in zip(seen, seen[1:], strict=False))
