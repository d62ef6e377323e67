"""Turning what the workers measured into the load-test report (JSON and a table).

:func:`build_report` combines the seats' stream reports with the server's
CPU and memory samples; :func:`format_report` prints it for people, and
:func:`check_targets` compares it with the issue's targets for a briefing
(server under one core, no freezes, loss under 0.5 %, join p95 under 2 s,
under 10 MB per participant).

With points on weak links (``--weak``) the report has a ``links`` section:
``strong`` (the chair and the points on no emulated link) and one entry per
profile, each with what its participants received (video freezes, frame
rate, loss, time paused by the server; audio gaps), how the others received
what they published, and what the emulated links did (relay and tbf
counters).  ``link_targets`` checks issue 11's bounds: strong participants no
video freeze; weak points no audio gap over 300 ms and video at 10 fps or
more.  The issue-6 freeze and loss targets then count the strong
participants only.

Size: over 600 lines: the report's figures, its table and the target checks read the
same structure; a load-test tool, never imported by the server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "LINK_TARGETS",
    "TARGETS",
    "build_report",
    "check_targets",
    "check_link_targets",
    "format_report",
    "percentile",
]

#: (key, label, limit): the issue's targets, checked for every scenario.
TARGETS = (
    ("server_cpu_pct", "server CPU < 100 % of one core", 100.0),
    ("video_freezes", "video freezes (> 500 ms) = 0", 0.0),
    ("video_dark", "videos received that never played = 0", 0.0),
    ("loss_pct", "loss < 0.5 %", 0.5),
    ("join_p95_s", "join p95 < 2 s", 2.0),
    ("rss_mb_per_participant", "server memory < 10 MB per participant", 10.0),
    # soak runs only (a window of 10 minutes or more): first -> last 5 minutes
    ("soak_cpu_growth_pct", "soak: server CPU growth < 10 %", 10.0),
    ("soak_rss_growth_pct", "soak: server memory growth < 10 %", 10.0),
)
#: The span compared at both ends of a soak run (seconds); runs shorter than
#: twice this have no soak verdict.
SOAK_SPAN = 300.0
#: issue 11's bounds per link: (key, label, limit); "strong" or any weak profile
LINK_TARGETS = (
    ("strong", "video_freezes", "video freezes = 0", 0.0),
    ("weak", "audio_gap_ms", "no audio gap > 300 ms", 300.0),
    ("weak", "video_fps_window_min", "video >= 10 fps (pauses count as 0)", 10.0),
)
#: a received video counts for the frame rate when shown at least this long (s)
MIN_SHOWING = 1.0
#: a video subscribed this long (not paused by the server) without a frame is dark:
#: the subscriber never saw it (no gap between frames counts it as a freeze)
DARK_AFTER = 2.0


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; None if empty."""
    data = sorted(values)
    if not data:
        return None
    position = (len(data) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _quantiles(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50_s": _r(percentile(values, 0.5)),
        "p95_s": _r(percentile(values, 0.95)),
        "max_s": _r(max(values)) if values else None,
    }


def _kind_summary(streams: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    expected = sum(s["expected"] for s in streams)
    lost = sum(s["lost"] for s in streams)
    raw = sum(s["raw_missing"] for s in streams)
    # the streams received through the whole window, and those of them shown long enough
    whole = [s for s in streams if s["reason"] == "join" and s["active"]]
    shown = [s for s in whole if s["seconds"] - s.get("paused_seconds", 0.0) >= MIN_SHOWING]
    return {
        "streams": len(streams),
        "packets": sum(s["packets"] for s in streams),
        "bytes": sum(s["bytes"] for s in streams),
        "repaired": sum(s["repaired"] for s in streams),
        "expected": expected,
        "lost": lost,
        "loss_pct": round(100 * lost / expected, 3) if expected else 0.0,
        "raw_loss_pct": round(100 * raw / expected, 3) if expected else 0.0,
        "loss_pct_max": max((s["loss_pct"] for s in streams), default=0.0),
        "frames": sum(s["frames"] for s in streams),
        # the frame rate while shown (not paused by the server)
        "fps_mean": round(sum(s["fps"] for s in shown) / len(shown), 2) if shown else None,
        "fps_min": round(min(s["fps"] for s in shown), 2) if shown else None,
        # frames over the whole window (paused time and keyframe waits count as 0 fps)
        "fps_window_min": round(min(s.get("fps_window", s["fps"]) for s in whole), 2)
        if whole
        else None,
        "freezes": sum(s["freezes"] for s in streams),
        "freeze_seconds": round(sum(s["freeze_seconds"] for s in streams), 3),
        "streams_with_freezes": sum(1 for s in streams if s["freezes"]),
        "dark": sum(
            1
            for s in streams
            if not s["frames"] and s["seconds"] - s.get("paused_seconds", 0.0) >= DARK_AFTER
        ),
        "max_frame_gap_s": max((s["max_frame_gap_s"] for s in streams), default=0.0),
        "gaps_over_300ms": sum(s.get("gaps", 0) for s in streams),
        "paused_seconds": round(sum(s.get("paused_seconds", 0.0) for s in streams), 3),
        "abandoned_frames": sum(s["abandoned_frames"] for s in streams),
    }


def _link_summary(
    name: str, group: list[dict[str, Any]], seats: list[dict[str, Any]], config: dict[str, Any]
) -> dict[str, Any]:
    """What the participants on one link (``strong`` or a profile) received and sent."""
    from ..linkemu import PROFILES
    from .weak import weak_camera_kbps

    seconds = 1.0
    streams = [s for seat in group for s in seat["streams"]]
    video = _kind_summary([s for s in streams if s["kind"] == "video"], seconds)
    audio = _kind_summary([s for s in streams if s["kind"] == "audio"], seconds)
    identities = {seat["identity"] for seat in group}
    published = [
        s
        for seat in seats
        if seat["identity"] not in identities
        for s in seat["streams"]
        if s["publisher"] in identities and s["kind"] == "video"
    ]
    sent = _kind_summary(published, seconds)
    summary: dict[str, Any] = {
        "profile": None,
        "participants": len(group),
        "points": sum(1 for seat in group if seat["index"] != 0),
        "joined": sum(1 for seat in group if seat["joined"]),
        "seats": [seat["identity"] for seat in group] if name != "strong" else None,
        "video": video,
        "audio": audio,
        "published_video": {
            "streams": sent["streams"],
            "freezes": sent["freezes"],
            "loss_pct": sent["loss_pct"],
            "fps_mean": sent["fps_mean"],
        },
    }
    profile = PROFILES.get(name)
    if profile is not None:
        summary["profile"] = {
            "down_kbps": profile.down_kbps,
            "up_kbps": profile.up_kbps,
            "rtt_ms": profile.rtt_ms,
            "loss_pct": round(profile.loss * 100, 2),
            "jitter_ms": profile.jitter_ms,
        }
        summary["camera_kbps"] = weak_camera_kbps(int(config.get("bitrate_kbps") or 500), profile)
        stats = [seat["link_stats"] for seat in group if seat.get("link_stats")]
        link: dict[str, Any] = {}
        for key in (
            "relay_up_forwarded",
            "relay_up_dropped",
            "relay_down_forwarded",
            "relay_down_dropped",
            "tbf_up_packets",
            "tbf_up_dropped",
            "tbf_down_packets",
            "tbf_down_dropped",
        ):
            link[key] = sum(int(st.get(key, 0)) for st in stats)
        for direction in ("up", "down"):
            total = link[f"relay_{direction}_forwarded"] + link[f"relay_{direction}_dropped"]
            link[f"relay_{direction}_loss_pct"] = (
                round(100 * link[f"relay_{direction}_dropped"] / total, 2) if total else 0.0
            )
            rates = [st[f"tbf_{direction}_kbps"] for st in stats if f"tbf_{direction}_kbps" in st]
            link[f"tbf_{direction}_kbps_mean"] = (
                round(sum(rates) / len(rates), 1) if rates else None
            )
        summary["link"] = link
    return summary


def _links(seats: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any] | None:
    """The per-link section, or None when no seat is on a weak link."""
    names = sorted({seat["link"] for seat in seats if seat.get("link")})
    if not names:
        return None
    groups = {"strong": [seat for seat in seats if not seat.get("link")]}
    for name in names:
        groups[name] = [seat for seat in seats if seat.get("link") == name]
    return {name: _link_summary(name, group, seats, config) for name, group in groups.items()}


def check_link_targets(links: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 11's bounds per link, with the measured value and ``ok``."""
    results: list[dict[str, Any]] = []
    for name, summary in (links or {}).items():
        for applies, key, label, limit in LINK_TARGETS:
            if (applies == "strong") != (name == "strong"):
                continue
            ok: bool | None
            value: float | None
            if key == "video_freezes":
                value = float(summary["video"]["freezes"])
                ok = value <= limit
            elif key == "audio_gap_ms":
                audio = summary["audio"]
                value = None if not audio["streams"] else round(audio["max_frame_gap_s"] * 1000)
                ok = None if value is None else value <= limit and not audio["gaps_over_300ms"]
            else:
                value = summary["video"]["fps_window_min"]
                ok = None if value is None else value >= limit
            results.append({"link": name, "target": label, "key": key, "value": value, "ok": ok})
    return results


def _speaker_summary(
    floor_changes: list[tuple[float, str]], log: list[tuple[float, str | None]], period: float
) -> dict[str, Any]:
    """Match each change of the floor with the first ``speaker`` message naming the new holder."""
    delays: list[float] = []
    missed: list[str] = []
    for at, identity in floor_changes:
        hit = next((t for t, who in log if who == identity and at <= t < at + period), None)
        if hit is None:
            missed.append(identity)
        else:
            delays.append(hit - at)
    return {
        "floor_changes": len(floor_changes),
        "detected": len(delays),
        "missed": missed[:20],
        "detection_delay": _quantiles(delays),
    }


def _drift(timeline: list[Any]) -> dict[str, Any] | None:
    """Server CPU and RSS in the first and last quarter of the window (for soak runs)."""
    if len(timeline) < 4:
        return None
    quarter = max(1, len(timeline) // 4)

    def mean(rows: list[Any], column: int) -> float | None:
        values = [row[column] for row in rows if row[column] is not None]
        return round(sum(values) / len(values), 1) if values else None

    def growth(before: float | None, after: float | None) -> float | None:
        if before is None or after is None or before <= 0:
            return None
        return round(100 * (after - before) / before, 1)

    first, last = timeline[:quarter], timeline[-quarter:]
    drift: dict[str, Any] = {
        "cpu_pct_first_quarter": mean(first, 1),
        "cpu_pct_last_quarter": mean(last, 1),
        "rss_mb_first_quarter": mean(first, 2),
        "rss_mb_last_quarter": mean(last, 2),
    }
    end = timeline[-1][0]
    if end >= 2 * SOAK_SPAN:
        first = [row for row in timeline if row[0] <= SOAK_SPAN]
        last = [row for row in timeline if row[0] > end - SOAK_SPAN]
        drift.update(
            cpu_pct_first_5min=mean(first, 1),
            cpu_pct_last_5min=mean(last, 1),
            rss_mb_first_5min=mean(first, 2),
            rss_mb_last_5min=mean(last, 2),
        )
        drift["cpu_growth_pct"] = growth(drift["cpu_pct_first_5min"], drift["cpu_pct_last_5min"])
        drift["rss_growth_pct"] = growth(drift["rss_mb_first_5min"], drift["rss_mb_last_5min"])
    return drift


def build_report(
    *,
    config: dict[str, Any],
    seats: list[dict[str, Any]],
    window: dict[str, Any],
    server: dict[str, Any],
    generator: dict[str, Any],
    floor_changes: list[tuple[float, str]],
    machine: dict[str, Any],
) -> dict[str, Any]:
    """The whole report as plain JSON values (see docs/BENCHMARKS.md for the fields)."""
    seconds = float(window["seconds"])
    chair = next((s for s in seats if s["index"] == 0), None)
    chair_identity = chair["identity"] if chair else ""
    webinar = config.get("scenario") == "webinar"
    for seat in seats:
        source = "program" if webinar else chair_identity
        chair_video = [
            s for s in seat["streams"] if s["publisher"] == source and s["kind"] == "video"
        ]
        seat["chair_video_packets"] = sum(s["packets"] for s in chair_video)
        seat["chair_video_frames"] = sum(s["frames"] for s in chair_video)
        seat["switches_seen"] = sum(
            1 for s in seat["streams"] if s["reason"] == "switch" and s["kind"] == "video"
        )
    streams = [s for seat in seats for s in seat["streams"]]
    video = [s for s in streams if s["kind"] == "video"]
    audio = [s for s in streams if s["kind"] == "audio"]
    joined = [s for s in seats if s["joined"]]
    viewers = [s for s in seats if s["index"] != 0]
    joins = [s["join_s"] for s in viewers if s["join_s"] is not None]
    switch_waits = [
        s["keyframe_wait_s"]
        for s in video
        if s["reason"] == "switch" and s["keyframe_wait_s"] is not None
    ]
    packets = sum(s["packets"] for s in streams)
    payload = sum(s["bytes"] for s in streams)
    video_summary = _kind_summary(video, seconds)
    audio_summary = _kind_summary(audio, seconds)
    expected = sum(s["expected"] for s in streams)
    lost = sum(s["lost"] for s in streams)
    connected = server.get("participants") or len(joined)
    rss_end = server.get("rss_mb_end")
    rss_before = server.get("rss_mb_before")
    if rss_end is not None and connected:
        server["rss_mb_per_participant"] = round(rss_end / connected, 2)
        if rss_before is not None:
            server["rss_mb_growth_per_participant"] = round((rss_end - rss_before) / connected, 2)
    server["drift"] = _drift(server.get("timeline") or [])
    log = chair["speaker_log"] if chair else []
    report: dict[str, Any] = {
        "tool": "conference loadtest",
        "config": config,
        "machine": machine,
        "window": window,
        "participants": {
            "planned": len(seats),
            "joined": len(joined),
            "failed": [
                {"identity": s["identity"], "error": s["error"]} for s in seats if not s["joined"]
            ][:20],
            "disconnected": [
                {
                    "identity": s["identity"],
                    "code": s.get("closed_code"),
                    "reason": s["left_reason"],
                }
                for s in seats
                if s.get("closed_code") is not None or s.get("left_reason")
            ][:20],
        },
        "join": _quantiles(joins),
        "server": server,
        "generator": generator,
        "forwarded": {
            "packets_per_s": round(packets / seconds, 1),
            "payload_mbps": round(payload * 8 / seconds / 1e6, 3),
            "video_packets_per_s": round(video_summary["packets"] / seconds, 1),
            "audio_packets_per_s": round(audio_summary["packets"] / seconds, 1),
        },
        "loss_pct": round(100 * lost / expected, 3) if expected else 0.0,
        "video": video_summary,
        "audio": audio_summary,
        "speaker": _speaker_summary(floor_changes, log, float(config.get("floor_period") or 0))
        | {"switch_keyframe_wait": _quantiles(switch_waits)},
        "seats": seats,
    }
    links = _links(seats, config)
    if links is not None:
        report["links"] = links
        report["link_targets"] = check_link_targets(links)
    report["targets"] = check_targets(report)
    return report


def _target_value(report: dict[str, Any], key: str) -> float | None:
    if key == "server_cpu_pct":
        value = report["server"].get("cpu_pct")
    elif key == "video_freezes":
        strong = (report.get("links") or {}).get("strong")
        value = (strong or report)["video"]["freezes"]
    elif key == "video_dark":
        strong = (report.get("links") or {}).get("strong")
        value = (strong or report)["video"].get("dark")
    elif key == "loss_pct":
        strong = (report.get("links") or {}).get("strong")
        if strong is not None:
            value = _combined_loss(strong["video"], strong["audio"])
        else:
            value = report["loss_pct"]
    elif key == "join_p95_s":
        value = report["join"]["p95_s"]
    elif key in ("soak_cpu_growth_pct", "soak_rss_growth_pct"):
        drift = report["server"].get("drift") or {}
        value = drift.get("cpu_growth_pct" if key == "soak_cpu_growth_pct" else "rss_growth_pct")
    else:
        value = report["server"].get("rss_mb_per_participant")
    return None if value is None else float(value)


def _combined_loss(video: dict[str, Any], audio: dict[str, Any]) -> float:
    """Video and audio loss together, weighted by packets (as the report's ``loss_pct``)."""
    expected = video.get("expected", 0) + audio.get("expected", 0)
    lost = video.get("lost", 0) + audio.get("lost", 0)
    return round(100 * lost / expected, 3) if expected else 0.0


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and ``ok`` (None when not measured)."""
    results = []
    for key, label, limit in TARGETS:
        value = _target_value(report, key)
        if value is None and key.startswith("soak_"):
            continue  # not a soak run
        if value is None:
            ok = None
        elif key in ("video_freezes", "video_dark"):
            ok = value <= limit
        else:
            ok = value < limit
        results.append({"target": label, "key": key, "value": value, "ok": ok})
    return results


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _soak_drift(drift: dict[str, Any]) -> str:
    if "cpu_growth_pct" not in drift:
        return ""
    return (
        f"; first -> last 5 min: CPU {_fmt(drift['cpu_pct_first_5min'], ' %')} ->"
        f" {_fmt(drift['cpu_pct_last_5min'], ' %')} ({_fmt(drift['cpu_growth_pct'], ' %')}),"
        f" RSS {_fmt(drift['rss_mb_first_5min'], ' MB')} ->"
        f" {_fmt(drift['rss_mb_last_5min'], ' MB')} ({_fmt(drift['rss_growth_pct'], ' %')})"
    )


def _format_links(links: dict[str, Any], noun: str = "point") -> list[str]:
    """The per-link block of the table: one paragraph per link."""
    lines = ["links (what each link's participants received; see docs/BENCHMARKS.md):"]
    for name, link in links.items():
        v, a, sent = link["video"], link["audio"], link["published_video"]
        count = f"{link['points']} {noun}{'' if link['points'] == 1 else 's'}"
        if name == "strong":
            chair = "chair + " if link["participants"] > link["points"] else ""
            head = f"  strong: {chair}{count}, no emulated link"
        else:
            p = link["profile"]
            short = ", ".join(identity.rsplit("-", 1)[-1] for identity in link["seats"])
            head = (
                f"  {name}: {count} ({short}),"
                f" {p['down_kbps']}/{p['up_kbps']} kbit/s down/up, RTT {p['rtt_ms']:g} ms"
                f" (+{p['jitter_ms']:g} ms jitter), {p['loss_pct']:g} % loss each way;"
                f" camera {link['camera_kbps']} kbps"
            )
        lines.append(head + f", {link['joined']} joined")
        lines.append(
            f"    video received: {v['streams']} streams, {_fmt(v['fps_mean'], ' fps')}"
            f" while shown (min {_fmt(v['fps_min'], ' fps')}; over the window, pauses"
            f" included: min {_fmt(v['fps_window_min'], ' fps')}), freezes {v['freezes']}"
            f" in {v['streams_with_freezes']} streams, longest gap {v['max_frame_gap_s']:.2f} s,"
            f" loss {v['loss_pct']:.2f} % (raw {v['raw_loss_pct']:.2f} %),"
            f" paused by the server {v['paused_seconds']:.1f} s"
        )
        lines.append(
            f"    audio received: {a['streams']} streams, longest gap"
            f" {a['max_frame_gap_s'] * 1000:.0f} ms, gaps > 300 ms {a['gaps_over_300ms']},"
            f" loss {a['loss_pct']:.2f} %"
        )
        lines.append(
            f"    their video as others received it: {sent['streams']} streams,"
            f" freezes {sent['freezes']}, loss {sent['loss_pct']:.2f} %"
        )
        link_stats = link.get("link")
        if link_stats:
            lines.append(
                f"    the link: relay dropped {link_stats['relay_up_loss_pct']:.2f} % up,"
                f" {link_stats['relay_down_loss_pct']:.2f} % down;"
                f" tbf dropped {link_stats['tbf_up_dropped']} up,"
                f" {link_stats['tbf_down_dropped']} down; mean rate per point"
                f" {_fmt(link_stats['tbf_up_kbps_mean'], ' kbit/s')} up,"
                f" {_fmt(link_stats['tbf_down_kbps_mean'], ' kbit/s')} down"
            )
    return lines


def _mosaic(report: dict[str, Any]) -> str:
    """The pages of its mosaic the chair went through (``--scenario province``)."""
    chair = next((seat for seat in report["seats"] if seat["index"] == 0), None)
    mosaic = chair.get("mosaic") if chair else None
    if not mosaic:
        return "n/a (the chair did not join)"
    return (
        f"{mosaic['pages_shown']} of {mosaic['pages']} pages of {mosaic['page_size']} cameras"
        f" shown (a page every {mosaic['page_period_s']:g} s)"
    )


def _audio_slots(report: dict[str, Any]) -> str | None:
    """How often an audio slot changed hands in the window, per page that had slots."""
    changes = [
        seat["audio_slot_changes"]
        for seat in report["seats"]
        if seat.get("joined") and seat.get("audio_slot_changes") is not None
    ]
    in_slots = any(
        stream.get("label", "").startswith("slots/")
        for seat in report["seats"]
        for stream in seat.get("streams", [])
    )
    if not changes or not in_slots:
        return None
    seconds = report["window"]["seconds"] or 1.0
    mean = sum(changes) / len(changes)
    return f"{mean:.1f} changes per page in the window ({mean / seconds * 60:.1f} a minute)"


def _per_participant(report: dict[str, Any]) -> str:
    """`` (0.74 % per participant; 9.1 µs per packet, 6,050 packets/s)``: the
    generator's CPU per simulated participant, and per RTP packet it handled (received,
    and sent by lean publishers) where it knows what it sent."""
    g = report["generator"]
    joined = report["participants"]["joined"]
    if g.get("cpu_pct") is None or not joined:
        return ""
    text = f" ({g['cpu_pct'] / joined:.2f} % per participant"
    if g.get("cpu_us_per_packet") is not None:
        rate = (g.get("packets_received_per_s") or 0) + (g.get("packets_sent_per_s") or 0)
        text += f"; {g['cpu_us_per_packet']:.1f} µs per packet, {rate:,} packets/s"
    if g.get("headers_read_pct"):
        text += f"; {g['headers_read_pct']:.0f} % of received packets read from headers"
    return text + ")"


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the report, for a terminal."""
    c = report["config"]
    s = report["server"]
    g = report["generator"]
    v, a = report["video"], report["audio"]
    j = report["join"]
    sp = report["speaker"]
    sw = sp["switch_keyframe_wait"]
    p = report["participants"]
    f = report["forwarded"]
    rows = [
        (
            "scenario",
            f"{c['scenario']}, {c['points']} {'viewers' if c['scenario'] == 'webinar' else 'points'}"
            f" + chair, {c['video']} {c['resolution']} {c['bitrate_kbps']} kbps {c['fps']} fps,"
            f" window {report['window']['seconds']:.0f} s, {c['processes']} process(es)"
            + (f", weak links {' '.join(c['weak'])}" if c.get("weak") else "")
            + (", lean publishers" if c.get("lean") else "")
            + (", muted microphones but the floor's" if c.get("muted") else ""),
        ),
        (
            "participants",
            f"{p['joined']} of {p['planned']} joined"
            + (f", {len(p['failed'])} failed" if p["failed"] else "")
            + (
                ", disconnected by the server: "
                + ", ".join(
                    f"{d['identity']} ({d['reason'] or 'code ' + str(d['code'])})"
                    for d in p["disconnected"][:5]
                )
                if p.get("disconnected")
                else ""
            ),
        ),
        (
            "join time",
            f"p50 {_fmt(j['p50_s'], ' s', 2)}, p95 {_fmt(j['p95_s'], ' s', 2)},"
            f" max {_fmt(j['max_s'], ' s', 2)} (token to first keyframe, n={j['count']})",
        ),
        (
            "server CPU",
            f"{_fmt(s.get('cpu_pct'), ' %')} of one core"
            + (
                f" (user {_fmt(s.get('cpu_user_pct'), ' %')}, system {_fmt(s.get('cpu_sys_pct'), ' %')})"
                if s.get("cpu_pct") is not None
                else ""
            )
            + f", pid {_fmt(s.get('pid'))}"
            + (
                f"; {len(s['workers'])} workers: "
                + ", ".join(f"{_fmt(w.get('cpu_pct'), ' %')}" for w in s["workers"])
                if s.get("workers")
                else ""
            )
            + "".join(
                f"; node {node['url']}: {_fmt(node.get('cpu_pct'), ' %')}"
                for node in s.get("nodes", [])
            ),
        ),
        (
            "server memory",
            f"RSS {_fmt(s.get('rss_mb_end'), ' MB')} (before {_fmt(s.get('rss_mb_before'), ' MB')},"
            f" peak {_fmt(s.get('rss_mb_peak'), ' MB')}):"
            f" {_fmt(s.get('rss_mb_per_participant'), ' MB', 2)} per participant,"
            f" growth {_fmt(s.get('rss_mb_growth_per_participant'), ' MB', 2)} per participant",
        ),
        (
            "server drift",
            "n/a (window too short)"
            if not s.get("drift")
            else f"CPU {_fmt(s['drift']['cpu_pct_first_quarter'], ' %')} ->"
            f" {_fmt(s['drift']['cpu_pct_last_quarter'], ' %')},"
            f" RSS {_fmt(s['drift']['rss_mb_first_quarter'], ' MB')} ->"
            f" {_fmt(s['drift']['rss_mb_last_quarter'], ' MB')} (first -> last quarter)"
            + _soak_drift(s["drift"]),
        ),
        (
            "forwarded",
            f"{f['packets_per_s']:.0f} packets/s, {f['payload_mbps']:.2f} Mbit/s payload"
            f" (video {f['video_packets_per_s']:.0f}/s, audio {f['audio_packets_per_s']:.0f}/s)",
        ),
        (
            "video",
            f"{v['streams']} streams, loss {v['loss_pct']:.3f} % (raw {v['raw_loss_pct']:.3f} %,"
            f" worst stream {v['loss_pct_max']:.2f} %), {_fmt(v['fps_mean'], ' fps')},"
            f" freezes {v['freezes']} in {v['streams_with_freezes']} streams"
            f" ({v['freeze_seconds']:.1f} s), longest gap {v['max_frame_gap_s']:.2f} s"
            + (f", {v['dark']} never played" if v.get("dark") else ""),
        ),
        (
            "audio",
            f"{a['streams']} streams, loss {a['loss_pct']:.3f} %, gaps > 500 ms {a['freezes']},"
            f" longest gap {a['max_frame_gap_s']:.2f} s",
        ),
        (
            "active speaker",
            f"{sp['detected']} of {sp['floor_changes']} floor changes detected"
            f" (delay p50 {_fmt(sp['detection_delay']['p50_s'], ' s', 2)},"
            f" max {_fmt(sp['detection_delay']['max_s'], ' s', 2)});"
            f" new speaker's video after p50 {_fmt(sw['p50_s'], ' s', 2)},"
            f" p95 {_fmt(sw['p95_s'], ' s', 2)} (n={sw['count']})",
        ),
        *([("chair mosaic", _mosaic(report))] if c.get("scenario") == "province" else []),
        *([("audio slots", slots)] if (slots := _audio_slots(report)) else []),
        (
            "load generator",
            f"{_fmt(g.get('cpu_pct'), ' %')} CPU in {g.get('processes')} process(es)"
            f"{_per_participant(report)},"
            f" event-loop lag p99 {_fmt(g.get('lag_p99_ms'), ' ms')};"
            f" machine busy {_fmt(g.get('machine_busy_pct'), ' %')},"
            f" others {_fmt(g.get('others_pct'), ' %')}",
        ),
        (
            "UDP drops",
            f"server sockets {_fmt(s.get('udp_drops'))}, load generator {_fmt(g.get('udp_drops'))},"
            f" whole machine {_fmt(g.get('udp_receive_buffer_drops_machine'))}"
            " (datagrams dropped by full receive buffers in the window)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {text}" for name, text in rows]
    links = report.get("links")
    if links:
        lines.append("")
        lines.extend(_format_links(links, "viewer" if c["scenario"] == "webinar" else "point"))
    lines.append("")
    lines.append(
        "targets (issue 6, for a 40-point briefing on 2 cores"
        + ("; freezes and loss: strong participants only):" if links else "):")
    )
    for t in report["targets"]:
        verdict = {True: "ok", False: "MISSED", None: "n/a"}[t["ok"]]
        lines.append(f"  {verdict:<7} {t['target']:<42} {_fmt(t['value'], '', 2)}")
    if report.get("link_targets"):
        lines.append("")
        lines.append("targets per link (issue 11):")
        for t in report["link_targets"]:
            verdict = {True: "ok", False: "MISSED", None: "n/a"}[t["ok"]]
            label = f"{t['link']}: {t['target']}"
            unit = " ms" if t["key"] == "audio_gap_ms" else ""
            lines.append(f"  {verdict:<7} {label:<42} {_fmt(t['value'], unit, 1)}")
    worst = sorted(
        (
            (st["freezes"], st["loss_pct"], seat["identity"], st["label"])
            for seat in report["seats"]
            for st in seat["streams"]
            if st["freezes"] or st["loss_pct"] > 0.5
        ),
        reverse=True,
    )[:5]
    if worst:
        lines.append("")
        lines.append("worst streams (viewer <- stream: freezes, loss):")
        for freezes, loss, who, label in worst:
            lines.append(f"  {who} <- {label}: {freezes} freezes, {loss:.2f} % loss")
    return "\n".join(lines)
