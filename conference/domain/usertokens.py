"""The accounts' own tokens: session cookies and API bearer tokens (JWT, HS256).

Signed with the server's secret like meeting tokens (conference/tokens.py), told apart
by their audience; each carries a fingerprint of the user's password hash (``pwf``) and the
account's `User.token_version` (``ver``; a token without it, made before the claim
existed, counts as version 0), so a password change, disabling or enabling the account and
"sign out everywhere" end every session and API token of that user.  An API token made on
the page ``/account/token`` also names the browser session it came from (``sid``): signing
that browser out ends it too.  Checked by conference/web/auth.py (pages and API) and issued
there and by ``conference user token`` (domain/cli.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from conference.domain.models import User
from conference.tokens import ALGORITHM, ISSUER

SESSION_AUDIENCE = "conference-session"
API_AUDIENCE = "conference-api"
API_TOKEN_TTL = timedelta(hours=1)
API_TOKEN_MAX_TTL = timedelta(hours=24)


def signing_key(secret: str) -> bytes:
    """The HMAC key of these tokens (the server's secret)."""
    return secret.encode()


def fingerprint(secret: str, password_hash: str) -> str:
    """A short HMAC of a password hash: changes when the password does."""
    digest = hmac.new(
        signing_key(secret), b"pwf|" + password_hash.encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode().rstrip("=")


def sign(
    secret: str,
    audience: str,
    user: User,
    ttl: timedelta,
    now: datetime | None,
    session_id: str | None = None,
) -> tuple[str, str, datetime]:
    issued = now or datetime.now(UTC)
    expires = issued + ttl
    token_id = uuid.uuid4().hex
    payload: dict[str, object] = {
        "iss": ISSUER,
        "aud": audience,
        "sub": str(user.id),
        "usr": user.username,
        "pwf": fingerprint(secret, user.password_hash),
        "ver": user.token_version or 0,
        "iat": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": token_id,
    }
    if session_id:
        payload["sid"] = session_id
    return jwt.encode(payload, signing_key(secret), algorithm=ALGORITHM), token_id, expires


def create_session_token(
    secret: str, user: User, ttl: timedelta, now: datetime | None = None
) -> str:
    """A session cookie value for `user` (see the module docstring for the claims)."""
    return sign(secret, SESSION_AUDIENCE, user, ttl, now)[0]


def create_api_token(
    secret: str,
    user: User,
    ttl: timedelta = API_TOKEN_TTL,
    now: datetime | None = None,
    session_id: str | None = None,
) -> str:
    """A bearer token for the JSON API; `ttl` at most 24 hours.  `session_id`: the ``jti``
    of the browser session that asked for it, whose sign-out ends it too."""
    if ttl <= timedelta(0) or ttl > API_TOKEN_MAX_TTL:
        raise ValueError("an API token lasts between 1 second and 24 hours")
    return sign(secret, API_AUDIENCE, user, ttl, now, session_id)[0]


@dataclass(frozen=True)
class Claims:
    """What a valid session or API token says."""

    user_id: int
    fingerprint: str
    token_id: str
    expires_at: datetime
    #: the account's `User.token_version` when the token was made
    version: int = 0
    #: an API token made on the account page: the ``jti`` of that browser session
    session_id: str | None = None


def verify(secret: str, token: str, audience: str) -> Claims | None:
    """The claims of a valid token of this audience, else None (never raises)."""
    if not token or token.count(".") != 2 or len(token) > 4096:
        return None
    try:
        payload = jwt.decode(
            token,
            signing_key(secret),
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=ISSUER,
            leeway=5,
            options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
        )
    except jwt.InvalidTokenError:
        return None
    sub, pwf, jti, exp = (payload.get(k) for k in ("sub", "pwf", "jti", "exp"))
    version, sid = payload.get("ver", 0), payload.get("sid")
    if not (isinstance(sub, str) and sub.isdigit() and isinstance(pwf, str)):
        return None
    if not isinstance(jti, str) or not jti or not isinstance(exp, int):
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        return None
    if sid is not None and (not isinstance(sid, str) or not sid):
        return None
    return Claims(int(sub), pwf, jti, datetime.fromtimestamp(exp, UTC), version, sid)
