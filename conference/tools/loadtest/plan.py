"""What a load test does: its configuration, its participants and the floor schedule.

Everything here is plain data that crosses process boundaries (pickled to the
worker processes), and pure logic with no network.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from ...core.identity import identity_key, normal_key
from ...tokens import create_token

__all__ = [
    "SCENARIOS",
    "Config",
    "FloorSchedule",
    "Seat",
    "make_seats",
    "seats_from_tokens",
    "token_identity",
]

SCENARIOS = ("briefing", "grid", "webinar", "province")
DEFAULT_BITRATE_KBPS = {"360p": 500, "720p": 1500}
TOKEN_TTL = timedelta(hours=3)


@dataclass
class Config:
    """Options of one load-test run (see ``conference loadtest --help``)."""

    url: str
    meeting: str
    scenario: str = "briefing"
    points: int = 10
    duration: float = 60.0
    video: str = "vp8"
    resolution: str = "360p"
    bitrate_kbps: int | None = None
    fps: int = 30
    processes: int = 1
    ramp: float = 5.0  # participants joining per second
    join_timeout: float = 30.0
    floor_period: float | None = None  # default: min(30, duration / 4)
    ice_hosts: list[str] = field(default_factory=list)
    insecure: bool = False
    server_pid: int | None = None
    json_path: str | None = None
    progress: bool = True
    #: ``--lean``: points publish pre-packetized RTP through the server's own send path
    #: (:mod:`.lean`) instead of aiortc's sender, and read what they receive from RTP
    #: headers (``bridge.header_ingress``; not the points on weak links)
    lean: bool = False
    #: ``--muted``: a lean point's microphone is muted while it does not hold the floor
    #: (as the room holds every point but the floor's), so its page sends Opus DTX
    #: (:data:`.lean.MUTED_INTERVAL`); the chair's stays open
    muted: bool = False
    #: ``--weak``: (share of the points 0..1, link profile name), see :mod:`.weak`
    weak: list[tuple[float, str]] = field(default_factory=list)
    #: ``--node``: other nodes of the same meeting (one Redis): the points are spread
    #: over ``url`` and these; the chair stays on ``url``
    nodes: list[str] = field(default_factory=list)

    def url_of(self, seat_index: int, chair: bool) -> str:
        """The node a seat joins: the chair ``url``, the points in turn."""
        if chair or not self.nodes:
            return self.url
        everyone = [self.url, *self.nodes]
        return everyone[seat_index % len(everyone)]

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}")
        if self.points < 1:
            raise ValueError("--points must be at least 1")
        if self.duration <= 0:
            raise ValueError("--duration must be positive")
        if self.processes < 1:
            raise ValueError("--processes must be at least 1")
        if self.ramp <= 0:
            raise ValueError("--ramp must be positive")
        if self.muted and not self.lean:
            raise ValueError("--muted needs --lean (aiortc's sender has no Opus DTX)")
        if self.weak:
            from .weak import weak_counts

            weak_counts(self.points, self.weak)  # raises when the shares do not fit
            if self.url.startswith("https:") and not self.insecure:
                raise ValueError(
                    "--weak with an https URL needs --insecure: weak points reach the server"
                    " through a forwarder in 10.250.0.0/16, which its certificate does not name"
                )

    @property
    def bitrate(self) -> int:
        """Camera bitrate in kbps."""
        if self.bitrate_kbps is not None:
            return self.bitrate_kbps
        return DEFAULT_BITRATE_KBPS.get(self.resolution, 500)

    @property
    def floor(self) -> float:
        """Seconds each speaker holds the floor (briefing and grid)."""
        if self.floor_period is not None:
            return self.floor_period
        return min(30.0, self.duration / 4)

    def to_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["bitrate_kbps"] = self.bitrate
        data["floor_period"] = self.floor if self.scenario != "webinar" else None
        data["weak"] = [f"{share * 100:g}%:{name}" for share, name in self.weak]
        return data


@dataclass(frozen=True)
class Seat:
    """One simulated participant: the chair (index 0), a point, or a WHEP viewer."""

    index: int
    identity: str  # the participant's key, as the room shows it ("t:loadtest-xa-001")
    name: str
    role: str  # "chair", "point" or "viewer"
    token: str

    @property
    def is_chair(self) -> bool:
        return self.index == 0


def make_seats(config: Config, secret: str) -> list[Seat]:
    """The chair (UBND huyện) and ``config.points`` points or viewers, with tokens."""
    point_role = "viewer" if config.scenario == "webinar" else "point"
    seats = [
        Seat(
            0,
            identity_key("token", "loadtest-huyen"),
            "UBND huyện (load test)",
            "chair",
            create_token(
                secret,
                meeting=config.meeting,
                identity="loadtest-huyen",
                kind="token",  # made by hand: never a point's or an account's identity
                name="UBND huyện (load test)",
                role="chair",
                ttl=TOKEN_TTL,
            ),
        )
    ]
    for index in range(1, config.points + 1):
        subject = f"loadtest-xa-{index:03d}"
        name = f"UBND xã {index:03d} (load test)"
        token = create_token(
            secret,
            meeting=config.meeting,
            identity=subject,
            kind="token",
            name=name,
            role=point_role,
            ttl=TOKEN_TTL,
        )
        seats.append(Seat(index, identity_key("token", subject), name, point_role, token))
    return seats


def token_identity(token: str) -> tuple[str, str, str]:
    """(identity, name, role) from a token's payload, *without* verifying it; the identity
    is the key the room shows (a bare ``sub`` gets the kind of its role, as the server reads it).

    The server verifies tokens; the load tester only needs to know who is who.
    """
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        sub, role = str(claims["sub"]), str(claims["role"])
        return normal_key(sub, role), str(claims.get("name", sub)), role
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError("not a conference access token (JWT)") from exc


def seats_from_tokens(config: Config, path: Path) -> list[Seat]:
    """Seats from a file of tokens, one per line: the chair's first, then the points'.

    Blank lines and lines starting with ``#`` are skipped.  The file must hold at
    least ``points + 1`` tokens; extra ones are ignored.
    """
    lines = [line.strip() for line in path.read_text().splitlines()]
    tokens = [line for line in lines if line and not line.startswith("#")]
    if len(tokens) < config.points + 1:
        raise ValueError(
            f"{path}: {len(tokens)} tokens, need {config.points + 1} (the chair's, then one per point)"
        )
    seats = []
    for index, token in enumerate(tokens[: config.points + 1]):
        identity, name, role = token_identity(token)
        seats.append(Seat(index, identity, name, role, token))
    return seats


@dataclass(frozen=True)
class FloorSchedule:
    """Who holds the floor when: the chair until ``start``, then points in turn.

    From ``start`` (wall-clock seconds, shared by all processes) the floor moves
    every ``period`` seconds: the chair for one period, then point 1, point 2,
    ... point N, then the chair again.  ``start`` None means "the chair, until
    further notice" (while participants join).
    """

    points: int
    period: float
    start: float | None = None

    def holder(self, now: float) -> int:
        """The seat index that has the floor at wall-clock time ``now``."""
        if self.start is None or now < self.start or self.period <= 0:
            return 0
        slot = int((now - self.start) // self.period)
        return slot % (self.points + 1)

    def changes(self, until: float) -> list[tuple[float, int]]:
        """(time, new holder) of every change of the floor in [start, until)."""
        if self.start is None or self.period <= 0:
            return []
        result = []
        slot = 1
        previous = self.holder(self.start)
        while self.start + slot * self.period < until:
            at = self.start + slot * self.period
            holder = self.holder(at)
            if holder != previous:
                result.append((at, holder))
            previous = holder
            slot += 1
        return result
