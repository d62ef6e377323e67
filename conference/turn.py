"""Time-limited TURN credentials, one pair per participant (the TURN REST API).

A point behind a strict firewall (only TCP 443 out, or UDP blocked) reaches the
server's media through a TURN relay (coturn).  Instead of one static password that
every client gets (and can pass on, for ever), each participant gets its own
credential that expires, as in the "TURN REST API" scheme
(draft-uberti-behave-turn-rest-00) that coturn implements with ``use-auth-secret``:

- username = ``"<expiry>:<user>"``, the expiry in Unix seconds, the user here the
  participant's session id (``PA_...``: the server's log ties it to the identity);
- credential = ``base64(HMAC-SHA1(secret, username))``, the secret being coturn's
  ``static-auth-secret`` (setting ``turn_secret``), never sent to a client.

coturn recomputes the credential from the username and refuses a username whose
expiry has passed when a client asks for an allocation; an allocation made in time
keeps working past the expiry (tests/test_turn_browser.py).  The room page allocates
for each new peer connection, and its subscriber connection may come hours after the
join (the first publisher): ``turn_ttl`` covers the longest meeting, 12 hours by
default, at the price of a leaked credential working as long (a rejoin gets a new one).

Clients get these servers in the WebSocket ``joined`` message and in the WHIP/WHEP
``Link`` headers (RFC 9725, section 4.6); the server's own peer connections need no
TURN (conference/sfu/participant.py keeps STUN only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from .settings import Settings

__all__ = ["client_ice_servers", "ice_server_links", "turn_credential", "turn_server"]


def turn_credential(secret: str, user: str, ttl: int, now: float | None = None) -> tuple[str, str]:
    """(username, credential) valid for ``ttl`` seconds from ``now`` (default: the clock)."""
    expiry = int(time.time() if now is None else now) + ttl
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def turn_server(settings: Settings, user: str, now: float | None = None) -> dict[str, Any] | None:
    """The TURN entry of ``user``'s iceServers; None when TURN is not configured."""
    if not settings.turn_secret or not settings.turn_urls:
        return None
    username, credential = turn_credential(settings.turn_secret, user, settings.turn_ttl, now)
    return {"urls": list(settings.turn_urls), "username": username, "credential": credential}


def client_ice_servers(
    settings: Settings, static: list[dict[str, Any]], user: str, now: float | None = None
) -> list[dict[str, Any]]:
    """What one client's peer connections use: the configured ``ice_servers`` (as they
    are: STUN, or a TURN server with a static password) and its own TURN credential."""
    turn = turn_server(settings, user, now)
    return [*static, turn] if turn else list(static)


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(servers: list[dict[str, Any]]) -> list[str]:
    """One ``Link`` header value per URL (RFC 9725, section 4.6), with the username and
    credential of the server when it has them."""
    links = []
    for server in servers:
        params = ""
        if "username" in server and "credential" in server:
            params = (
                f"; username={_quoted(server['username'])}"
                f"; credential={_quoted(server['credential'])}"
                '; credential-type="password"'
            )
        links += [f'<{url}>; rel="ice-server"{params}' for url in server["urls"]]
    return links
