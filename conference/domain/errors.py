"""The one error type of the meeting services (meetings, series, invitations, reminders).

`SchedulingError` carries what every caller needs to show a precise message:

* ``code``: a stable machine code (``"conflict-stale"``, ``"time-no-zone"``, ...), for the
  JSON API and for tests;
* ``key``: the translation key (``"sched.error.<code>"``) of the Vietnamese/English text in
  ``web/static/i18n/meetings.json``; the text may contain ``{name}`` placeholders filled
  from ``params``;
* ``field``: the form field the problem belongs to (``"start"``, ``"points"``, ...), or
  None for the whole form;
* ``params``: values for the placeholders (a point code, a date);
* ``status``: the HTTP status an API should answer with (400, 404 or 409).

``str(error)`` is a one-line English message for logs and the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping

from conference.core.errors import Refused

__all__ = ["SchedulingError"]


class SchedulingError(Refused, ValueError):
    """A meeting operation was refused; nothing was written."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        params: Mapping[str, str] | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(code, " ".join(message.split()), status, field)
        self.params: dict[str, str] = dict(params or {})

    @property
    def key(self) -> str:
        """Translation key of the message (see web/static/i18n/meetings.json)."""
        return f"sched.error.{self.code}"

    def to_dict(self) -> dict[str, object]:
        """JSON form for the API: {"error", "message", "key", "field", "params"}."""
        return {
            "error": self.code,
            "message": self.message,
            "key": self.key,
            "field": self.field,
            "params": self.params,
        }
