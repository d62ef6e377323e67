"""The server's CPU per ingress packet and per forwarded copy, in one process.

Real parts on 127.0.0.1: the server side is what a room uses (a publisher's
`ForwardingPeerConnection` whose `ForwardingReceiver` feeds a `Publication`; N
subscribers, each its own `ForwardingPeerConnection` with a `ForwardingSender`
and a `Subscription`), connected by ICE + DTLS to N + 1 client connections in the
same process.  The publisher's packets are SRTP-protected with the publisher's own
session (a 1,100-byte VP8 payload, MID + transport-wide sequence number + abs-send-time
extensions as Chromium sends them) and handed over where the server's event loop
(`conference.sfu.udp`, which this runs on) puts a datagram it has read into its
buffer: the socket's ``media`` hook (`conference.sfu.bridge.fast_ingress`) where the
bridge set one, else the ICE protocol's ``datagram_received``.  SRTP unprotect, RTP
parse, statistics, NACK bookkeeping, transport-cc feedback, the fan-out (rewrite,
history, SRTP protect, ``sendto``) all run for real, and the kernel's loopback
delivery of every copy is charged to the ``sendto`` that causes it, as on a server.

Only the server's synchronous work per datagram is timed (``time.thread_time``
around that hand-over); the clients receive later, outside the timed blocks (the
loop runs between bursts of packets).  Not timed: the ``recvfrom_into`` and the
event-loop turn that bring the datagram in.  With ``PYTHONPATH`` set, the
``conference`` package is taken from there (a "before" checkout beside this tree).

    python bench/perpacket.py [--subscribers 0,1,10,20,40] [--packets 6000] [--rounds 3]

Prints, per N, µs of CPU per incoming packet; ingress = the N=0 figure, per copy =
the slope (T(N) - T(0)) / N; writes bench/results/perpacket.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not os.environ.get("PYTHONPATH"):  # else the tree it names (a "before" checkout)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conference.sfu.bridge import (  # noqa: E402
    ABS_SEND_TIME_URI,
    MID_URI,
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    configure_ice_hosts,
)
from conference.sfu.publication import Publication  # noqa: E402
from conference.sfu.rtpwire import abs_send_time, build_rtp  # noqa: E402
from conference.sfu.subscription import Subscription  # noqa: E402

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
PAYLOAD = b"\x90\x80\x00" + bytes(1097)  # a VP8 interframe-sized payload (no keyframe)
KEYFRAME = b"\x10\x00\x00\x9d\x01\x2a" + bytes(1094)  # starts a VP8 keyframe (S=1, P=0)
BURST = 20  # packets per timed burst; the clients drain between bursts


async def connect(offerer: Any, answerer: Any) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Bench:
    def __init__(self) -> None:
        self.pcs: list[Any] = []
        self.subscriptions: list[Subscription] = []
        self.subscriber_receivers: list[ForwardingReceiver] = []
        self.deliver: Any = None
        self.protect: Any = None
        self.sender: Any = None
        self.receiver: Any = None
        self.publication: Any = None
        self.extension_ids: tuple[int, int | None, int | None] = (0, None, None)
        self.seq = 1000
        self.twcc = 1
        self.timestamp = 90000

    async def start(self) -> None:
        client = ForwardingPeerConnection()
        server = ForwardingPeerConnection()
        self.pcs += [client, server]
        client.addTransceiver("video", direction="sendonly")
        await connect(client, server)
        sender = client.getTransceivers()[0].sender
        receiver = server.getTransceivers()[0].receiver
        assert isinstance(sender, ForwardingSender) and isinstance(receiver, ForwardingReceiver)
        await wait_for(lambda: sender.started and sender._transport._tx_srtp is not None, "DTLS")
        self.sender = sender
        self.receiver = receiver
        self.publication = Publication("TR_b", "PA_b", "camera", receiver, "vp8", 90000)
        server_dtls = receiver.transport
        self.deliver = self._delivery(server_dtls.transport._connection)
        self.protect = sender._transport._tx_srtp.protect
        ids = sender.extension_ids
        self.extension_ids = (ids[MID_URI], ids.get(TWCC_URI), ids.get(ABS_SEND_TIME_URI))
        await wait_for(lambda: receiver._started, "the receiver")
        # a first packet (a keyframe) so that the receiver learns the SSRC
        self.send_one(KEYFRAME)
        await wait_for(lambda: receiver.packets_received > 0, "the first packet")

    async def add_subscriber(self) -> None:
        server = ForwardingPeerConnection()
        client = ForwardingPeerConnection()
        self.pcs += [server, client]
        transceiver = server.addTransceiver("video", direction="sendonly")
        await connect(server, client)
        sender = transceiver.sender
        assert isinstance(sender, ForwardingSender)
        await wait_for(lambda: sender.started and sender._nominated.get(1) is not None, "ICE")
        subscription = Subscription(f"SU_{len(self.subscriptions)}", "PA_x", sender, "video")
        subscription.switch_to(self.publication)
        self.subscriptions.append(subscription)
        receiver = client.getTransceivers()[0].receiver
        self.subscriber_receivers.append(receiver)
        self.send_one(KEYFRAME)  # the subscription starts on a keyframe
        await wait_for(lambda: subscription.source is self.publication, "the subscription")
        await wait_for(lambda: receiver.packets_received > 0, "the subscriber's first packet")

    def datagram(self, payload: bytes) -> bytes:
        mid_id, twcc_id, abs_id = self.extension_ids
        extensions: list[tuple[int, bytes]] = [(mid_id, self.sender.mid.encode())]
        if twcc_id is not None:
            extensions.append((twcc_id, self.twcc.to_bytes(2, "big")))
            self.twcc = (self.twcc + 1) & 0xFFFF
        if abs_id is not None:
            extensions.append((abs_id, abs_send_time(time.time())))
        data = build_rtp(
            self.sender.payload_type,
            True,
            self.seq,
            self.timestamp,
            self.sender.ssrc,
            payload,
            tuple(extensions),
        )
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 3000) & 0xFFFFFFFF
        return self.protect(data)

    @staticmethod
    def _delivery(connection: Any) -> Any:
        """What the server's event loop does with a datagram it read into its buffer
        (`conference.sfu.udp`'s transport, minus ``recvfrom_into``): hand it to the
        socket's ``media`` hook where the bridge set one, else to the protocol."""
        pair = connection._nominated[1]
        protocol, transport, addr = pair.protocol, pair.protocol.transport, pair.remote_addr
        buffer = memoryview(bytearray(65536))

        def deliver(data: bytes, _component: int = 1) -> None:
            size = len(data)
            buffer[:size] = data
            media = getattr(transport, "media", None)
            if media is not None and media(buffer, size):
                return
            protocol.datagram_received(bytes(buffer[:size]), addr)

        return deliver

    def send_one(self, payload: bytes) -> None:
        self.deliver(self.datagram(payload), 1)

    async def measure(self, packets: int) -> float:
        """µs of the server's CPU per incoming packet."""
        spent = 0.0
        deliver = self.deliver
        for _ in range(packets // BURST):
            batch = [self.datagram(PAYLOAD) for _ in range(BURST)]
            started = time.thread_time()
            for data in batch:
                deliver(data, 1)
            spent += time.thread_time() - started
            await self.drain()
        return spent / (packets // BURST * BURST) * 1e6

    async def drain(self) -> None:
        """Let every client receive what was sent (a client that falls behind would
        make the kernel drop copies, and a dropped copy costs the sender less)."""
        sent = [s.sender.packets_sent for s in self.subscriptions]
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.001)
            if all(
                r.packets_received >= n
                for r, n in zip(self.subscriber_receivers, sent, strict=True)
            ):
                return

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()


async def run(counts: list[int], packets: int, rounds: int) -> dict[str, Any]:
    configure_ice_hosts(["127.0.0.1"])
    bench = Bench()
    await bench.start()
    results: dict[str, Any] = {"per_packet_us": {}}
    try:
        for count in counts:
            while len(bench.subscriptions) < count:
                await bench.add_subscriber()
            await bench.measure(packets // 4)  # warm-up
            before = [r.packets_received for r in bench.subscriber_receivers]
            samples = [await bench.measure(packets) for _ in range(rounds)]
            await asyncio.sleep(0.3)
            after = [r.packets_received for r in bench.subscriber_receivers]
            got = min((a - b for a, b in zip(after, before, strict=True)), default=0)
            expected = packets * rounds
            value = statistics.median(samples)
            results["per_packet_us"][str(count)] = value
            print(
                f"N={count:3d}  {value:7.2f} µs per incoming packet  "
                f"(rounds {', '.join(f'{s:.2f}' for s in samples)}; "
                f"each subscriber got >= {got} of {expected})",
                flush=True,
            )
    finally:
        await bench.close()
    table = results["per_packet_us"]
    base = table.get("0")
    if base is not None:
        results["ingress_us"] = base
        slopes = {n: (v - base) / int(n) for n, v in table.items() if int(n) > 0}
        results["per_copy_us"] = slopes
        print(f"ingress: {base:.2f} µs per packet")
        for n, slope in slopes.items():
            print(f"per forwarded copy at N={n}: {slope:.2f} µs")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="0,1,10,20,40")
    parser.add_argument("--packets", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="bench/results/perpacket.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.subscribers.split(",") if n.strip()]
    from conference.sfu.udp import PortRangeEventLoop  # the server's event loop

    with asyncio.Runner(loop_factory=PortRangeEventLoop) as runner:
        result = runner.run(run(counts, args.packets, args.rounds))
    result |= {"packets": args.packets, "rounds": args.rounds}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
