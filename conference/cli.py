"""The `conference` command: serve, token, loadtest, db, unit, point, user, version.

Expected errors (bad settings, bad arguments, rejected tokens, unusable files) are printed
as one line ``conference: error: ...`` on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import sys
from collections.abc import Sequence

from conference import __version__
from conference.backup import cli as backup_cli
from conference.core.identity import split_identity
from conference.domain import cli as domain_cli
from conference.recording import cli as recording_cli
from conference.settings import (
    TLS_MODES,
    Settings,
    SettingsError,
    ensure_data_dir,
    load_secret,
    load_settings,
    protect_files,
)
from conference.tokens import ROLES, Grants, TokenError, create_token, parse_ttl, verify_token
from conference.tools.loadtest.command import add_arguments as add_loadtest_arguments
from conference.tools.loadtest.command import run_command as run_loadtest

__all__ = ["main"]

PROG = "conference"
EXIT_ERROR = 2
GRANT_NAMES = ("publish", "subscribe", "moderate", "record")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="District-to-commune video briefing server."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def settings_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", metavar="FILE", help="TOML settings file")
        sub.add_argument("--data-dir", metavar="DIR", help="data directory (default: data)")

    serve = commands.add_parser("serve", help="run the server")
    settings_flags(serve)
    serve.add_argument("--host", help="listen address (default: 0.0.0.0)")
    serve.add_argument("--port", type=int, help="HTTPS port (default: 8443)")
    serve.add_argument("--recordings-dir", metavar="DIR", help="where recordings are written")
    serve.add_argument(
        "--ice-host",
        action="append",
        metavar="ADDR",
        dest="ice_hosts",
        help="address ICE may use for host candidates (repeatable; default: all interfaces)",
    )
    serve.add_argument("--tls", choices=TLS_MODES, help="TLS mode (default: self-signed)")
    serve.add_argument("--tls-cert", metavar="FILE", help="certificate file (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="private key file (PEM)")
    serve.add_argument(
        "--redis-url", metavar="URL", help="Redis shared with the other nodes (default: none)"
    )
    serve.add_argument("--node-name", metavar="NAME", help="this node's name in the cluster")
    serve.add_argument(
        "--cluster-name",
        metavar="NAME",
        help="the cluster's namespace in Redis (default: conference)",
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        help="processes sharing the port, one node each (default: 1; auto: one per core; "
        "more than one needs --redis-url)",
    )

    token = commands.add_parser("token", help="create or verify access tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)

    create = token_commands.add_parser("create", help="print a new access token")
    create.add_argument("--meeting", required=True, metavar="ID")
    create.add_argument(
        "--identity",
        required=True,
        metavar="ID",
        help="who: pt:CODE (a meeting point), u:USERNAME (an account), g:ID (a guest); "
        "a bare ID is a hand-made token's own identity (t:ID), never a point's or an account's",
    )
    create.add_argument("--name", required=True, help="display name, e.g. 'UBND xã Tân Lập'")
    create.add_argument("--role", required=True, help=f"one of: {', '.join(ROLES)}")
    create.add_argument("--ttl", default="3h", help="lifetime, e.g. 3h, 90m, 1h30m (default: 3h)")
    create.add_argument(
        "--grant", action="append", default=[], choices=GRANT_NAMES, help="add a grant"
    )
    create.add_argument(
        "--no-grant", action="append", default=[], choices=GRANT_NAMES, help="remove a grant"
    )
    settings_flags(create)

    verify = token_commands.add_parser("verify", help="check a token and print its claims")
    verify.add_argument("token", metavar="TOKEN", help="the token, or - to read it from stdin")
    verify.add_argument("--meeting", metavar="ID", help="require this meeting")
    settings_flags(verify)

    loadtest = commands.add_parser(
        "loadtest",
        help="simulate a briefing against a server and report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_loadtest_arguments(loadtest)

    domain_cli.add_commands(commands, settings_flags)
    recording_cli.add_commands(commands, settings_flags)
    backup_cli.add_commands(commands, settings_flags)

    commands.add_parser("version", help="print the version")
    return parser


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    return load_settings(
        config_file=args.config, overrides={"data_dir": args.data_dir, **overrides}
    )


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        recordings_dir=args.recordings_dir,
        ice_hosts=args.ice_hosts,
        tls=args.tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        redis_url=args.redis_url,
        node_name=args.node_name,
        workers=args.workers,
        cluster_name=args.cluster_name,
    )
    protect_files(settings)
    ensure_data_dir(settings, recordings=True)
    # Creates or upgrades the database; on first run creates and prints the admin account.
    domain_cli.print_first_admin(settings)
    # Imported lazily: the server pulls in the media stack, which other commands do not need.
    try:
        server = importlib.import_module("conference.server")
    except ModuleNotFoundError as exc:
        if exc.name != "conference.server":
            raise
        return _fail("this installation has no server module (conference.server)")
    if settings.workers > 1:  # a supervisor of N nodes sharing the port
        code: int = importlib.import_module("conference.workers").supervise(settings)
        return code
    result = server.run_server(settings)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result if isinstance(result, int) else 0


def _grants(args: argparse.Namespace) -> Grants | None:
    if not args.grant and not args.no_grant:
        return None
    both = sorted(set(args.grant) & set(args.no_grant))
    if both:
        raise ValueError(f"--grant and --no-grant both name {both[0]!r}")
    values = Grants.for_role(args.role).to_dict()
    values.update(dict.fromkeys(args.grant, True))
    values.update(dict.fromkeys(args.no_grant, False))
    return Grants(**values)


def _token_create(args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl)
    grants = _grants(args)
    secret = ensure_data_dir(_settings(args))
    bare = split_identity(args.identity)[0] is None
    token = create_token(
        secret,
        meeting=args.meeting,
        identity=args.identity,
        kind="token" if bare else None,
        name=args.name,
        role=args.role,
        ttl=ttl,
        grants=grants,
    )
    print(token)
    return 0


def _token_verify(args: argparse.Namespace) -> int:
    secret = load_secret(_settings(args))
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    claims = verify_token(secret, token, meeting=args.meeting)
    print(json.dumps(claims.to_dict(), ensure_ascii=False, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "token" and args.token_command == "create":
            return _token_create(args)
        if args.command == "token" and args.token_command == "verify":
            return _token_verify(args)
        if args.command == "loadtest":
            return run_loadtest(args)
        if args.command in recording_cli.COMMANDS:
            settings = _settings(args, recordings_dir=args.recordings_dir)
            protect_files(settings)  # compositions and sealed manifests: private too
            return recording_cli.run(args, settings)
        if args.command in backup_cli.COMMANDS:
            settings = _settings(args, recordings_dir=args.recordings_dir)
            protect_files(settings)  # the archive and what a restore writes: private
            return backup_cli.run(args, settings)
        if args.command in domain_cli.COMMANDS:
            settings = _settings(args)
            protect_files(settings)
            return domain_cli.run(args, settings)
        if args.command == "version":
            print(f"{PROG} {__version__}")
            return 0
    except TokenError as exc:
        return _fail(f"token rejected ({exc.code}): {exc.message}")
    except (SettingsError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    parser.print_help(sys.stderr)
    return EXIT_ERROR


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR
