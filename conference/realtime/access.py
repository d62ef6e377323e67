"""Turning a bearer token into a participant identity, for every media endpoint.

The scheduling plane plugs in through `conference.appkeys.MeetingPolicy`: the server uses
`conference.domain.lifecycle.MeetingLifecycle` (scheduled meetings get the
meeting policy and the lobby, other meeting IDs are ad-hoc rooms);
:class:`OpenMeetings` accepts any meeting ID (tests, embedding).
"""

from __future__ import annotations

from aiohttp import web

from ..appkeys import MEETING_POLICY, REVOKED, SETTINGS
from ..core.errors import AccessError
from ..core.identity import Identity
from ..tokens import Claims, TokenError, verify_token


class OpenMeetings:
    """The policy before scheduling exists: any meeting ID is a meeting."""

    async def admit(self, claims: Claims) -> None:
        return None


async def authenticate(app: web.Application, token: str | None, meeting_id: str) -> Identity:
    if not token:
        raise AccessError("unauthorized", "a token is required")
    try:
        claims = verify_token(app[SETTINGS].token_secret or "", token, meeting=meeting_id)
    except TokenError as exc:
        status = 403 if exc.code == "wrong-meeting" else 401
        raise AccessError(exc.code, exc.message, status) from exc
    if app[REVOKED].is_revoked(claims.token_id):
        raise AccessError("revoked", "this token was revoked", 401)
    await app[MEETING_POLICY].admit(claims)
    grants = claims.grants
    return Identity(
        identity=claims.key,  # pt:CODE, u:USERNAME... (conference/core/identity.py)
        name=claims.name,
        role=claims.role,
        publish=grants.publish,
        subscribe=grants.subscribe,
        moderate=grants.moderate,
        record=grants.record,
        token_id=claims.token_id,
        expires_at=claims.expires_at.timestamp(),
    )
