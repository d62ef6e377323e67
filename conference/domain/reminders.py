"""Reminder e-mails before a meeting, each sent once, even across restarts.

`Reminders.tick(now)` does one pass (the tests call it directly with chosen times); the
server runs it every `Settings.reminder_interval` seconds in a background task (`background`,
an aiohttp cleanup context started and stopped with the app) when e-mail is configured.

For each active, not declined invitation of a scheduled meeting with a contact e-mail, the
lead times (`Settings.reminders`, default 24 h and 15 min) that are *due* (start - lead <=
now < start) are looked at, smallest first:

* the smallest due lead is sent if it was not recorded yet; larger due leads not recorded
  yet are recorded as ``skipped`` (after a server outage a point gets one reminder, the
  most recent one that applies, not a burst);
* a reminder is **claimed before it is sent**: its `ReminderLog` row (unique per invitation
  and lead) is committed first, then the e-mail goes out, and a failure is written back as
  ``failed`` (retried on a later tick, every 10 minutes, while the meeting has not started).
  So a restart, or a second server on the same database, never sends it twice; the price is
  that a crash between the commit and the SMTP exchange loses that one reminder;
* a reminder missed because the server was down is sent on the first tick after it comes
  back, if the meeting has not started yet;
* a meeting moved after its reminders went out gets new reminders for its new start.

Each tick also extends recurring series to their horizon (`recurrence.extend_all`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conference.domain.db import Database, DatabaseError
from conference.domain.invitations import meeting_text
from conference.domain.models import Invitation, Meeting, Point, ReminderLog, utcnow
from conference.domain.recurrence import extend_all
from conference.notify.mail import build_message, mail_configured, send_messages
from conference.settings import Settings
from conference.tokens import parse_ttl

__all__ = ["RETRY_AFTER", "ReminderReport", "Reminders", "background"]

log = logging.getLogger(__name__)
RETRY_AFTER = timedelta(minutes=10)


@dataclass
class ReminderReport:
    """One tick: (point code, meeting id, lead seconds) per outcome."""

    sent: list[tuple[str, int, int]] = field(default_factory=list)
    skipped: list[tuple[str, int, int]] = field(default_factory=list)
    failed: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class _Claim:
    log_id: int
    point: str
    meeting_id: int
    lead: int
    message: EmailMessage


def _done(entry: ReminderLog | None, start: datetime, now: datetime) -> bool:
    """Whether a reminder needs nothing more: recorded for this start, and not a failure
    old enough to retry."""
    if entry is None or entry.meeting_start != start:
        return False  # never sent, or sent for a start the meeting no longer has
    return entry.state != "failed" or now - entry.at < RETRY_AFTER


class Reminders:
    """The reminder scheduler of one database."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.leads = sorted({int(parse_ttl(text).total_seconds()) for text in settings.reminders})

    def _claim(self, session: Session, now: datetime, report: ReminderReport) -> list[_Claim]:
        extend_all(session, now=now)
        if not self.leads:
            return []
        horizon = now + timedelta(seconds=max(self.leads))
        rows = session.execute(
            select(Invitation, Meeting)
            .join(Meeting, Meeting.id == Invitation.meeting_id)
            .join(Point, Point.id == Invitation.point_id)
            .where(
                Meeting.status == "scheduled",
                Meeting.start_at > now,
                Meeting.start_at <= horizon,
                Invitation.active.is_(True),
                Invitation.answer != "declined",
                Point.contact_email.is_not(None),
            )
            .order_by(Meeting.start_at, Invitation.id)
        ).all()
        claims: list[_Claim] = []
        for invitation, meeting in rows:
            due = [lead for lead in self.leads if meeting.start_at - timedelta(seconds=lead) <= now]
            if not due:
                continue
            logs = {
                entry.lead_seconds: entry
                for entry in session.scalars(
                    select(ReminderLog).where(ReminderLog.invitation_id == invitation.id)
                )
            }

            smallest = due[0]
            if _done(logs.get(smallest), meeting.start_at, now):
                continue
            code = invitation.point.code
            for lead in due[1:]:
                if not _done(logs.get(lead), meeting.start_at, now):
                    self._write(
                        session, logs, invitation.id, lead, meeting.start_at, "skipped", now
                    )
                    report.skipped.append((code, meeting.id, lead))
            entry = self._write(
                session, logs, invitation.id, smallest, meeting.start_at, "sent", now
            )
            message = build_message(
                self.settings, meeting_text(self.settings, meeting, invitation.point), "reminder"
            )
            claims.append(_Claim(entry.id, code, meeting.id, smallest, message))
        session.flush()
        return claims

    @staticmethod
    def _write(
        session: Session,
        logs: dict[int, ReminderLog],
        invitation_id: int,
        lead: int,
        start: datetime,
        state: str,
        now: datetime,
    ) -> ReminderLog:
        entry = logs.get(lead)
        if entry is None:
            entry = ReminderLog(invitation_id=invitation_id, lead_seconds=lead)
            session.add(entry)
            logs[lead] = entry
        entry.meeting_start, entry.state, entry.at, entry.error = start, state, now, None
        session.flush()
        return entry

    @staticmethod
    def _failed(session: Session, failures: list[tuple[int, str]]) -> None:
        for log_id, error in failures:
            entry = session.get(ReminderLog, log_id)
            if entry is not None:
                entry.state, entry.error = "failed", error[:500]

    async def tick(self, now: datetime | None = None) -> ReminderReport:
        """One pass: claim the due reminders (committed), send them, record failures."""
        moment = now or utcnow()
        report = ReminderReport()
        try:
            claims = await self.database.run(lambda s: self._claim(s, moment, report))
        except IntegrityError:
            # Another server claimed the same reminder at the same moment: it sends it.
            log.info("reminders: claimed concurrently by another process; skipping this tick")
            return ReminderReport()
        errors = await send_messages(self.settings, [c.message for c in claims])
        failures = []
        for claim, error in zip(claims, errors, strict=True):
            item = (claim.point, claim.meeting_id, claim.lead)
            if error is None:
                report.sent.append(item)
            else:
                report.failed.append(item)
                failures.append((claim.log_id, str(error)))
        if failures:
            await self.database.run(lambda s: self._failed(s, failures))
        return report

    async def run(self) -> None:
        """Tick every `reminder_interval` seconds until cancelled; errors are logged."""
        while True:
            try:
                report = await self.tick()
                if report.sent or report.failed:
                    log.info("reminders: %d sent, %d failed", len(report.sent), len(report.failed))
            except asyncio.CancelledError:
                raise
            except (DatabaseError, Exception):
                log.exception("reminders: tick failed")
            await asyncio.sleep(self.settings.reminder_interval)


async def background(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: run the reminder task while the app runs (if e-mail is set)."""
    from conference.appkeys import SETTINGS, app_database

    settings = app[SETTINGS]
    task = None
    if mail_configured(settings) and settings.reminders:
        task = asyncio.create_task(Reminders(app_database(app), settings).run())
        log.info("reminders: every %d s, leads %s", settings.reminder_interval, settings.reminders)
    yield
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
