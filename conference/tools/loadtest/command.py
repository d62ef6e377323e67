"""``conference loadtest``: its options, and turning them into a run.

Imported by :mod:`conference.cli` for every command, so this module stays
light: the media stack is imported only when a load test actually runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from ..linkemu import PROFILES
from .plan import SCENARIOS, Config, Seat, make_seats, seats_from_tokens
from .procstat import is_local_host
from .weak import parse_weak_flag

__all__ = ["add_arguments", "config_from_args", "run_command", "seats_for"]

DESCRIPTION = """\
Simulate a briefing against a running server: a chair and N meeting points join
through the real signaling protocol (or N WHEP viewers watch the program feed),
publish pre-encoded camera and speech-like microphone media, watch what a
browser would, and check what they receive without decoding.  Prints a table,
writes the whole report as JSON with --json.  --weak puts a share of the points
on an emulated weak link (rate limit, loss, delay, jitter) and reports per link.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``conference loadtest``."""
    parser.description = DESCRIPTION
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8443")
    parser.add_argument(
        "--node",
        action="append",
        metavar="URL",
        dest="nodes",
        help="another node of the meeting (the nodes share a Redis): the points are spread"
        " over --url and the nodes, the chair stays on --url (repeatable)",
    )
    parser.add_argument("--meeting", required=True, metavar="ID", help="meeting ID to use")
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="briefing",
        help="briefing: the chair sees every point, points the chair and the speaker;"
        " province: as the pages of a large meeting do, every participant receives the"
        " microphones in audio slots, and the chair a paged mosaic (the cameras of one page of 25, the next"
        " page every 10 s); grid: everyone sees everyone;"
        " webinar: WHEP viewers of the program feed",
    )
    parser.add_argument(
        "--points", type=int, default=10, metavar="N", help="meeting points (webinar: viewers)"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, metavar="SECONDS", help="measurement window"
    )
    secrets = parser.add_mutually_exclusive_group()
    secrets.add_argument("--secret", metavar="S", help="the server's token secret")
    secrets.add_argument(
        "--data-dir", metavar="DIR", help="read the token secret from DIR/secret.key"
    )
    secrets.add_argument(
        "--tokens",
        metavar="FILE",
        help="tokens, one per line: the chair's, then one per point or viewer",
    )
    parser.add_argument("--video", choices=("vp8", "h264"), default="vp8")
    parser.add_argument("--resolution", choices=("360p", "720p"), default="360p")
    parser.add_argument(
        "--bitrate", type=int, metavar="KBPS", help="camera bitrate (default 500, 720p: 1500)"
    )
    parser.add_argument("--fps", type=int, default=30, help="camera frame rate (default 30)")
    parser.add_argument(
        "--processes", type=int, default=1, metavar="K", help="spread participants over K processes"
    )
    parser.add_argument(
        "--ramp", type=float, default=5.0, help="participants joining per second (default 5)"
    )
    parser.add_argument(
        "--floor-period",
        type=float,
        metavar="SECONDS",
        help="how long each speaker holds the floor (default: 30, or duration/4 if shorter)",
    )
    parser.add_argument(
        "--join-timeout", type=float, default=30.0, help="seconds a participant may take to join"
    )
    parser.add_argument(
        "--ice-host",
        action="append",
        dest="ice_hosts",
        metavar="ADDR",
        help="address for our ICE host candidates (repeatable; default 127.0.0.1 for a local URL)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="accept the server's self-signed certificate"
    )
    parser.add_argument("--server-pid", type=int, metavar="PID", help="the server's process ID")
    parser.add_argument(
        "--weak",
        action="append",
        type=_weak_flag,
        metavar="SHARE%:PROFILE",
        help="put SHARE of the points on an emulated weak link (repeatable), e.g. 30%%:4g-weak;"
        f" profiles: {', '.join(PROFILES)}.  Needs root and iproute2 (network namespaces)",
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="points publish pre-packetized RTP through the server's own send path and"
        " read what they receive from RTP headers (no SRTP unprotect; weak points excepted)",
    )
    parser.add_argument(
        "--muted",
        action="store_true",
        help="with --lean: a point's microphone is muted while it does not hold the floor"
        " (the room holds the others' when the chair gives the floor): it sends Opus DTX,"
        " ~5 packets a second as Chromium does, instead of room noise; the chair's and"
        " weak points' stay open",
    )
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _weak_flag(text: str) -> tuple[float, str]:
    try:
        return parse_weak_flag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> Config:
    """A :class:`Config` from parsed options (the ICE default depends on the URL)."""
    parsed = urlparse(args.url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"--url must be an http:// or https:// URL, not {args.url!r}")
    ice_hosts = list(args.ice_hosts or [])
    if not ice_hosts and is_local_host(parsed.hostname):
        ice_hosts = ["::1"] if parsed.hostname in ("::1", "[::1]") else ["127.0.0.1"]
    return Config(
        url=args.url.rstrip("/"),
        meeting=args.meeting,
        scenario=args.scenario,
        points=args.points,
        duration=args.duration,
        video=args.video,
        resolution=args.resolution,
        bitrate_kbps=args.bitrate,
        fps=args.fps,
        processes=args.processes,
        ramp=args.ramp,
        join_timeout=args.join_timeout,
        floor_period=args.floor_period,
        ice_hosts=ice_hosts,
        insecure=args.insecure,
        server_pid=args.server_pid,
        json_path=args.json,
        progress=not args.no_progress,
        weak=list(args.weak or []),
        nodes=[url.rstrip("/") for url in args.nodes or []],
        lean=args.lean,
        muted=args.muted,
    )


def seats_for(config: Config, args: argparse.Namespace) -> list[Seat]:
    """The participants, with tokens from --tokens, --secret, --data-dir or the settings."""
    if args.tokens:
        return seats_from_tokens(config, Path(args.tokens))
    secret = args.secret
    if secret is None:
        from ...settings import load_secret, load_settings

        settings = load_settings(overrides={"data_dir": args.data_dir})
        secret = load_secret(settings)
    return make_seats(config, secret)


def run_command(args: argparse.Namespace) -> int:
    """Run ``conference loadtest``: print the table, write the JSON; 0 when it ran."""
    config = config_from_args(args)
    if config.weak:
        from ..linkemu import available

        reason = available()
        if reason is not None:
            raise ValueError(f"--weak needs network namespaces with tbf: {reason}")
    seats = seats_for(config, args)
    from .eventloop import LoadTestEventLoop
    from .report import format_report
    from .runner import LoadTestError, run_loadtest

    try:
        with asyncio.Runner(loop_factory=LoadTestEventLoop) as runner:
            report = runner.run(run_loadtest(config, seats))
    except LoadTestError as exc:
        raise ValueError(str(exc)) from exc
    print(format_report(report))
    if config.json_path:
        path = Path(config.json_path)
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"report written to {path}", file=sys.stderr)
    return 0
