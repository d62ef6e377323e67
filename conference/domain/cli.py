"""`conference db|unit|point|user ...`: database and organisation administration.

`add_commands` registers the subcommands on the main parser (conference/cli.py); `run`
executes one.  Every command upgrades the database schema first (a no-op when current), so
a fresh data directory works without `conference db upgrade`.  Errors are `ValueError`s
with one-line messages, which conference/cli.py prints as `conference: error: ...`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from conference.settings import Settings, SettingsError

__all__ = ["COMMANDS", "add_commands", "print_first_admin", "prepare_database", "run"]

COMMANDS = frozenset(
    {"db", "unit", "units", "point", "points", "user", "users", "meeting", "meetings"}
)
_UNIT_KINDS = ("province", "district", "commune")
_ROLES = ("admin", "chair", "secretary", "operator")
_BANDWIDTH = ("low", "standard", "high")


def add_commands(commands: Any, settings_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add db, unit, point and user to `commands` (an argparse subparsers object)."""
    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    settings_flags(db_commands.add_parser("upgrade", help="create or upgrade the schema"))

    unit = commands.add_parser("unit", aliases=["units"], help="administrative units")
    unit_commands = unit.add_subparsers(dest="unit_command", metavar="COMMAND", required=True)
    add = unit_commands.add_parser("add", help="add a province, district or commune")
    add.add_argument("--code", required=True, help="unique code, e.g. 08101 or xa-tan-lap")
    add.add_argument("--name", required=True, help="e.g. 'Xã Tân Lập'")
    add.add_argument("--kind", required=True, choices=_UNIT_KINDS)
    add.add_argument("--parent", metavar="CODE", help="code of the parent unit")
    settings_flags(add)
    listing = unit_commands.add_parser("list", help="list units as a tree")
    listing.add_argument("--under", metavar="CODE", help="only this unit and those below it")
    settings_flags(listing)
    imp = unit_commands.add_parser(
        "import", help="import units and points from a CSV file (all rows or none)"
    )
    imp.add_argument("file", metavar="FILE.csv", help="UTF-8 CSV, see docs/OPERATIONS.md")
    settings_flags(imp)

    point = commands.add_parser("point", aliases=["points"], help="meeting points (điểm cầu)")
    point_commands = point.add_subparsers(dest="point_command", metavar="COMMAND", required=True)
    add = point_commands.add_parser("add", help="add a meeting point")
    add.add_argument("--code", required=True, help="unique code, e.g. ubnd-tan-lap")
    add.add_argument("--name", required=True, help="e.g. 'UBND xã Tân Lập'")
    add.add_argument("--unit", required=True, metavar="CODE", help="the unit it belongs to")
    add.add_argument("--email", help="contact e-mail (invitations are sent there)")
    add.add_argument("--phone", help="contact phone")
    add.add_argument("--bandwidth", choices=_BANDWIDTH, help="link profile (default: standard)")
    settings_flags(add)
    listing = point_commands.add_parser("list", help="list meeting points")
    listing.add_argument("--unit", metavar="CODE", help="only points of this unit and below")
    settings_flags(listing)

    user = commands.add_parser("user", aliases=["users"], help="accounts")
    user_commands = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    add = user_commands.add_parser("add", help="add an account")
    add.add_argument("--username", required=True)
    add.add_argument("--role", required=True, choices=_ROLES)
    add.add_argument("--unit", metavar="CODE", help="unit the user sees (with everything below)")
    add.add_argument("--point", metavar="CODE", help="the point an operator runs")
    add.add_argument("--name", help="display name, e.g. 'Nguyễn Văn An'")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    settings_flags(add)
    passwd = user_commands.add_parser("passwd", help="set a user's password")
    passwd.add_argument("username")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    settings_flags(passwd)
    settings_flags(user_commands.add_parser("list", help="list accounts"))
    token = user_commands.add_parser(
        "token", help="print a bearer token for the JSON API (/api/v1/) as this user"
    )
    token.add_argument("username")
    token.add_argument("--ttl", default="1h", help="lifetime, at most 24h (default: 1h)")
    settings_flags(token)
    signout = user_commands.add_parser(
        "signout", help="sign a user out everywhere: its sessions and API tokens end"
    )
    signout.add_argument("username")
    settings_flags(signout)

    from conference.domain.meeting_cli import add_meeting_commands

    add_meeting_commands(commands, settings_flags)


def prepare_database(settings: Settings) -> Any:
    """Create the data directory if SQLite lives there, upgrade the schema, open it."""
    from conference.domain import db

    if settings.database_url is None:
        try:
            settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"cannot create directory {settings.data_dir}: {exc.strerror}"
            ) from None
    db.upgrade(settings)
    return db.Database.from_settings(settings)


def print_first_admin(settings: Settings) -> None:
    """For `serve`: upgrade the database; on an empty user table create and show `admin`."""
    from conference.domain.accounts import FIRST_ADMIN, first_run_admin

    database = prepare_database(settings)
    try:
        password = first_run_admin(database)
    finally:
        database.close()
    if password is not None:
        print(
            f"conference: created the administrator account '{FIRST_ADMIN}' with the password "
            f"{password}\nconference: this password is shown only once; change it with: "
            f"conference user passwd {FIRST_ADMIN}",
            flush=True,
        )


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise ValueError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat the password: ") != first:
        raise ValueError("the passwords do not match")
    return first


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of COMMANDS; returns the exit code."""
    from conference.domain import accounts, organisation

    command = args.command.rstrip("s") if args.command != "db" else "db"
    if command == "user" and args.user_command in ("add", "passwd"):
        password = _read_password(args.password_stdin)  # before touching the database
    database = prepare_database(settings)
    try:
        if command == "meeting":
            from conference.domain.meeting_cli import run_meeting

            return run_meeting(args, settings, database)
        if command == "db":
            from conference.domain.db import current_revision, redacted

            print(
                f"database {redacted(database.url)} is at revision "
                f"{current_revision(database.engine)}"
            )
            return 0
        with database.session() as session:
            if command == "unit" and args.unit_command == "add":
                unit = organisation.create_unit(
                    session, code=args.code, name=args.name, kind=args.kind, parent=args.parent
                )
                print(f"added {unit.kind} {unit.code}: {unit.name}")
            elif command == "unit" and args.unit_command == "list":
                under = organisation.get_unit(session, args.under) if args.under else None
                _print_unit_tree(organisation.list_units(session, under))
            elif command == "unit" and args.unit_command == "import":
                from pathlib import Path

                result = organisation.import_csv(session, Path(args.file))
                print(f"imported {len(result.units)} units and {len(result.points)} points")
            elif command == "point" and args.point_command == "add":
                point = organisation.create_point(
                    session,
                    code=args.code,
                    name=args.name,
                    unit=args.unit,
                    email=args.email,
                    phone=args.phone,
                    bandwidth=args.bandwidth,
                )
                print(f"added point {point.code}: {point.name} ({point.unit.code})")
            elif command == "point" and args.point_command == "list":
                under = organisation.get_unit(session, args.unit) if args.unit else None
                for p in organisation.list_points(session, under):
                    fields = [p.code, p.name, p.unit.code, p.bandwidth_profile]
                    fields += [p.contact_email or "-", p.phone or "-"]
                    fields.append("active" if p.active else "inactive")
                    print("\t".join(fields))
            elif command == "user" and args.user_command == "add":
                user = accounts.create_user(
                    session,
                    username=args.username,
                    password=password,
                    role=args.role,
                    unit=args.unit,
                    point=args.point,
                    display_name=args.name,
                )
                scope = user.unit.code if user.unit else "all units"
                print(f"added {user.role} {user.username} ({scope})")
            elif command == "user" and args.user_command == "token":
                print(_api_token(session, settings, args.username, args.ttl))
            elif command == "user" and args.user_command == "signout":
                user = accounts.end_sessions(accounts.get_user(session, args.username))
                print(f"{user.username} is signed out everywhere (sessions and API tokens)")
            elif command == "user" and args.user_command == "passwd":
                user = accounts.set_password(session, args.username, password)
                print(f"password of {user.username} changed")
            elif command == "user" and args.user_command == "list":
                for u in accounts.list_users(session):
                    last = u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "-"
                    fields = [u.username, u.role, u.unit.code if u.unit else "*"]
                    fields += [u.point.code if u.point else "-", u.display_name, last]
                    fields.append("active" if u.active else "inactive")
                    print("\t".join(fields))
            else:  # pragma: no cover - argparse requires a known subcommand
                raise ValueError(f"unknown command {args.command}")
    finally:
        database.close()
    return 0


def _api_token(session: Any, settings: Settings, username: str, ttl: str) -> str:
    """`conference user token`: an API token (domain/usertokens.py) of an active user."""
    from conference.domain.accounts import get_user
    from conference.domain.usertokens import create_api_token
    from conference.settings import ensure_data_dir
    from conference.tokens import parse_ttl

    lifetime = parse_ttl(ttl)
    user = get_user(session, username)
    if not user.active:
        raise ValueError(f"user {user.username!r} is disabled")
    return create_api_token(ensure_data_dir(settings), user, lifetime)


def _print_unit_tree(units: list[Any]) -> None:
    by_parent: dict[int | None, list[Any]] = {}
    ids = {u.id for u in units}
    for unit in units:
        parent = unit.parent_id if unit.parent_id in ids else None
        by_parent.setdefault(parent, []).append(unit)

    def show(parent: int | None, depth: int) -> None:
        for unit in by_parent.get(parent, []):
            print(f"{'  ' * depth}{unit.code}\t{unit.kind}\t{unit.name}")
            show(unit.id, depth + 1)

    show(None, 0)
