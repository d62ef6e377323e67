"""Access tokens: HS256 JWTs that admit one participant to one meeting.

Claims (see docs/PROTOCOL.md): ``iss`` = "conference", ``sub`` (participant identity:
``pt:CODE``, ``u:USERNAME``, ``g:ID`` or ``t:ID``, see conference/core/identity.py; a bare
id, as in tokens made before identity kinds, is read by the role),
``name`` (display name, any Unicode), ``meeting``, ``role`` (one of `ROLES`), ``grants``
(``publish``, ``subscribe``, ``moderate``, ``record`` booleans), ``iat``, ``nbf``, ``exp``
and ``jti`` (token id, used by `RevocationList`).  Only HS256 is accepted when verifying;
every failure raises `TokenError` with a stable ``code`` and a short English message that
never echoes the token.
"""

from __future__ import annotations

import heapq
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from .core.identity import KINDS, KindOf, identity_key, normal_key, split_identity

__all__ = [
    "ALGORITHM",
    "ISSUER",
    "MAX_TTL",
    "ROLES",
    "Claims",
    "Grants",
    "RevocationList",
    "TokenError",
    "create_token",
    "parse_ttl",
    "verify_token",
]

ROLES = ("chair", "point", "viewer", "recorder")
ISSUER = "conference"
ALGORITHM = "HS256"
MAX_TTL = timedelta(days=7)
MAX_NAME_LENGTH = 200
MIN_SECRET_BYTES = 32
_ID_PATTERN = re.compile(r"[A-Za-z0-9._~-]{1,128}")
#: a token's ``sub``: an identity key (``pt:xa-a``) or a bare id (tokens made before kinds)
_SUB_PATTERN = re.compile(r"(?:(?:" + "|".join(KINDS.values()) + r"):)?[A-Za-z0-9._~-]{1,128}")
_REQUIRED = ["iss", "sub", "iat", "nbf", "exp", "jti"]
_JWS = jwt.PyJWS()


class TokenError(Exception):
    """A token was rejected.  `code` is one of: malformed, bad-signature, expired,
    not-yet-valid, wrong-meeting, invalid-claims."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


@dataclass(frozen=True)
class Grants:
    """What a participant may do in the meeting."""

    publish: bool = False
    subscribe: bool = False
    moderate: bool = False
    record: bool = False

    @classmethod
    def for_role(cls, role: str) -> Grants:
        """Default grants of a role: chair publishes, subscribes and moderates; a point
        publishes and subscribes; a viewer subscribes; the recorder subscribes and records."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        return cls(
            publish=role in ("chair", "point"),
            subscribe=True,
            moderate=role == "chair",
            record=role == "recorder",
        )

    def to_dict(self) -> dict[str, bool]:
        return {
            "publish": self.publish,
            "subscribe": self.subscribe,
            "moderate": self.moderate,
            "record": self.record,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Grants:
        """Parse the ``grants`` claim; all four keys must be booleans."""
        values = {}
        for key in ("publish", "subscribe", "moderate", "record"):
            value = data.get(key)
            if not isinstance(value, bool):
                raise ValueError(f"grant {key!r} must be a boolean")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class Claims(KindOf):
    """The verified content of a token.  ``identity`` is its ``sub`` as signed; `key` is
    the participant's identity key (``pt:xa-a``): a bare ``sub`` (a token of before
    identity kinds) gets the kind of its role (conference/core/identity.py)."""

    identity: str
    name: str
    meeting: str
    role: str
    grants: Grants
    expires_at: datetime
    not_before: datetime
    token_id: str

    @property
    def key(self) -> str:
        """The participant's identity key: what the room, the lobby and attendance use."""
        return normal_key(self.identity, self.role)

    @property
    def bare(self) -> bool:
        """The ``sub`` has no kind: a token made before identity kinds."""
        return split_identity(self.identity)[0] is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (ISO 8601 UTC times)."""
        return {
            "identity": self.identity,
            "key": self.key,
            "kind": self.kind,
            "subject": self.subject,
            "name": self.name,
            "meeting": self.meeting,
            "role": self.role,
            "grants": self.grants.to_dict(),
            "expires_at": self.expires_at.isoformat(),
            "not_before": self.not_before.isoformat(),
            "token_id": self.token_id,
        }


# --- creation ----------------------------------------------------------------------------------


def _check_secret(secret: str) -> bytes:
    key = secret.encode()
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"token secret must be at least {MIN_SECRET_BYTES} bytes long")
    return key


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must not be empty")
    if not _ID_PATTERN.fullmatch(value):
        raise ValueError(f"{kind} must be 1-128 characters from A-Z a-z 0-9 . _ ~ -")
    return value


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise ValueError("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"name must be at most {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ValueError("name must not contain control characters")
    return name


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value


def create_token(
    secret: str,
    *,
    meeting: str,
    identity: str,
    name: str,
    role: str,
    kind: str | None = None,
    ttl: timedelta = timedelta(hours=3),
    grants: Grants | None = None,
    not_before: datetime | None = None,
    now: datetime | None = None,
) -> str:
    """Sign an access token; invalid arguments raise ValueError.

    `kind` (``point``, ``account``, ``guest``, ``token``) says whose identity `identity`
    is: the ``sub`` is then its key (``pt:xa-a``).  Without `kind`, `identity` may be a key
    itself; a bare one makes the token of before identity kinds, read by its role.
    The token is valid from `not_before` (default: `now`) until `now + ttl`; `grants`
    defaults to `Grants.for_role(role)`.  The display name is NFC-normalized.
    """
    key = _check_secret(secret)
    _check_id("meeting", meeting)
    if kind is not None:
        identity = identity_key(kind, _check_id("identity", identity))
    else:
        given, subject = split_identity(identity if isinstance(identity, str) else "")
        _check_id("identity", subject if given is not None else identity)
    name = _check_name(name)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    if ttl > MAX_TTL:
        raise ValueError(f"ttl must be at most {MAX_TTL.days} days")
    issued = _aware(now, "now") if now is not None else datetime.now(UTC)
    start = _aware(not_before, "not_before") if not_before is not None else issued
    expires = issued + ttl
    if start >= expires:
        raise ValueError("not_before must be earlier than the expiry (now + ttl)")
    payload = {
        "iss": ISSUER,
        "sub": identity,
        "name": name,
        "meeting": meeting,
        "role": role,
        "grants": (grants or Grants.for_role(role)).to_dict(),
        "iat": int(issued.timestamp()),
        "nbf": int(start.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"typ": "JWT"})


# --- verification ------------------------------------------------------------------------------


def _decode(key: bytes, token: str, leeway: int) -> dict[str, Any]:
    """Check structure, signature (HS256 only), issuer and time claims."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenError("malformed", "token is not a JWT")
    try:
        _JWS.decode_complete(token, key, algorithms=[ALGORITHM])
    except jwt.InvalidAlgorithmError:
        raise TokenError("bad-signature", "token algorithm is not accepted") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad-signature", "token signature is invalid") from None
    except jwt.InvalidTokenError:
        raise TokenError("malformed", "token is not a valid JWT") from None
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            leeway=leeway,
            options={"require": _REQUIRED, "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("expired", "token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("not-yet-valid", "token is not valid yet") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError("invalid-claims", f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidIssuerError:
        raise TokenError("invalid-claims", "token issuer is not accepted") from None
    except jwt.InvalidTokenError:
        raise TokenError("invalid-claims", "token claims are invalid") from None


def _claims(payload: Mapping[str, Any]) -> Claims:
    """Check the application claims of a signature-verified payload."""

    def bad(what: str) -> TokenError:
        return TokenError("invalid-claims", f"token claim {what} is missing or invalid")

    for key, pattern in (("sub", _SUB_PATTERN), ("meeting", _ID_PATTERN)):
        value = payload.get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise bad(repr(key))
    name = payload.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise bad("'name'")
    role = payload.get("role")
    if role not in ROLES:
        raise bad("'role'")
    grants = payload.get("grants")
    if not isinstance(grants, Mapping):
        raise bad("'grants'")
    try:
        parsed_grants = Grants.from_dict(grants)
    except ValueError:
        raise bad("'grants'") from None
    token_id = payload.get("jti")
    if not isinstance(token_id, str) or not token_id:
        raise bad("'jti'")
    times = {}
    for key in ("exp", "nbf"):
        value = payload.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(repr(key))
        try:
            times[key] = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise bad(repr(key)) from None
    return Claims(
        identity=payload["sub"],
        name=name,
        meeting=payload["meeting"],
        role=role,
        grants=parsed_grants,
        expires_at=times["exp"],
        not_before=times["nbf"],
        token_id=token_id,
    )


def verify_token(
    secret: str, token: str, *, meeting: str | None = None, leeway: int = 10
) -> Claims:
    """Verify `token` and return its claims, or raise `TokenError`.

    `meeting`, when given, must equal the token's meeting; `leeway` (seconds) absorbs
    clock differences for ``exp`` and ``nbf``.
    """
    key = _check_secret(secret)
    claims = _claims(_decode(key, token, leeway))
    if meeting is not None and claims.meeting != meeting:
        raise TokenError("wrong-meeting", "token is for another meeting")
    return claims


# --- revocation --------------------------------------------------------------------------------


class RevocationList:
    """Token ids that must no longer be accepted (e.g. a participant removed by the chair).

    Entries are kept until the token would be rejected as expired anyway (expiry plus
    `leeway`), then pruned.  In-memory; the server also stores every revocation in its
    database and loads them at start (conference/domain/authstate.py `RevocationStore`).
    """

    def __init__(
        self,
        *,
        leeway: timedelta = timedelta(seconds=10),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._leeway = leeway
        self._clock = clock or (lambda: datetime.now(UTC))
        self._expiry: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []
        #: told of every revocation made here (`revoke`, not `learn`): the other nodes of a
        #: cluster learn it (conference/cluster)
        self.on_revoke: Callable[[str, datetime], None] | None = None

    def revoke(self, token_id: str, expires_at: datetime) -> None:
        """Reject `token_id` until `expires_at` (plus leeway)."""
        self.learn(token_id, expires_at)
        if self.on_revoke is not None:
            self.on_revoke(token_id, expires_at)

    def learn(self, token_id: str, expires_at: datetime) -> None:
        """`revoke`, told by another node: not told again."""
        _aware(expires_at, "expires_at")
        self._prune()
        current = self._expiry.get(token_id)
        if current is None or expires_at > current:
            self._expiry[token_id] = expires_at
            heapq.heappush(self._heap, (expires_at, token_id))

    def is_revoked(self, token_id: str) -> bool:
        self._prune()
        return token_id in self._expiry

    def __len__(self) -> int:
        self._prune()
        return len(self._expiry)

    def _prune(self) -> None:
        cutoff = self._clock() - self._leeway
        while self._heap and self._heap[0][0] < cutoff:
            expires_at, token_id = heapq.heappop(self._heap)
            if self._expiry.get(token_id) == expires_at:
                del self._expiry[token_id]


# --- durations ---------------------------------------------------------------------------------

_TTL_PATTERN = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_ttl(text: str) -> timedelta:
    """Parse a duration such as "3h", "90m", "45s", "2d" or "1h30m"."""
    cleaned = text.strip().lower()
    match = _TTL_PATTERN.fullmatch(cleaned)
    if not cleaned or match is None:
        raise ValueError(f"invalid duration {text!r} (examples: 3h, 90m, 45s, 2d, 1h30m)")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    try:
        duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None
    if duration <= timedelta(0):
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return duration
