"""Refusals every layer raises and every edge maps (to a 4xx, a WebSocket error, a close)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["AccessError", "Forbidden", "NotFound", "Refused", "http_status"]


class AccessError(Exception):
    """Refused: ``code`` for the protocol, ``status`` for HTTP."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Refused(Exception):
    """A domain operation was refused and nothing was written.

    ``code`` (stable, machine-readable), ``message`` (English, one line), ``status`` (the
    HTTP status of the refusal: 400 or 422 bad input, 401, 403, 404, 409 conflict) and
    ``field`` (the form field it belongs to, or None).  The meeting services'
    `SchedulingError`, the minutes' `MinutesError` and the admin services' `Invalid` are
    refusals; the JSON API maps every one in one place (`http_status`).
    """

    def __init__(self, code: str, message: str, status: int = 409, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.status = status
        self.field = field

    @property
    def message(self) -> str:
        return str(self)

    def fields(self, translate: Mapping[str, str]) -> dict[str, str]:
        """Field -> message, where a refusal names several fields (else empty)."""
        return {}


def http_status(refusal: Refused) -> int:
    """The status an API answers a refusal with: bad input is 422, the rest as raised."""
    return refusal.status if refusal.status in (401, 403, 404, 409, 422) else 422


class NotFound(Exception):
    """No such thing, or not one the actor may see (404: its existence does not leak).

    ``message`` (a class attribute) is the English text the API answers with; the
    argument, if any, names what was looked for (for logs).
    """

    message = "no such item in your units"


class Forbidden(Exception):
    """The actor sees it but may not do this (403); ``message`` as for :class:`NotFound`."""

    message = "you may not do this"
