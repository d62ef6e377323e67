"""What relaying a publication to another node costs, per packet (conference/sfu/relay.py).

In one process, on 127.0.0.1: a publication on the exporting node, imported by a second
endpoint whose publication has one subscriber-like tap.  CPU time (``time.process_time``)
of N packets of a 1,100-byte video payload through:

* ``fan-out``: the exporting publication's ``on_rtp`` with no relay (the baseline: what a
  local packet costs before any subscription);
* ``export``: the same with one importing node (the relay body, its HMAC tag, the
  history, one ``sendto``): the exporting node's cost per packet and node;
* ``import``: the importing endpoint's ``datagram_received`` for the same datagrams
  (tag check, header parse, an RTP packet built, loss tracking, its publication's
  ``on_rtp``): the importing node's cost per relayed packet, before its subscriptions.

    python bench/relay.py [--packets 50000] [--rounds 5]

Prints µs per packet (the median of the rounds) and writes bench/results/relay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from conference.sfu import relay
from conference.sfu.bridge import RtpPacket
from conference.sfu.publication import Publication

KEY = relay.relay_key("bench-secret-" + "x" * 40)
PAYLOAD = b"\x90\x80\x00" + bytes(1097)  # a VP8 interframe-sized payload, no keyframe


class Source:
    kind = "video"
    rids: list[str] = []
    sink: Any = None

    def request_keyframe(self, layer: int = 0) -> None:
        pass


def packets(count: int) -> list[RtpPacket]:
    return [
        RtpPacket(payload_type=96, sequence_number=i & 0xFFFF, timestamp=i * 3000, payload=PAYLOAD)
        for i in range(count)
    ]


async def run_once(count: int) -> dict[str, float]:
    origin, node = relay.RelayEndpoint(KEY), relay.RelayEndpoint(KEY)
    await origin.start("127.0.0.1")
    await node.start("127.0.0.1")
    try:
        published = Publication("TR_b", "PA_b", "camera", Source(), "vp8", 90000)
        stream = origin.export(published)
        receiver = node.import_stream(origin.address, stream, "video", [])
        imported = Publication("TR_b", "PA_b", "camera", receiver, "vp8", 90000)
        seen = [0]
        imported.taps.append(lambda _p, _pk, _kf: seen.__setitem__(0, seen[0] + 1))
        batch = packets(count)

        started = time.process_time()
        for packet in batch:
            published.on_rtp(packet, False)
        fan_out = time.process_time() - started

        node.want_now(receiver)
        deadline = time.monotonic() + 2
        while not published.relays and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert published.relays, "the node's WANT did not arrive"
        sent: list[bytes] = []
        transport = origin.transport
        assert transport is not None
        real_sendto = transport.sendto
        transport.sendto = lambda data, address=None: sent.append(data)  # type: ignore[method-assign,assignment,misc]
        started = time.process_time()
        for packet in batch:
            published.on_rtp(packet, False)
        exported = time.process_time() - started
        transport.sendto = real_sendto  # type: ignore[method-assign]
        # (the captured datagrams are also what a real sendto would have sent)
        send_cost = _sendto_cost(real_sendto, sent[:5000], node.address)

        started = time.process_time()
        for data in sent:
            node.datagram_received(data, origin.address)
        imported_time = time.process_time() - started
        assert seen[0] == len(sent), (seen[0], len(sent))
        return {
            "fan_out_us": fan_out / count * 1e6,
            "export_us": (exported - fan_out) / count * 1e6 + send_cost,
            "import_us": imported_time / count * 1e6,
        }
    finally:
        origin.close()
        node.close()


def _sendto_cost(sendto: Any, sample: list[bytes], address: relay.Address) -> float:
    """µs of CPU per datagram for the kernel send, measured on a sample."""
    started = time.process_time()
    for data in sample:
        sendto(data, address)
    return (time.process_time() - started) / max(1, len(sample)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="bench/results/relay.json")
    args = parser.parse_args()
    rounds = [asyncio.run(run_once(args.packets)) for _ in range(args.rounds)]
    result = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result |= {"packets": args.packets, "rounds": args.rounds}
    for key in ("fan_out_us", "export_us", "import_us"):
        print(f"{key:12s} {result[key]:7.2f} µs per packet")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
