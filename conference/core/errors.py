"""Refusals every layer raises and every edge maps (to a 4xx, a WebSocket error, a close)."""

from __future__ import annotations

__all__ = ["AccessError", "Forbidden", "NotFound"]


class AccessError(Exception):
    """Refused: ``code`` for the protocol, ``status`` for HTTP."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class NotFound(Exception):
    """No such thing, or not one the actor may see (404: its existence does not leak).

    ``message`` (a class attribute) is the English text the API answers with; the
    argument, if any, names what was looked for (for logs).
    """

    message = "no such item in your units"


class Forbidden(Exception):
    """The actor sees it but may not do this (403); ``message`` as for :class:`NotFound`."""

    message = "you may not do this"
