"""Audio slots: a page receives the meeting's microphones on a few fixed tracks.

A page that subscribes to every microphone has one m-line per microphone in its
subscriber connection: a province's briefing of 150 communes puts 150 audio m-lines in
every page's SDP, and every point that joins renegotiates every page (each offer and
answer costs the server ~0.5 ms per m-line: 100 pages x 150 m-lines is ~7 s of one core
per join, and a generator or a phone answering 150-line offers falls behind).  Yet the
room forwards only a few microphones at a time (the audio gate, `.audiogate`: at most
four open ones, the chair's and the floor holder's besides).

So a page may ask for :data:`SLOTS` audio **slots** instead (``audioSlots`` at join,
docs/PROTOCOL.md): fixed audio tracks negotiated once, onto which the room maps the
microphones it forwards.  `AudioSlots` is that map, the same for every page of the room
(one decision, then every page's slot subscription switches its source: the sequence
numbers and timestamps continue, `.subscription`): a microphone whose packet goes out
keeps its slot, or takes a free one, or the one whose microphone has been silent
longest (at least :data:`HOLD` seconds: a slot is never taken from a microphone that is
speaking).  When all slots carry speech, a further microphone is not heard on the
slots until one falls silent (the gate's four open places plus the chair and the floor
holder fit in eight).  Jitsi's videobridge does the same for large meetings ("SSRC
rewriting"): a client receives a fixed set of streams and is told which source each
carries.

Pure: the caller gives the time.
"""

from __future__ import annotations

#: the audio tracks a page receives in slots mode
SLOTS = 8
#: a slot whose microphone forwarded a packet this recently (s) is not taken from it
#: (Opus sends a packet every 20 ms, in DTX every 400 ms at most: longer is a pause)
HOLD = 0.5


class AudioSlots:
    """Which microphone each slot carries (see the module doc)."""

    __slots__ = ("count", "keys", "last", "_slot_of", "moves")

    def __init__(self, count: int = SLOTS) -> None:
        self.count = count
        #: slot -> the microphone (publication id) it carries, or None
        self.keys: list[str | None] = [None] * count
        #: slot -> when its microphone last forwarded a packet
        self.last: list[float] = [float("-inf")] * count
        self._slot_of: dict[str, int] = {}
        #: how often a microphone got a slot (a switch on every page in slots mode)
        self.moves = 0

    def place(self, key: str, now: float, sound: bool = True) -> tuple[int | None, bool]:
        """The slot of microphone ``key`` whose packet is forwarded at ``now``, and
        whether it was just given it (then every page's slot switches its source).
        Only a packet with ``sound`` renews a slot or takes one: a microphone the room
        always forwards (the chair's, the floor holder's) sends near-silence, or DTX
        packets, all the time, and would keep its slot for good.  (None, False) when
        there is no sound, or every slot carries a microphone heard within :data:`HOLD`."""
        slot = self._slot_of.get(key)
        if slot is not None:
            if sound:
                self.last[slot] = now
            return slot, False
        if not sound:
            return None, False
        oldest = None
        for index, held in enumerate(self.keys):
            if held is None:
                oldest = index
                break
            if now - self.last[index] >= HOLD and (
                oldest is None or self.last[index] < self.last[oldest]
            ):
                oldest = index
        if oldest is None:
            return None, False
        previous = self.keys[oldest]
        if previous is not None:
            del self._slot_of[previous]
        self.keys[oldest] = key
        self.last[oldest] = now
        self._slot_of[key] = oldest
        self.moves += 1
        return oldest, True

    def slot_of(self, key: str) -> int | None:
        return self._slot_of.get(key)

    def forget(self, key: str) -> int | None:
        """Microphone ``key`` is gone: its slot is free; returns that slot."""
        slot = self._slot_of.pop(key, None)
        if slot is not None:
            self.keys[slot] = None
            self.last[slot] = float("-inf")
        return slot
