"""Which microphones of a room reach their subscribers: at most a few at a time.

Every page of a meeting receives every microphone (it must hear whoever speaks: on a
track of its own, or in an audio slot, `.audioslots`), so a room of N points forwards
N x (N - 1) audio streams: at 20 points with open
microphones that is 21,000 packets a second and 1.7-1.9 times the server CPU of the
rest of the briefing (docs/BENCHMARKS.md), and it grows with the square of N.  Yet
a briefing has one speaker at a time, two when someone interrupts.

`AudioGate` decides, packet by packet, from the audio level each packet carries
(RFC 6464, 0 dBov loudest .. 127 silence), whether a microphone's packet goes to its
subscribers:

* a microphone is **open** while it carries sound (a level below
  :data:`SOUND_LEVEL`), and for :data:`HANGOVER` seconds after (the pauses between
  words and sentences);
* at most :data:`MAX_OPEN` microphones are open at once; one that starts carrying
  sound when all places are taken gets the place of the quietest open one (its
  recent level :data:`EVICT_MARGIN` dB above), otherwise it waits;
* **always open**: those without a level (an encoder that does not send the
  extension: nothing to judge by); and the room (`Room._admit_audio`) lets the
  chair's and the floor holder's microphones through without asking the gate, and
  asks it only when it has more than :data:`GATE_FROM` microphones.

A closed microphone's packets are not forwarded (the recorder and the other nodes
still get them: see `Publication.on_rtp`); when it opens again its subscribers'
numbering continues without a gap and the first packet carries the marker bit, as
after an encoder's own silence suppression (RFC 3551, section 4.1; Opus DTX): a
receiver plays silence, it does not count loss.
"""

from __future__ import annotations

from dataclasses import dataclass

#: a packet whose level is below this (dBov) carries sound; above, near-silence.  Well
#: above the speaker detector's 50 dBov: a quiet voice still opens the microphone
SOUND_LEVEL = 70
#: a microphone stays open this long after its last packet with sound (seconds)
HANGOVER = 1.0
#: at most this many microphones are open at once (the always-open ones not counted)
MAX_OPEN = 4
#: a room with at most this many microphones forwards them all (`Room._admit_audio`):
#: there the square is small, and nothing risks cutting a word
GATE_FROM = 8
#: a microphone takes the place of an open one at least this much quieter (dB)
EVICT_MARGIN = 6.0
#: the recent level is an average over about this many packets (20 ms each)
SMOOTHING = 10


@dataclass
class _Open:
    until: float
    level: float


class AudioGate:
    """The open microphones of one room (see the module doc)."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.max_open = max_open
        self._open: dict[str, _Open] = {}
        #: recent level of every microphone with sound lately (lower: louder)
        self._levels: dict[str, float] = {}
        self.evictions = 0

    def admit(self, key: str, level: int | None, now: float) -> bool:
        """Whether the packet of microphone ``key`` with ``level`` (None: the packet
        carries no level) received at ``now`` goes to its subscribers."""
        if level is None:
            return True
        recent = self._levels.get(key)
        recent = float(level) if recent is None else recent + (level - recent) / SMOOTHING
        self._levels[key] = recent
        current = self._open.get(key)
        if current is not None and current.until <= now:
            del self._open[key]
            current = None
        if level >= SOUND_LEVEL:
            if current is None:
                if recent >= SOUND_LEVEL:
                    self._levels.pop(key, None)  # silent for a while: forgotten
                return False
            current.level = recent
            return True
        if current is not None:
            current.until = now + HANGOVER
            current.level = recent
            return True
        self._expire(now)
        if len(self._open) >= self.max_open:
            # the newcomer by this packet (a voice starting is loud at once), the open
            # ones by their recent level
            quietest_key = max(self._open, key=lambda k: self._open[k].level)
            if min(recent, level) > self._open[quietest_key].level - EVICT_MARGIN:
                return False
            del self._open[quietest_key]
            self.evictions += 1
        self._open[key] = _Open(now + HANGOVER, recent)
        return True

    def forget(self, key: str) -> None:
        """The microphone ``key`` is gone."""
        self._open.pop(key, None)
        self._levels.pop(key, None)

    def is_open(self, key: str, now: float) -> bool:
        current = self._open.get(key)
        return current is not None and current.until > now

    def _expire(self, now: float) -> None:
        for key in [k for k, state in self._open.items() if state.until <= now]:
            del self._open[key]
