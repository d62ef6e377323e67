"""Refusals every layer raises and every edge maps (to a 4xx, a WebSocket error, a close)."""

from __future__ import annotations

__all__ = ["AccessError"]


class AccessError(Exception):
    """Refused: ``code`` for the protocol, ``status`` for HTTP."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
