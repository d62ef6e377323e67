"""Fuzz `PacketMap` (conference/sfu/packetmap.py) with random sequences of operations.

Each input drives one map through ``map``, ``drop``, ``resume`` and ``reverse`` calls and
checks what its docstrings promise after every call:

* a new packet ahead by ``d <= restart_threshold`` maps to ``last_out + d`` (a gap stays
  visible); a larger forward jump, or a backward one beyond 8192, re-anchors at
  ``last_out + 1``; a packet further behind than the window maps to None;
* mapping the same packet again gives the same answer, and ``reverse`` of an answer is the
  packet (the NACK translation);
* ``drop`` of the newest (or a newer) packet makes it unmappable and shifts what follows
  down by one; ``resume`` continues at ``last_out + 1``;
* two different incoming packets never get the same outgoing number (within half the
  16-bit space of each other), whatever the order of arrival.
"""

from __future__ import annotations

import atheris
import common

with common.instrumented():
    from conference.sfu.packetmap import BACKWARD_RESTART_THRESHOLD, PacketMap

MASK = 0xFFFF


def _diff(a: int, b: int) -> int:
    d = (a - b) & MASK
    return d - 0x10000 if d >= 0x8000 else d


class Model:
    """What the test knows of the map: the newest incoming number, the outputs given."""

    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        first_in = fdp.ConsumeIntInRange(0, MASK)
        first_out = fdp.ConsumeIntInRange(0, MASK)
        self.window = fdp.ConsumeIntInRange(1, 4096)
        self.restart = fdp.ConsumeIntInRange(1, 6000)
        self.map = PacketMap(
            first_in, first_out, window=self.window, restart_threshold=self.restart
        )
        self.high = first_in  # newest incoming number (16-bit)
        self.out_ext = 0  # outputs, unwrapped, relative to the first last_out
        self.last_out = self.map.last_out
        assert self.last_out == first_out
        # outgoing number -> (incoming number, unwrapped output) of packets forwarded
        self.given: dict[int, tuple[int, int]] = {}

    def _record(self, seq: int, out: int) -> None:
        ext = self.out_ext + _diff(out, self.last_out)
        previous = self.given.get(out)
        if previous is not None and previous[0] != seq and abs(previous[1] - ext) < 0x8000:
            raise AssertionError(f"incoming {seq} and {previous[0]} both map to outgoing {out}")
        self.given[out] = (seq, ext)

    def _moved(self) -> None:
        """Follow ``last_out`` after a call that may move it."""
        now = self.map.last_out
        self.out_ext += _diff(now, self.last_out)
        self.last_out = now

    def do_map(self, seq: int) -> None:
        before = self.last_out
        d = (seq - self.high) & MASK
        back = d - 0x10000
        out = self.map.map(seq)
        assert out is None or 0 <= out <= MASK, out
        moves = False
        if 0 < d <= self.restart:
            assert out == (before + d) & MASK, (seq, d, before, out)
            self.high = seq
            moves = True
        elif self.restart < d < 0x8000 or (d >= 0x8000 and back < -BACKWARD_RESTART_THRESHOLD):
            assert out == (before + 1) & MASK, ("re-anchor", seq, d, before, out)
            self.high = seq
            self.given.clear()  # what came before is forgotten
            moves = True
        elif d >= 0x8000 and back < -self.window:
            assert out is None, ("older than the window", seq, back, out)
        self._moved()
        if moves:
            assert self.last_out == out, (self.last_out, out)
        else:
            assert self.last_out == before
        if out is not None:
            self._record(seq, out)
            assert self.map.map(seq) == out, "a duplicate maps differently"
            assert self.map.reverse(out) == seq, (out, self.map.reverse(out), seq)

    def do_drop(self, seq: int) -> None:
        before = self.last_out
        d = (seq - self.high) & MASK
        dropped_before = self.map.map(seq) is None if d == 0 else False
        self.map.drop(seq)
        if d >= 0x8000:
            self._moved()
            assert self.last_out == before, "dropping an older packet changed the numbering"
            return
        if 0 < d <= self.restart:
            expected = before + d - 1
        elif d > self.restart:
            expected = before  # re-anchored at before + 1, then dropped
            self.given.clear()
        else:
            expected = before if dropped_before else before - 1
        self.high = seq
        self._moved()
        assert self.last_out == expected & MASK, (seq, d, before, self.last_out)
        assert self.map.map(seq) is None, "a dropped packet still maps"
        # the caller forwards nothing for it: its number (if it had one) is free again
        for out, (incoming, _) in list(self.given.items()):
            if incoming == seq:
                del self.given[out]

    def do_resume(self, seq: int) -> None:
        before = self.last_out
        out = self.map.resume(seq)
        assert out == (before + 1) & MASK, (before, out)
        self.high = seq
        self.given.clear()
        self._moved()
        assert self.last_out == out
        self._record(seq, out)
        assert self.map.map(seq) == out

    def do_reverse(self, out: int) -> None:
        incoming = self.map.reverse(out)
        if incoming is None:
            return
        assert 0 <= incoming <= MASK
        assert _diff(incoming, self.high) <= 0, "reverse names a packet not seen yet"
        assert self.map.map(incoming) == out, ("reverse", out, incoming)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    model = Model(fdp)
    for _ in range(400):
        if fdp.remaining_bytes() == 0:
            break
        op = fdp.ConsumeIntInRange(0, 7)
        near = fdp.ConsumeIntInRange(-64, 64)
        if op <= 2:  # mostly in order, some late, lost or repeated
            model.do_map((model.high + (abs(near) if op else near)) & MASK)
        elif op == 3:
            model.do_map(fdp.ConsumeIntInRange(0, MASK))
        elif op == 4:
            model.do_drop((model.high + near) & MASK)
        elif op == 5:
            model.do_resume((model.high + near * 97) & MASK)
        elif op == 6:
            model.do_reverse((model.last_out + near) & MASK)
        else:
            model.do_reverse(fdp.ConsumeIntInRange(0, MASK))


SEEDS = [
    bytes(range(64)),
    b"\x00\x00\xff\xff\x04\x00\x0b\xb8" + b"\x01\x41" * 40 + b"\x04\x41\x01\x41\x06\x30",
    b"\xff\xf0\x00\x10\x00\x10\x00\x20" + b"\x00\x3f\x01\x42\x03\xff\x7f\x05\x50\x07\x00" * 20,
]

if __name__ == "__main__":
    common.run("packetmap", test_one_input, SEEDS)
