"""The program feed: the meeting as one audio and one video stream.

The feed shows the current active speaker, or the chair when nobody speaks (or
the first participant with a camera when there is no chair).  Each viewer of
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
        self._apply(subscription, self._target())

    def remove(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    def participant_left(self, participant: Participant) -> None:
        for subscription in list(self.subscriptions):
            if subscription.subscriber_id == participant.id:
                self.subscriptions.discard(subscription)
        self.refresh()

    def _target(self) -> Participant | None:
        participants = self.room.participants
        candidates = [p for p in participants.values() if p.publications]
        speaker = self.room.speaker.current
        if speaker is not None and speaker in participants and participants[speaker].publications:
            return participants[speaker]
        chairs = [p for p in candidates if p.who.role == "chair"]
        if chairs:
            return chairs[0]
        # keep the previous target while it still publishes, to avoid needless switches
        if self.current in participants and participants[self.current].publications:
            return participants[self.current]
        return candidates[0] if candidates else None

    def refresh(self) -> None:
        target = self._target()
        self.current = target.id if target is not None else None
        for subscription in list(self.subscriptions):
            self._apply(subscription, target)

    def _apply(self, subscription: Subscription, target: Participant | None) -> None:
        if target is None:
            return
        publication = self._pick(target, subscription.kind)
        if publication is not None:
            subscription.switch_to(publication)

    @staticmethod
    def _pick(participant: Participant, kind: str) -> Publication | None:
        order = ("microphone",) if kind == "audio" else ("screen", "camera")
        for source in order:
            for publication in participant.publications.values():
                if publication.kind == kind and publication.source == source:
                    return publication
        return None
