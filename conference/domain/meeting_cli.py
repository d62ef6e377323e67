"""`conference meeting add|list|show|links|cancel|end|invite|send-invitations`.

Times on the command line are Asia/Ho_Chi_Minh wall-clock times ("2026-12-07 08:00") unless
they carry an offset ("2026-12-07T08:00+07:00", "...Z"); the CLI attaches the zone, the
services themselves refuse zone-less times.  A weekly briefing for a district's communes:

    conference meeting add --title "Giao ban thứ Hai" --unit huyen-a --chair chu-tich \\
        --start "2026-12-07 08:00" --end "2026-12-07 09:30" --rrule "FREQ=WEEKLY;BYDAY=MO" \\
        --points-under huyen-a --agenda "Tình hình tuần qua|Văn phòng UBND"
    conference meeting send-invitations --series 1

Conflicts are printed as warnings on standard error; refusals are `SchedulingError`s,
printed by conference/cli.py as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from conference.settings import Settings

__all__ = ["add_meeting_commands", "run_meeting"]

_POLICIES = ("none", "auto", "ask")


def add_meeting_commands(
    commands: Any, settings_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    meeting = commands.add_parser("meeting", aliases=["meetings"], help="meetings (cuộc họp)")
    sub = meeting.add_subparsers(dest="meeting_command", metavar="COMMAND", required=True)

    add = sub.add_parser("add", help="schedule a meeting or a recurring briefing")
    add.add_argument("--title", required=True)
    add.add_argument("--unit", required=True, metavar="CODE", help="the unit that holds it")
    add.add_argument("--chair", required=True, metavar="USERNAME", help="a user with role chair")
    add.add_argument("--start", required=True, help="local time, e.g. '2026-12-07 08:00'")
    add.add_argument("--end", required=True, help="local time, e.g. '2026-12-07 09:30'")
    add.add_argument("--rrule", help="repeat, RFC 5545, e.g. 'FREQ=WEEKLY;BYDAY=MO'")
    add.add_argument("--point", action="append", default=[], metavar="CODE", help="invite a point")
    add.add_argument(
        "--points-under", metavar="UNIT", help="invite every active point of this unit and below"
    )
    add.add_argument(
        "--agenda",
        action="append",
        default=[],
        metavar="'TITLE|PRESENTER'",
        help="an agenda item (repeat, in order); PRESENTER may be @username",
    )
    add.add_argument("--recording", choices=_POLICIES, default="none")
    add.add_argument("--notes", default="")
    settings_flags(add)

    listing = sub.add_parser("list", help="list meetings (from today on by default)")
    listing.add_argument("--from", dest="since", help="local date/time (default: today)")
    listing.add_argument("--to", dest="until", help="local date/time")
    listing.add_argument("--unit", metavar="CODE")
    listing.add_argument("--all", action="store_true", help="include cancelled meetings")
    settings_flags(listing)

    show = sub.add_parser("show", help="a meeting: agenda, invited points and their answers")
    show.add_argument("meeting_id", metavar="ID")
    settings_flags(show)

    links = sub.add_parser(
        "links",
        help="each invited point's join link and a message to paste into a chat group "
        "(no e-mail needed; the links are secrets: printing them is written to the audit log)",
    )
    links.add_argument("meeting_id", metavar="ID")
    links.add_argument("--lang", choices=("vi", "en"), default="vi", help="the message's language")
    settings_flags(links)

    cancel = sub.add_parser("cancel", help="cancel a meeting, one occurrence or a series")
    cancel.add_argument("meeting_id", metavar="ID", nargs="?")
    cancel.add_argument("--series", type=int, metavar="N", help="cancel the whole series N")
    settings_flags(cancel)

    end = sub.add_parser(
        "end",
        help="end a meeting (a live one nobody ended: the running server closes its room "
        "within 10 s)",
    )
    end.add_argument("meeting_id", metavar="ID")
    settings_flags(end)

    invite = sub.add_parser("invite", help="invite more points to a meeting")
    invite.add_argument("meeting_id", metavar="ID")
    invite.add_argument("--point", action="append", default=[], metavar="CODE", required=True)
    settings_flags(invite)

    send = sub.add_parser(
        "send-invitations", help="e-mail invitations, updates and cancellations not sent yet"
    )
    send.add_argument("meeting_id", metavar="ID", nargs="*")
    send.add_argument("--series", type=int, metavar="N", help="upcoming meetings of series N")
    send.add_argument(
        "--upcoming",
        type=int,
        default=1,
        metavar="K",
        help="with --series: the next K meetings not over yet (default: 1)",
    )
    settings_flags(send)


def _time(text: str, what: str) -> datetime | str:
    from conference.domain.meetings import ZONE

    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value  # the service reports it with the field name
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=ZONE)


def _agenda(items: list[str]) -> list[Any]:
    from conference.domain.meetings import AgendaInput

    agenda = []
    for item in items:
        title, _, presenter = item.partition("|")
        presenter = presenter.strip()
        if presenter.startswith("@"):
            agenda.append(AgendaInput(title, presenter_user=presenter[1:]))
        else:
            agenda.append(AgendaInput(title, presenter))
    return agenda


def _warn(warnings: list[Any]) -> None:
    for warning in warnings:
        print(f"conference: warning: {warning}", file=sys.stderr)


def _when(meeting: Any) -> str:
    from conference.domain.meetings import local_time

    start, end = local_time(meeting.start_at), local_time(meeting.end_at)
    return f"{start:%Y-%m-%d %H:%M}-{end:%H:%M}"


def run_meeting(args: argparse.Namespace, settings: Settings, database: Any) -> int:
    from conference.domain import invitations, meetings, recurrence
    from conference.domain.organisation import get_unit, list_points

    command = args.meeting_command
    if command == "send-invitations":
        return _send(args, settings, database)
    if command == "links":
        return _links(args, settings, database)
    with database.session() as session:
        if command == "add":
            points = list(args.point)
            if args.points_under:
                under = get_unit(session, args.points_under)
                points += [p.code for p in list_points(session, under, include_inactive=False)]
            values: dict[str, Any] = {
                "title": args.title,
                "unit": args.unit,
                "chair": args.chair,
                "start": _time(args.start, "start"),
                "end": _time(args.end, "end"),
                "points": points,
                "agenda": _agenda(args.agenda),
                "recording_policy": args.recording,
                "notes": args.notes,
            }
            if args.rrule:
                result = recurrence.create_series(session, rrule=args.rrule, **values)
                _warn(result.warnings)
                invited = len(result.series.points)
                print(
                    f"added series {result.series.id}: {result.series.title} "
                    f"({result.series.rrule}), {len(result.meetings)} meetings scheduled, "
                    f"{invited} points invited"
                )
                for m in result.meetings:
                    print(f"  meeting {m.id}\t{_when(m)}")
            else:
                single = meetings.create_meeting(session, **values)
                _warn(single.warnings)
                m = single.meeting
                print(f"added meeting {m.id}: {m.title} {_when(m)}, {len(points)} points invited")
        elif command == "list":
            since = _time(args.since, "from") if args.since else None
            if since is None:
                now = datetime.now(meetings.ZONE)
                since = now.replace(hour=0, minute=0, second=0, microsecond=0)
            until = _time(args.until, "to") if args.until else None
            for m in meetings.list_meetings(
                session, start=since, end=until, unit=args.unit, include_cancelled=args.all
            ):
                invited = sum(1 for i in m.invitations if i.active)
                accepted = sum(1 for i in m.invitations if i.active and i.answer == "accepted")
                series = f"series {m.series_id}" if m.series_id else "-"
                print(
                    f"{m.id}\t{_when(m)}\t{m.status}\t{m.title}\t{m.unit.code}\t"
                    f"{accepted}/{invited} confirmed\t{series}"
                )
        elif command == "show":
            m = meetings.get_meeting(session, args.meeting_id)
            print(f"meeting {m.id}: {m.title}")
            print(f"time: {_when(m)} (Asia/Ho_Chi_Minh)")
            print(f"status: {m.status}, version {m.version}, recording {m.recording_policy}")
            print(f"unit: {m.unit.code} ({m.unit.name}); chair: {m.chair.username}")
            if m.series_id:
                print(f"series: {m.series_id}")
            for item in m.agenda:
                print(f"agenda {item.position}: {item.title} ({item.presenter_name})")
            for view in invitations.list_invitations(session, m.id):
                sent = "-" if view.sent_sequence is None else f"sent #{view.sent_sequence}"
                print(
                    f"point {view.point}\t{view.name}\t{view.answer}\t{sent}\t"
                    f"{view.email or 'no e-mail'}"
                )
            if m.notes:
                print(f"notes: {m.notes}")
        elif command == "cancel":
            if args.series:
                cancelled = recurrence.cancel_series(session, args.series)
                print(f"cancelled series {args.series}: {len(cancelled)} upcoming meetings")
            elif args.meeting_id:
                # an occurrence of a series is recorded as the series' exception
                m = meetings.cancel_meeting(session, args.meeting_id, version=None)
                print(f"cancelled meeting {m.id}: {m.title} {_when(m)}")
            else:
                raise ValueError("cancel: give a meeting ID or --series N")
        elif command == "end":
            m = meetings.end_meeting(session, args.meeting_id)
            print(f"ended meeting {m.id}: {m.title} {_when(m)}")
        elif command == "invite":
            added = invitations.invite_points(session, args.meeting_id, args.point, version=None)
            _warn(added.warnings)
            count = sum(1 for i in added.meeting.invitations if i.active)
            print(f"meeting {added.meeting.id}: {count} points invited")
        else:  # pragma: no cover - argparse requires a known subcommand
            raise ValueError(f"unknown command meeting {command}")
    return 0


def _links(args: argparse.Namespace, settings: Settings, database: Any) -> int:
    """``conference meeting links ID``: the points' links, then the chat message."""
    import getpass
    import os

    from conference.core.i18n import load_catalogue, web_dir
    from conference.domain.invitations import point_links, share_text
    from conference.domain.meetings import get_meeting
    from conference.recording import audit
    from conference.settings import ensure_data_dir

    ensure_data_dir(settings)  # the links are signed with the server's secret
    catalogue = load_catalogue(web_dir())
    strings = {k: v.get(args.lang) or v["vi"] for k, v in catalogue.items()}
    with database.session() as session:
        meeting = get_meeting(session, args.meeting_id)
        links = point_links(settings, meeting)
        text = share_text(meeting, links, strings)
        meeting_id = meeting.id
    audit.append(
        settings.data_dir / audit.AUDIT_FILE,
        {
            "action": "links",
            "via": "cli",
            "username": os.environ.get("SUDO_USER") or getpass.getuser(),
            "meeting": str(meeting_id),
            "points": len(links),
        },
    )
    for link in links:
        print(f"{link.point}\t{link.name}\t{link.link}")
    print()
    print(text)
    return 0


def _send(args: argparse.Namespace, settings: Settings, database: Any) -> int:
    from sqlalchemy import select

    from conference.domain.invitations import send_pending
    from conference.domain.meetings import get_meeting
    from conference.domain.models import Meeting, utcnow
    from conference.notify.mail import mail_configured
    from conference.settings import ensure_data_dir

    if not mail_configured(settings):
        raise ValueError("e-mail is not configured: set smtp_host (CONFERENCE_SMTP_HOST)")
    if settings.token_secret is None:
        ensure_data_dir(settings)  # the links are signed with the server's secret

    def ids(session: Any) -> list[int]:
        found = [get_meeting(session, value).id for value in args.meeting_id]
        if args.series:
            found += list(
                session.scalars(
                    select(Meeting.id)
                    .where(
                        Meeting.series_id == args.series,
                        Meeting.end_at > utcnow(),
                        Meeting.status == "scheduled",
                    )
                    .order_by(Meeting.start_at)
                    .limit(max(1, args.upcoming))
                )
            )
        if not found:
            raise ValueError("send-invitations: give meeting IDs or --series N")
        return found

    meeting_ids = database.call(ids)

    async def send_all() -> int:
        failures = 0
        for meeting_id in meeting_ids:
            report = await send_pending(database, settings, meeting_id)
            parts = [f"{len(report.sent)} sent", f"{len(report.cancelled)} cancellations"]
            if report.no_email:
                parts.append(f"no e-mail address: {', '.join(report.no_email)}")
            print(f"meeting {meeting_id}: " + ", ".join(parts))
            for point, error in report.failed.items():
                failures += 1
                print(f"conference: error: meeting {meeting_id}, {point}: {error}", file=sys.stderr)
        return failures

    return 1 if asyncio.run(send_all()) else 0
