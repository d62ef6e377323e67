"""The program feed: the meeting as one audio and one video stream.

The feed shows the current active speaker, or the chair when nobody speaks (or
the first participant with a camera when there is no chair), chosen among the
meeting's publications on every node (a relayed one is a publication like any
other): each kind on its own, so a speaker without a camera is heard while the
video stays on the chair.  Each viewer of
the feed (a WHEP client: a commune loudspeaker system, a local TV channel) has
one audio and one video :class:`Subscription`; switching the speaker switches
their source, which happens on the next keyframe and keeps the outgoing
sequence numbers and timestamps continuous.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .publication import Publication
from .subscription import Subscription

if TYPE_CHECKING:
    from .participant import Participant
    from .room import Room


class ProgramFeed:
    """Switches program subscriptions to the current speaker's publications."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.subscriptions: set[Subscription] = set()
        self.current: str | None = None

    def add(self, subscription: Subscription) -> None:
        self.subscriptions.add(subscription)
        self._apply(subscription, self._target(subscription.kind))

    def remove(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    def participant_left(self, participant: Participant) -> None:
        for subscription in list(self.subscriptions):
            if subscription.subscriber_id == participant.id:
                self.subscriptions.discard(subscription)
        self.refresh()

    def _publishers(self, kind: str) -> dict[str, list[Publication]]:
        """participant id -> its publications of ``kind``, on this node or relayed from
        another node of the meeting (``Room.remote``)."""
        found: dict[str, list[Publication]] = {}
        for publication in self.room.publications():
            if publication.kind == kind:
                found.setdefault(publication.participant_id, []).append(publication)
        return found

    def _role(self, participant_id: str) -> str | None:
        participant = self.room.participants.get(participant_id)
        if participant is not None:
            return participant.who.role
        member = self.room.remote_member(participant_id)
        return str(member.get("role")) if member is not None else None

    def _target(self, kind: str) -> str | None:
        """Whose ``kind`` the feed carries: the speaker's, else a chair's, else the one
        it carries now, else the first one's (a speaker without a camera leaves the
        video where it was, on the chair's in a briefing)."""
        publishers = self._publishers(kind)
        speaker = self.room.speaker.current
        if speaker is not None and speaker in publishers:
            return speaker
        chairs = [pid for pid in publishers if self._role(pid) == "chair"]
        if chairs:
            return chairs[0]
        # keep the previous target while it still publishes, to avoid needless switches
        if self.current in publishers:
            return self.current
        return next(iter(publishers), None)

    def refresh(self) -> None:
        targets = {kind: self._target(kind) for kind in ("audio", "video")}
        self.current = targets["video"] or targets["audio"]
        for subscription in list(self.subscriptions):
            self._apply(subscription, targets[subscription.kind])

    def _apply(self, subscription: Subscription, target: str | None) -> None:
        if target is None:
            return
        publication = self._pick(self._publishers(subscription.kind).get(target, []))
        if publication is not None:
            subscription.switch_to(publication)

    @staticmethod
    def _pick(publications: list[Publication]) -> Publication | None:
        order = ("microphone", "screen", "camera")
        for source in order:
            for publication in publications:
                if publication.source == source:
                    return publication
        return None
