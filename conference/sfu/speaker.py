"""Dominant speaker detection from RFC 6464 audio levels.

Senders put the level of each audio packet in the ``ssrc-audio-level``
header extension: 0 is the loudest (0 dBov) and 127 is silence
(-127 dBov).  `SpeakerDetector` turns a stream of such levels per
participant into a single *current* speaker, with enough hysteresis that
the video layout does not flap on coughs, short interjections, or two
people talking over each other.
"""

from collections import deque

#: A participant whose last observation is older than this is silent
#: (senders using DTX stop sending packets when silent).
RECENT = 0.3


class _Speaker:
    __slots__ = ("obs", "loud", "level_sum", "last", "since")

    def __init__(self) -> None:
        self.obs: deque[tuple[float, int]] = deque()
        self.loud = 0
        self.level_sum = 0
        self.last = float("-inf")
        # Start of the current continuous speaking period, None if silent.
        self.since: float | None = None

    def prune(self, limit: float, threshold: int) -> None:
        obs = self.obs
        while obs and obs[0][0] <= limit:
            level = obs.popleft()[1]
            self.level_sum -= level
            if level < threshold:
                self.loud -= 1


class SpeakerDetector:
    """Pick the dominant speaker among participants, with hysteresis.

    `observe` is fed the RFC 6464 level (0..127, smaller is louder) of
    every audio packet of every participant, about 50 times a second each,
    with a monotonic time in seconds; `update` is called periodically (say
    every 100 ms) and reports whether `current` changed.

    A participant is *speaking* when, over the last ``window`` seconds, at
    least half of its observations were louder than ``threshold_dbov``
    (level < threshold_dbov), and its latest observation is at most 0.3 s
    old.  It has been speaking *continuously* since the moment this
    became true, as seen by `observe` and `update`.  Since speech is
    measured against the preceding second, a participant who was sending
    silence needs about half a second of speech to count as speaking.

    The current speaker changes in `update` only:

    - a participant other than the current one becomes current once it
      has been speaking continuously for ``min_speech`` seconds, provided
      either nobody is current, the current one is not speaking, or the
      challenger's mean level over the window is louder than the current
      one's by at least ``switch_margin_db``; among several such
      challengers the loudest wins.  This holds for the very first
      speaker too.  A burst shorter than ``min_speech`` (a cough) never
      switches, and two people talking over each other at similar levels
      keep the current one;
    - when nobody has been speaking for ``idle_timeout`` seconds, current
      becomes None;
    - `remove` of the current participant makes current None at once;
      the next `update` reports the change (and may pick another one).
    """

    __slots__ = (
        "threshold_dbov",
        "min_speech",
        "window",
        "idle_timeout",
        "switch_margin_db",
        "_speakers",
        "_current",
        "_reported",
        "_last_active",
    )

    def __init__(
        self,
        threshold_dbov: int = 50,
        min_speech: float = 0.6,
        window: float = 1.0,
        idle_timeout: float = 4.0,
        switch_margin_db: float = 6.0,
    ) -> None:
        self.threshold_dbov = threshold_dbov
        self.min_speech = min_speech
        self.window = window
        self.idle_timeout = idle_timeout
        self.switch_margin_db = switch_margin_db
        self._speakers: dict[str, _Speaker] = {}
        self._current: str | None = None
        self._reported: str | None = None
        self._last_active = float("-inf")

    @property
    def current(self) -> str | None:
        """The dominant speaker, or None if nobody has spoken lately."""
        return self._current

    def observe(self, participant: str, level: int, now: float) -> None:
        """Record one audio level (RFC 6464, 0 loudest .. 127 silence)."""
        st = self._speakers.get(participant)
        if st is None:
            st = self._speakers[participant] = _Speaker()
        if level < 0:
            level = 0
        elif level > 127:
            level = 127
        threshold = self.threshold_dbov
        st.obs.append((now, level))
        st.level_sum += level
        if level < threshold:
            st.loud += 1
        st.last = now
        st.prune(now - self.window, threshold)
        if st.loud * 2 >= len(st.obs):
            if st.since is None:
                st.since = now
            self._last_active = now
        else:
            st.since = None

    def remove(self, participant: str) -> None:
        """Forget a participant; if it was current, current becomes None."""
        self._speakers.pop(participant, None)
        if self._current == participant:
            self._current = None

    def update(self, now: float) -> bool:
        """Re-evaluate the current speaker; return True if it changed.

        The change is relative to the value of `current` at the end of the
        previous call, so a removal of the current participant is reported
        here too.
        """
        limit = now - self.window
        recent = now - RECENT
        threshold = self.threshold_dbov
        anyone = False
        for st in self._speakers.values():
            st.prune(limit, threshold)
            n = len(st.obs)
            if n and st.last >= recent and st.loud * 2 >= n:
                if st.since is None:
                    st.since = now
                anyone = True
            else:
                st.since = None
        if anyone:
            self._last_active = now

        current = self._current
        cur = self._speakers.get(current) if current is not None else None
        best: str | None = None
        best_mean = 0.0
        start_limit = now - self.min_speech
        for name, st in self._speakers.items():
            if name == current or st.since is None or st.since > start_limit:
                continue
            mean = st.level_sum / len(st.obs)
            if best is None or mean < best_mean:
                best = name
                best_mean = mean
        if best is not None and (
            cur is None
            or cur.since is None
            or cur.level_sum / len(cur.obs) - best_mean >= self.switch_margin_db
        ):
            self._current = best
        elif not anyone and now - self._last_active >= self.idle_timeout:
            self._current = None

        changed = self._current != self._reported
        self._reported = self._current
        return changed
