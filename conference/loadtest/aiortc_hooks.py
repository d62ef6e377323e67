"""The load tester's only contact with aiortc internals (aiortc is pinned, see pyproject).

Simulated points send pre-encoded packets through stock ``RTCRtpSender`` s and
receive through :class:`conference.sfu.bridge.ForwardingReceiver`.  Three
behaviours of a browser need a hook:

* :func:`honour_keyframe_requests`: ``RTCRtpSender`` answers a PLI/FIR by
  calling its ``_send_keyframe()``, which only sets a flag for its encoder;
  pre-encoded packets bypass the encoder.  The hook also tells the track.
* :func:`attach_audio_levels`: ``RTCRtpSender._next_encoded_frame()`` fills
  ``RTCEncodedFrame.audio_level`` (dBov, <= 0) only for frames it encodes;
  the hook fills it for pre-encoded Opus packets from the track's level.
* :func:`light_receiver`: the receive-side bandwidth estimator (pure Python,
  ~10 % of a load-test process) feeds REMB to the server, which ignores a
  subscriber's REMB; the hook switches it off.

``tests/test_loadtest.py`` pins these names, so an aiortc upgrade that changes
them fails there.  These belong in :mod:`conference.sfu.bridge` (the project's
one aiortc-internals module) once its owners accept them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.rtcrtpsender import RTCRtpSender

__all__ = ["attach_audio_levels", "honour_keyframe_requests", "light_receiver"]


def honour_keyframe_requests(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the remote side asks ``sender`` for a keyframe."""
    original: Callable[[], None] = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


def attach_audio_levels(sender: RTCRtpSender, level: Callable[[], int]) -> None:
    """Give pre-encoded audio frames of ``sender`` the RFC 6464 level ``level()``.

    ``level()`` is read right after the track returned the packet (0 loudest,
    127 silence) and goes into the ``ssrc-audio-level`` header extension.
    """
    original: Callable[[Any], Awaitable[Any]] = sender._next_encoded_frame

    async def next_encoded_frame(codec: Any) -> Any:
        frame = await original(codec)
        if frame is not None and frame.audio_level is None:
            frame.audio_level = -level()
        return frame

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]


def light_receiver(receiver: Any) -> None:
    """Switch off the REMB estimator of a client-side ``ForwardingReceiver``."""
    if hasattr(receiver, "_remb"):
        receiver._remb = None
