"""DTLS on the system's OpenSSL (conference/sfu/sysdtls.py) against aiortc's own.

    python bench/dtls.py [--handshakes 300] [--connections 150] [--rounds 3]

Two measurements, each alternating the two stacks round by round in this one
process (so both see the same machine load):

* **handshake**: one DTLS 1.2 handshake over memory BIOs, datagram by datagram,
  as aiortc drives it, plus what aiortc calls after it (peer certificate, SRTP
  key export, close): CPU time (``time.process_time``) per handshake, both
  ends included, and malloc's bytes in use (glibc ``mallinfo2``) after the run
  minus before it.  ``stock``: pyOpenSSL on the OpenSSL bundled in
  ``cryptography`` at both ends; ``system``: the shim at both ends (P-256),
  ``system-p224``: one end with FFmpeg's P-224 certificate.
* **connection**: a stock aiortc sender offering audio to a
  ``ForwardingPeerConnection`` (``system_dtls`` off or on) over loopback ICE, up to
  ``connected``, then both closed: CPU per connection (ICE, DTLS, SRTP setup,
  both peers) and the heap 3 s after the last one (the tasks aiortc and aioice
  leave behind a closed connection end meanwhile), with the count of
  ``sysdtls.Connection`` objects still alive then.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from OpenSSL import SSL  # noqa: E402

from conference.sfu import sysdtls  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def heap() -> int:
    gc.collect()
    return int(_libc.mallinfo2().uordblks)


def handshakes(kind: str, count: int) -> tuple[float, int]:
    from tests.sfu.test_sysdtls import P224, P256, P256_OTHER, flush, handshake, shim, stock

    def once() -> None:
        if kind == "stock":
            client, server = stock(P256), stock(P256_OTHER)
        elif kind == "system":
            client, server = shim(P256), shim(P256_OTHER)
        else:
            client, server = shim(P224), shim(P256)
        handshake(client, server)
        server.get_peer_certificate(as_cryptography=True)
        client.export_keying_material(b"EXTRACTOR-dtls_srtp", 88)
        client.shutdown()
        flush(client, server)

    for _ in range(20):
        once()
    before, start = heap(), time.process_time()
    for _ in range(count):
        once()
    cpu = (time.process_time() - start) / count
    return cpu, heap() - before


async def connections(system_dtls: bool, count: int) -> tuple[float, int, int]:
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    from conference.sfu.bridge import ForwardingPeerConnection

    async def once() -> None:
        peer = RTCPeerConnection()
        peer.addTrack(AudioStreamTrack())
        server = ForwardingPeerConnection(system_dtls=system_dtls)
        await peer.setLocalDescription(await peer.createOffer())
        await server.setRemoteDescription(peer.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        await peer.setRemoteDescription(server.localDescription)
        while server.connectionState not in ("connected", "failed"):
            await asyncio.sleep(0.005)
        assert server.connectionState == "connected"
        await peer.close()
        await server.close()

    for _ in range(10):
        await once()
    before, start = heap(), time.process_time()
    for _ in range(count):
        await once()
    cpu = (time.process_time() - start) / count
    await asyncio.sleep(3)  # aiortc's and aioice's tasks of the last ones end
    grown = heap() - before  # (after a full collection: aiortc's objects are in cycles)
    alive = sum(1 for o in gc.get_objects() if isinstance(o, sysdtls.Connection))
    return cpu, grown, alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--connections", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    library = sysdtls.load()
    if library is None:
        sys.exit(f"no usable system OpenSSL: {sysdtls.unavailable_reason()}")
    print(f"system: {library.version_text}; bundled: {SSL.OpenSSL_version(SSL.OPENSSL_VERSION)}")
    from conference.sfu.bridge import configure_ice_hosts

    configure_ice_hosts(["127.0.0.1"])
    for round_ in range(1, args.rounds + 1):
        for kind in ("stock", "system", "system-p224"):
            cpu, grown = handshakes(kind, args.handshakes)
            print(
                f"round {round_} handshake {kind:12} {cpu * 1000:6.2f} ms CPU, "
                f"heap {grown / 1024:+7.1f} KiB after {args.handshakes}"
            )
        for system_dtls in (False, True):
            cpu, grown, alive = asyncio.run(connections(system_dtls, args.connections))
            name = "system" if system_dtls else "stock"
            print(
                f"round {round_} connection {name:11} {cpu * 1000:6.2f} ms CPU, "
                f"heap {grown / 1024:+7.1f} KiB after {args.connections}, "
                f"{alive} sysdtls connections alive"
            )


if __name__ == "__main__":
    main()
