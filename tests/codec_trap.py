"""Run ``conference`` with every aiortc codec factory booby-trapped.

The forwarding path must never decode or encode.  The test suite starts the
server through this wrapper: any attempt to create an aiortc encoder or decoder
raises inside the server and is written to the file named by
``CONFERENCE_CODEC_TRAP``, which the fixture checks after each test.  The wrapper
also makes password hashing cheap in the tests' servers (`cheap_password_hashing`).
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


def cheap_password_hashing() -> Any:
    """Hash passwords with argon2id's cheapest parameters; returns the hasher it replaced.

    The production hasher (RFC 9106 low-memory: 64 MiB, 3 passes, 4 lanes) costs ~0.3 s
    of CPU per hash or verification, and the suite makes ~600 of them (every server's
    first-run administrator, every account a test creates or signs in).  Only the tests
    lower it: in the test processes (tests/conftest.py) and in the servers they start
    through this wrapper; tests/domain/test_accounts.py checks the production parameters.
    Hashes stay argon2id PHC strings; ones made with other parameters (by a CLI
    subprocess) still verify, and are replaced at the next sign-in, as in production.
    """
    import dataclasses

    from argon2 import PasswordHasher, profiles

    from conference.domain import accounts

    production = accounts._hasher
    accounts._hasher = PasswordHasher.from_parameters(
        dataclasses.replace(profiles.RFC_9106_LOW_MEMORY, time_cost=1, memory_cost=8, parallelism=1)
    )
    return production


if __name__ == "__main__":
    install()
    cheap_password_hashing()
    from conference.cli import main

    sys.exit(main(sys.argv[1:]))
