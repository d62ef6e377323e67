"""iCalendar (RFC 5545 / iTIP RFC 5546) files for invitations, updates and cancellations.

One VEVENT per meeting (an occurrence of a series is a meeting with its own UID, so calendar
programs need no RRULE/RECURRENCE-ID handling).  The UID is stored with the meeting and
never changes; SEQUENCE is the meeting's `sequence`, raised by every change invitees are
told about, so an update replaces the entry and METHOD:CANCEL (STATUS:CANCELLED) removes
it.  DTSTART/DTEND carry TZID=Asia/Ho_Chi_Minh with its VTIMEZONE, which Outlook, Google
Calendar and Thunderbird accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from conference.core.clock import ZONE

__all__ = ["PRODID", "EventView", "build_ics"]

PRODID = "-//conference//Hoi nghi truc tuyen//VI"


@dataclass(frozen=True)
class EventView:
    """What an .ics needs of a meeting (a snapshot, no database session)."""

    uid: str
    sequence: int
    title: str
    start: datetime
    end: datetime
    description: str
    url: str
    organizer_email: str
    organizer_name: str
    attendee_email: str
    attendee_name: str
    cancelled: bool = False


def build_ics(event: EventView, method: str, now: datetime | None = None) -> bytes:
    """An iCalendar object with METHOD `method` ("REQUEST" or "CANCEL")."""
    import icalendar  # here, not at start-up: the server imports this module (~40 ms)

    calendar = icalendar.Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", method)
    vevent = icalendar.Event()
    vevent.add("uid", event.uid)
    vevent.add("sequence", event.sequence)
    vevent.add("dtstamp", (now or datetime.now(UTC)).astimezone(UTC))
    vevent.add("dtstart", event.start.astimezone(ZONE))
    vevent.add("dtend", event.end.astimezone(ZONE))
    vevent.add("summary", event.title)
    vevent.add("description", event.description)
    if event.url:
        vevent.add("location", event.url)
        vevent.add("url", event.url)
    organizer = icalendar.vCalAddress(f"mailto:{event.organizer_email}")
    organizer.params["cn"] = icalendar.vText(event.organizer_name)
    vevent.add("organizer", organizer)
    attendee = icalendar.vCalAddress(f"mailto:{event.attendee_email}")
    attendee.params["cn"] = icalendar.vText(event.attendee_name)
    attendee.params["role"] = icalendar.vText("REQ-PARTICIPANT")
    attendee.params["partstat"] = icalendar.vText("NEEDS-ACTION")
    attendee.params["rsvp"] = icalendar.vText("TRUE")
    vevent.add("attendee", attendee)
    cancelled = method == "CANCEL" or event.cancelled
    vevent.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    vevent.add("transp", "OPAQUE")
    calendar.add_component(vevent)
    calendar.add_missing_timezones()
    return calendar.to_ical()
