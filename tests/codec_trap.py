"""Run ``conference`` with every aiortc codec factory booby-trapped.

The forwarding path must never decode or encode.  The test suite starts the
server through this wrapper: any attempt to create an aiortc encoder or decoder
raises inside the server and is written to the file named by
``CONFERENCE_CODEC_TRAP``, which the fixture checks after each test.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

import aiortc.codecs
import aiortc.codecs.h264
import aiortc.codecs.opus
import aiortc.codecs.vpx
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender

TRAP_FILE = os.environ.get("CONFERENCE_CODEC_TRAP")


def _trap(name: str) -> Any:
    def trapped(*args: Any, **kwargs: Any) -> NoReturn:
        if TRAP_FILE:
            with open(TRAP_FILE, "a") as f:
                f.write(f"{name} called\n{''.join(traceback.format_stack(limit=8))}\n")
        raise RuntimeError(f"codec trap: {name} called on the forwarding server")

    return trapped


def install() -> None:
    for module in (aiortc.codecs, aiortc.rtcrtpreceiver, aiortc.rtcrtpsender):
        for name in ("get_decoder", "get_encoder"):
            if hasattr(module, name):
                setattr(module, name, _trap(f"{module.__name__}.{name}"))
    for cls in (
        aiortc.codecs.vpx.Vp8Decoder,
        aiortc.codecs.vpx.Vp8Encoder,
        aiortc.codecs.h264.H264Decoder,
        aiortc.codecs.h264.H264Encoder,
        aiortc.codecs.opus.OpusDecoder,
        aiortc.codecs.opus.OpusEncoder,
    ):
        cls.__init__ = _trap(f"{cls.__name__}.__init__")  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from conference.cli import main

    sys.exit(main(sys.argv[1:]))
