"""Security headers on every response (issue 14 item 14).

* ``Content-Security-Policy``: scripts only from this server's own files (no inline
  script, no ``eval``; the pages have none), nothing embeds a page (``frame-ancestors
  'none'``), forms post only here, connections (fetch, the signaling WebSocket) only to
  this host.  Inline styles stay allowed: several pages carry a ``<style>`` block, and a
  style cannot run code.
* ``X-Frame-Options: DENY`` for browsers without ``frame-ancestors``.
* ``Referrer-Policy: no-referrer``: join links carry their token in the query string.
* ``X-Content-Type-Options: nosniff``.
* ``Strict-Transport-Security`` only with a certificate of the operator's (``tls =
  "files"``): with the self-signed default a browser could never be let past the warning
  again.
"""

from __future__ import annotations

from aiohttp import web

from conference.settings import Settings


def content_security_policy(host: str, secure: bool) -> str:
    websocket = f"{'wss' if secure else 'ws'}://{host}" if host else ""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            f"connect-src 'self' {websocket}".strip(),
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def install_security_headers(app: web.Application, settings: Settings) -> None:
    """Add the headers to every response of ``app`` (pages, API, files, errors)."""
    hsts = settings.tls == "files"

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        host = request.host if _plain_host(request.host) else ""
        headers.setdefault("Content-Security-Policy", content_security_policy(host, request.secure))
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Content-Type-Options", "nosniff")
        if hsts:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000")

    app.on_response_prepare.append(add)


def _plain_host(host: str) -> bool:
    """Whether the Host header is a host[:port] fit to quote in a header (no spaces,
    quotes or separators a client could inject)."""
    return 0 < len(host) <= 255 and all(c.isalnum() or c in ".-:[]_" for c in host)
