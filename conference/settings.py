"""Server settings: defaults < TOML file < environment < command-line overrides.

`load_settings` merges the four layers, converts and checks every value, and raises
`SettingsError` with a one-line message that names the offending key (the TOML key, the
environment variable or the setting name).  `ensure_data_dir` prepares the data and
recordings directories and the token signing secret on first run.

Size: a little over 600 lines: one field, one converter and one environment name per
setting (about 45 of them), with the cross-field checks; split by theme, each setting
would still be read in one place and checked in another.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_ENV",
    "ENV_VARS",
    "SECRET_FILE",
    "TLS_MODES",
    "Settings",
    "SettingsError",
    "ensure_data_dir",
    "load_secret",
    "load_settings",
]

log = logging.getLogger(__name__)

TLS_MODES = ("off", "self-signed", "files")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
SECRET_FILE = "secret.key"
MIN_SECRET_BYTES = 32  # HS256 key length recommended by RFC 7518, section 3.2
MIN_TURN_SECRET_BYTES = 16
CONFIG_ENV = "CONFERENCE_CONFIG"
UDP_PORTS_ENV = "CONFERENCE_UDP_PORTS"

#: Environment variable -> setting name (CONFERENCE_UDP_PORTS is handled separately).
ENV_VARS: dict[str, str] = {
    "CONFERENCE_HOST": "host",
    "CONFERENCE_PORT": "port",
    "CONFERENCE_DATA_DIR": "data_dir",
    "CONFERENCE_RECORDINGS_DIR": "recordings_dir",
    "CONFERENCE_RECORDING_RETENTION_DAYS": "recording_retention_days",
    "CONFERENCE_RECORDING_KEY": "recording_key",
    "CONFERENCE_ICE_HOSTS": "ice_hosts",
    "CONFERENCE_PUBLIC_IP": "public_ip",
    "CONFERENCE_ICE_SERVERS": "ice_servers",
    "CONFERENCE_TURN_SECRET": "turn_secret",
    "CONFERENCE_TURN_URLS": "turn_urls",
    "CONFERENCE_TURN_TTL": "turn_ttl",
    "CONFERENCE_TOKEN_SECRET": "token_secret",
    "CONFERENCE_TLS": "tls",
    "CONFERENCE_TLS_CERT": "tls_cert",
    "CONFERENCE_TLS_KEY": "tls_key",
    "CONFERENCE_MAX_PARTICIPANTS": "max_participants_per_room",
    "CONFERENCE_MAX_ROOMS": "max_rooms",
    "CONFERENCE_MAX_MESSAGE_BYTES": "max_message_bytes",
    "CONFERENCE_LOG_LEVEL": "log_level",
    "CONFERENCE_MEDIA_TIMEOUT": "media_timeout",
    "CONFERENCE_CONNECT_TIMEOUT": "connect_timeout",
    "CONFERENCE_WHIP_SYSTEM_DTLS": "whip_system_dtls",
    "CONFERENCE_RESUME_TIMEOUT": "resume_timeout",
    "CONFERENCE_HEADER_TIMEOUT": "header_timeout",
    "CONFERENCE_BODY_TIMEOUT": "body_timeout",
    "CONFERENCE_MAX_CONNECTIONS": "max_connections",
    "CONFERENCE_MAX_CONNECTIONS_PER_ADDRESS": "max_connections_per_address",
    "CONFERENCE_MAX_CONNECTIONS_EXEMPT": "max_connections_exempt",
    "CONFERENCE_DATABASE_URL": "database_url",
    "CONFERENCE_DATABASE_TIMEOUT": "database_timeout",
    "CONFERENCE_PUBLIC_URL": "public_url",
    "CONFERENCE_SMTP_HOST": "smtp_host",
    "CONFERENCE_SMTP_PORT": "smtp_port",
    "CONFERENCE_SMTP_SECURITY": "smtp_security",
    "CONFERENCE_SMTP_USER": "smtp_user",
    "CONFERENCE_SMTP_PASSWORD": "smtp_password",
    "CONFERENCE_MAIL_FROM": "mail_from",
    "CONFERENCE_LINK_HOURS_AFTER_END": "link_hours_after_end",
    "CONFERENCE_REMINDERS": "reminders",
    "CONFERENCE_REMINDER_INTERVAL": "reminder_interval",
    "CONFERENCE_SESSION_LIFETIME": "session_lifetime",
    "CONFERENCE_ADHOC_MEETINGS": "adhoc_meetings",
    "CONFERENCE_GROUP_ACCESS": "group_access",
    "CONFERENCE_AUTO_END_AFTER": "auto_end_after",
    "CONFERENCE_RECORDING_MIN_FREE_MB": "recording_min_free_mb",
    "CONFERENCE_REDIS_URL": "redis_url",
    "CONFERENCE_NODE_NAME": "node_name",
    "CONFERENCE_RELAY_HOST": "relay_host",
    "CONFERENCE_RELAY_PORT": "relay_port",
    "CONFERENCE_WORKERS": "workers",
    "CONFERENCE_CLUSTER_NAME": "cluster_name",
    "CONFERENCE_METRICS_TOKEN": "metrics_token",
    "CONFERENCE_METRICS_ALLOW": "metrics_allow",
    "CONFERENCE_METRICS_PORT": "metrics_port",
    "CONFERENCE_WEBHOOK_URLS": "webhook_urls",
    "CONFERENCE_WEBHOOK_SECRET": "webhook_secret",
    "CONFERENCE_WEBHOOK_RETRIES": "webhook_retries",
}


class SettingsError(ValueError):
    """A setting is missing, malformed or inconsistent; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass
class Settings:
    """Everything the server needs to start.  See README.md for the matching env names."""

    host: str = "0.0.0.0"
    port: int = 8443  # 0 = any free port (tests)
    data_dir: Path = Path("data")
    recordings_dir: Path = Path("recordings")
    #: Recordings older than this may be pruned (only once their minutes are final).
    recording_retention_days: int = 365
    #: Ed25519 key that signs recording manifests; None = data_dir/recording.key.
    recording_key: Path | None = None
    #: Addresses ICE may use for host candidates; empty = all non-loopback interfaces.
    ice_hosts: list[str] = field(default_factory=list)
    udp_port_min: int | None = None
    udp_port_max: int | None = None
    #: Address announced to clients when the server is behind NAT.
    public_ip: str | None = None
    #: STUN/TURN servers handed to clients: {"urls": [...], "username"?, "credential"?}.
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    #: The TURN server's shared secret (coturn's ``static-auth-secret``): each client gets
    #: its own expiring TURN credential from it (conference/turn.py); None = none.
    turn_secret: str | None = field(default=None, repr=False)
    #: That TURN server's turn:/turns: URLs, handed to clients with those credentials.
    turn_urls: list[str] = field(default_factory=list)
    #: Seconds a TURN credential allows new allocations: longer than the longest meeting
    #: (a page may open a connection hours after joining), but a leaked one works as long.
    turn_ttl: int = 12 * 3600
    token_secret: str | None = field(default=None, repr=False)
    tls: str = "self-signed"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_participants_per_room: int = 100
    max_rooms: int = 50
    # a subscriber offer grows with the room: ~1.7 KB per m-line, 40 points ~ 140 KB
    max_message_bytes: int = 1024 * 1024
    #: Seconds without media or RTCP before a WHIP/WHEP session is dropped.
    media_timeout: int = 15
    #: Seconds for ICE and DTLS to complete before a session is dropped.
    connect_timeout: int = 20
    #: WHIP encoders (FFmpeg, OBS, hardware) do their DTLS handshake on the system's
    #: OpenSSL 3 (libssl.so.3), which accepts the P-224 certificate FFmpeg makes by
    #: default; false = the OpenSSL bundled in ``cryptography``, as browsers (FFmpeg then
    #: needs ``-cert_file``/``-key_file`` with a P-256 certificate).
    whip_system_dtls: bool = True
    #: Seconds a participant whose WebSocket dropped keeps its place (peer connections,
    #: publications, subscriptions) for its page to resume the session; 0: never.
    resume_timeout: int = 15
    #: Seconds a client has to send a request head (line and headers): on a new
    #: connection (after the TLS handshake, itself limited to as long), or after the
    #: previous response on a kept-alive one (so also how long one stays idle).
    header_timeout: int = 15
    #: Seconds a client has to send a request body once its head has arrived.
    body_timeout: int = 60
    #: Open client connections in all; 0 = what the open-file limit leaves room for
    #: (conference/web/connections.py, ``connection_budget``).
    max_connections: int = 0
    #: Open connections from one client address (one IPv6 /64); 0 = no such cap.
    max_connections_per_address: int = 100
    #: Addresses or networks free of ``max_connections_per_address`` (a reverse proxy on
    #: this machine brings every client from 127.0.0.1).
    max_connections_exempt: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    log_level: str = "INFO"
    #: SQLAlchemy URL of the database; None = SQLite file data_dir/conference.db.
    database_url: str | None = field(default=None, repr=False)
    #: Seconds any wait on the database may last (a lock, a connection, the pool): then
    #: the page or API call answers 503 with Retry-After (conference/domain/db.py).
    database_timeout: int = 5
    #: Base URL of the server as points reach it, for links in e-mails (https://hop.example.vn).
    public_url: str | None = None
    #: SMTP server for invitations and reminders; None = no e-mail is sent.
    smtp_host: str | None = None
    smtp_port: int = 587
    #: "starttls" (port 587), "tls" (implicit TLS, port 465) or "none" (a local relay only).
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    #: Sender of invitations and reminders, e.g. "Văn phòng UBND huyện <hop@huyen.gov.vn>".
    mail_from: str | None = None
    #: An invitation link works from 30 minutes before the start to this long after the end.
    link_hours_after_end: int = 3
    #: How long before the start reminders are sent (e.g. ["24h", "15m"]); [] = none.
    reminders: list[str] = field(default_factory=lambda: ["24h", "15m"])
    #: Seconds between two runs of the reminder task.
    reminder_interval: int = 60
    #: Seconds a browser sign-in lasts (the session cookie's expiry), 8 hours by default.
    session_lifetime: int = 8 * 3600
    #: A meeting id that is not a meeting of the database is an ad-hoc room, admitted by its
    #: signed token alone; false = only scheduled meetings (others: ``unknown-meeting``).
    adhoc_meetings: bool = True
    #: What the server creates (database, keys, recordings, compositions) is readable by
    #: the owner only (folders 0700, files 0600); true = also by the owner's group (0750,
    #: 0640), e.g. for a backup or an archive account in that group.
    group_access: bool = False
    #: A live meeting whose room stays empty this many minutes after its scheduled end
    #: ends by itself (0 = never): a meeting nobody ended keeps its points busy.
    auto_end_after: int = 30
    #: Recording refuses to start with less free space than this (MB) where recordings
    #: go; a running recording stops and seals itself below a quarter of it.
    recording_min_free_mb: int = 2048
    #: Redis shared by the nodes serving one meeting together (redis://host:6379/0);
    #: None = this process is the only node.
    redis_url: str | None = field(default=None, repr=False)
    #: This node's name in the cluster (unique per node); None = the host name and port.
    node_name: str | None = None
    #: The nodes with the same ``redis_url`` and cluster name serve meetings together; a
    #: second installation on the same Redis takes another name (its keys' namespace).
    cluster_name: str = "conference"
    #: Address of this node's relay socket, which the other nodes send media to: a
    #: private-network or loopback address (the relay is authenticated, not encrypted).
    relay_host: str = "127.0.0.1"
    #: UDP port of the relay socket; 0 = any free port.
    relay_port: int = 0
    #: Nodes (processes) `conference serve` runs on this machine, sharing the HTTPS port
    #: (conference/workers.py); more than one needs ``redis_url``.  "auto": one per core.
    workers: int = 1
    #: ``/metrics`` (Prometheus) answers a request with ``Authorization: Bearer`` this
    #: token, or from an address of ``metrics_allow``; None = the addresses only.
    metrics_token: str | None = field(default=None, repr=False)
    #: Addresses or networks ``/metrics`` answers without the token ("none": no address).
    metrics_allow: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    #: A port of its own (plain HTTP) for ``/metrics``; worker N of ``workers`` listens on
    #: this port + N - 1, so that Prometheus scrapes each one; None = the HTTPS port only.
    metrics_port: int | None = None
    #: URLs (http:// or https://) that get every webhook event (conference/ops/webhooks.py);
    #: kept out of logs (a receiver's URL may carry its own token).
    webhook_urls: list[str] = field(default_factory=list, repr=False)
    #: Key of the HMAC-SHA256 signature of every webhook delivery (needed with webhook_urls).
    webhook_secret: str | None = field(default=None, repr=False)
    #: Pauses before each new try of a delivery that failed; after the last, it is dropped.
    webhook_retries: list[str] = field(default_factory=lambda: ["1s", "5s", "30s", "2m", "10m"])


# --- value converters: (value, label, base directory for relative paths) -> value ----------

_Converter = Callable[[object, str, Path | None], object]


def _to_str(value: object, label: str, base: Path | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{label}: expected a non-empty string")
    return value.strip()


def _int_converter(low: int, high: int | None = None) -> _Converter:
    def convert(value: object, label: str, base: Path | None = None) -> int:
        if isinstance(value, bool):
            raise SettingsError(f"{label}: expected an integer, got {value!r}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise SettingsError(f"{label}: expected an integer, got {value!r}") from None
        if not isinstance(value, int):
            raise SettingsError(f"{label}: expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise SettingsError(f"{label}: must be {bound}, got {value}")
        return value

    return convert


def _to_bool(value: object, label: str, base: Path | None = None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{label}: expected true or false, got {value!r}")


def _to_path(value: object, label: str, base: Path | None = None) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise SettingsError(f"{label}: expected a path")
    path = Path(str(value).strip()).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def _to_ip(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise SettingsError(f"{label}: {text!r} is not an IP address") from None
    if address.is_unspecified:
        raise SettingsError(f"{label}: {text} is not a specific address")
    return str(address)


def _to_ip_list(value: object, label: str, base: Path | None = None) -> list[str]:
    if isinstance(value, str):
        items: list[object] = [item for item in value.split(",") if item.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise SettingsError(f"{label}: expected a list of IP addresses")
    return [_to_ip(item, label) for item in items]


_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def _to_network_list(value: object, label: str, base: Path | None = None) -> list[str]:
    if isinstance(value, str):
        text = value.strip().lower()
        items: list[object] = [] if text in ("none", "off") else [*value.split(",")]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise SettingsError(f"{label}: expected a list of IP addresses or networks")
    networks: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise SettingsError(f"{label}: expected IP addresses or networks such as 10.0.0.0/8")
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise SettingsError(
                f"{label}: {item.strip()!r} is not an IP address or network"
            ) from None
        networks.append(str(network.network_address if network.num_addresses == 1 else network))
    return networks


def _to_max_connections(value: object, label: str, base: Path | None = None) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    try:
        return int(str(_int_converter(0)(value, label, base)))
    except SettingsError:
        raise SettingsError(f"{label}: expected a number of connections or auto (0)") from None


def _to_ice_servers(value: object, label: str, base: Path | None = None) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"{label}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
    if not isinstance(value, list):
        raise SettingsError(f"{label}: expected a list of ICE servers")
    servers: list[dict[str, Any]] = []
    for index, entry in enumerate(value):
        where = f"{label}[{index}]"
        if not isinstance(entry, dict):
            raise SettingsError(f"{where}: expected an object with 'urls'")
        unknown = sorted(set(entry) - {"urls", "username", "credential"})
        if unknown:
            raise SettingsError(f"{where}: unknown key {unknown[0]!r}")
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise SettingsError(f"{where}: 'urls' must be a non-empty list of strings")
        for url in urls:
            if not url.startswith(_ICE_SCHEMES):
                raise SettingsError(f"{where}: {url!r} is not a stun:, stuns:, turn: or turns: URL")
        server: dict[str, Any] = {"urls": list(urls)}
        for key in ("username", "credential"):
            if key in entry:
                if not isinstance(entry[key], str):
                    raise SettingsError(f"{where}: {key!r} must be a string")
                server[key] = entry[key]
        if any(u.startswith(("turn:", "turns:")) for u in urls) and not (
            "username" in server and "credential" in server
        ):
            raise SettingsError(f"{where}: TURN servers need 'username' and 'credential'")
        servers.append(server)
    return servers


def _to_turn_secret(value: object, label: str, base: Path | None = None) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{label}: expected a string")
    value = value.strip()
    if len(value.encode()) < MIN_TURN_SECRET_BYTES or any(c.isspace() for c in value):
        raise SettingsError(
            f"{label}: the TURN secret must be at least {MIN_TURN_SECRET_BYTES} bytes "
            "long, without spaces"
        )
    return value


_TURN_URL = re.compile(r"turns?:[^\s,/?@]+(\?[^\s,]*)?")


def _to_turn_urls(value: object, label: str, base: Path | None = None) -> list[str]:
    if isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise SettingsError(f"{label}: expected a list of turn: or turns: URLs")
    for item in items:
        if not isinstance(item, str) or not _TURN_URL.fullmatch(item):
            raise SettingsError(
                f"{label}: {item!r} is not a turn: or turns: URL "
                "(e.g. turns:turn.example.vn:443?transport=tcp)"
            )
    return [str(item) for item in items]


def _to_secret(value: object, label: str, base: Path | None = None) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{label}: expected a string")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"{label}: secret must be at least {MIN_SECRET_BYTES} bytes long")
    return value


def _to_tls(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label).lower()
    if text not in TLS_MODES:
        raise SettingsError(f"{label}: unknown TLS mode {text!r} (expected {', '.join(TLS_MODES)})")
    return text


def _to_log_level(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label).upper()
    if text not in LOG_LEVELS:
        raise SettingsError(
            f"{label}: unknown log level {text!r} (expected {', '.join(LOG_LEVELS)})"
        )
    return text


def _to_database_url(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label)
    scheme = text.split(":", 1)[0].split("+", 1)[0].lower()
    if "://" not in text or scheme not in ("sqlite", "postgresql", "postgres"):
        raise SettingsError(f"{label}: expected sqlite:///FILE or postgresql://USER@HOST/DATABASE")
    return text


SMTP_SECURITY = ("starttls", "tls", "none")


def _to_public_url(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise SettingsError(f"{label}: expected a URL such as https://hop.example.vn")
    return text


def _to_smtp_security(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label).lower()
    if text not in SMTP_SECURITY:
        raise SettingsError(
            f"{label}: unknown SMTP security {text!r} (expected {', '.join(SMTP_SECURITY)})"
        )
    return text


def _to_plain(value: object, label: str, base: Path | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{label}: expected a non-empty string")
    return value


def _to_reminders(value: object, label: str, base: Path | None = None) -> list[str]:
    from .tokens import parse_ttl

    if isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",") if item.strip()]
        if value.strip().lower() in ("none", "off"):
            items = []
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise SettingsError(f"{label}: expected a list of durations such as 24h, 15m")
    leads: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise SettingsError(f"{label}: expected durations such as 24h, 15m")
        try:
            parse_ttl(item)
        except ValueError as exc:
            raise SettingsError(f"{label}: {exc}") from None
        leads.append(item.strip().lower())
    return leads


def _to_redis_url(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label)
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"{label}: expected a redis:// (or rediss://, unix://) URL")
    return text


def _to_node_name(value: object, label: str, base: Path | None = None) -> str:
    text = _to_str(value, label)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise SettingsError(f"{label}: letters, digits, '.', '_' and '-' only (at most 64)")
    return text


def _to_workers(value: object, label: str, base: Path | None = None) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    try:
        return int(str(_int_converter(1, 256)(value, label, base)))
    except SettingsError:
        raise SettingsError(f"{label}: expected a number of workers (1-256) or auto") from None


MIN_OPS_SECRET_BYTES = 16


def _to_ops_secret(value: object, label: str, base: Path | None = None) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{label}: expected a string")
    value = value.strip()
    if len(value.encode()) < MIN_OPS_SECRET_BYTES or any(c.isspace() for c in value):
        raise SettingsError(
            f"{label}: must be at least {MIN_OPS_SECRET_BYTES} bytes long, without spaces"
        )
    return value


def _to_webhook_urls(value: object, label: str, base: Path | None = None) -> list[str]:
    if isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise SettingsError(f"{label}: expected a list of http:// or https:// URLs")
    for item in items:
        if not isinstance(item, str) or not re.fullmatch(r"https?://[^\s/?#,]+[^\s#,]*", item):
            raise SettingsError(f"{label}: {item!r} is not an http:// or https:// URL")
    return [str(item) for item in items]


def _to_retries(value: object, label: str, base: Path | None = None) -> list[str]:
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return []
    try:
        return _to_reminders(value, label, base)
    except SettingsError:
        raise SettingsError(f"{label}: expected a list of pauses such as 1s, 30s, 2m") from None


_CONVERTERS: dict[str, _Converter] = {
    "host": _to_str,
    "port": _int_converter(0, 65535),
    "data_dir": _to_path,
    "recordings_dir": _to_path,
    "recording_retention_days": _int_converter(1, 36500),
    "recording_key": _to_path,
    "ice_hosts": _to_ip_list,
    "udp_port_min": _int_converter(1, 65535),
    "udp_port_max": _int_converter(1, 65535),
    "public_ip": _to_ip,
    "ice_servers": _to_ice_servers,
    "turn_secret": _to_turn_secret,
    "turn_urls": _to_turn_urls,
    "turn_ttl": _int_converter(60, 7 * 86400),
    "token_secret": _to_secret,
    "tls": _to_tls,
    "tls_cert": _to_path,
    "tls_key": _to_path,
    "max_participants_per_room": _int_converter(1),
    "max_rooms": _int_converter(1),
    "max_message_bytes": _int_converter(1024, 64 * 1024 * 1024),
    "media_timeout": _int_converter(2, 3600),
    "connect_timeout": _int_converter(2, 3600),
    "resume_timeout": _int_converter(0, 300),
    "header_timeout": _int_converter(1, 3600),
    "body_timeout": _int_converter(1, 3600),
    "max_connections": _to_max_connections,
    "max_connections_per_address": _int_converter(0),
    "max_connections_exempt": _to_network_list,
    "log_level": _to_log_level,
    "database_url": _to_database_url,
    "database_timeout": _int_converter(1, 300),
    "public_url": _to_public_url,
    "smtp_host": _to_str,
    "smtp_port": _int_converter(1, 65535),
    "smtp_security": _to_smtp_security,
    "smtp_user": _to_plain,
    "smtp_password": _to_plain,
    "mail_from": _to_str,
    "link_hours_after_end": _int_converter(0, 48),
    "reminders": _to_reminders,
    "reminder_interval": _int_converter(1, 3600),
    "session_lifetime": _int_converter(60, 7 * 86400),
    "adhoc_meetings": _to_bool,
    "whip_system_dtls": _to_bool,
    "group_access": _to_bool,
    "auto_end_after": _int_converter(0, 7 * 24 * 60),
    "recording_min_free_mb": _int_converter(0, 1024 * 1024),
    "redis_url": _to_redis_url,
    "node_name": _to_node_name,
    "cluster_name": _to_node_name,
    "relay_host": _to_ip,
    "relay_port": _int_converter(0, 65535),
    "workers": _to_workers,
    "metrics_token": _to_ops_secret,
    "metrics_allow": _to_network_list,
    "metrics_port": _int_converter(1, 65535),
    "webhook_urls": _to_webhook_urls,
    "webhook_secret": _to_ops_secret,
    "webhook_retries": _to_retries,
}
assert set(_CONVERTERS) == {f.name for f in fields(Settings)}


# --- layers -----------------------------------------------------------------------------------


def _from_toml(path: Path) -> dict[str, object]:
    """Read a TOML file; relative paths in it are relative to the file's directory."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None
    values: dict[str, object] = {}
    for key, raw in data.items():
        if key not in _CONVERTERS:
            raise SettingsError(f"{path}: unknown key {key!r}")
        values[key] = _CONVERTERS[key](raw, f"{path}: {key}", path.parent)
    return values


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    """Read CONFERENCE_* variables; empty variables count as unset."""
    values: dict[str, object] = {}
    for name, key in ENV_VARS.items():
        raw = env.get(name, "")
        if raw.strip():
            values[key] = _CONVERTERS[key](raw, name, None)
    ports = env.get(UDP_PORTS_ENV, "").strip()
    if ports:
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", ports)
        if not match:
            raise SettingsError(f"{UDP_PORTS_ENV}: expected MIN-MAX, e.g. 50000-50100")
        values["udp_port_min"] = _CONVERTERS["udp_port_min"](match[1], UDP_PORTS_ENV, None)
        values["udp_port_max"] = _CONVERTERS["udp_port_max"](match[2], UDP_PORTS_ENV, None)
    return values


def _from_overrides(overrides: Mapping[str, object]) -> dict[str, object]:
    values: dict[str, object] = {}
    for key, raw in overrides.items():
        if raw is None:
            continue
        if key not in _CONVERTERS:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = _CONVERTERS[key](raw, key, None)
    return values


def _check(settings: Settings, tls_explicit: bool) -> None:
    """Cross-field checks; may switch tls to "files" when only cert and key were given."""
    if (settings.udp_port_min is None) != (settings.udp_port_max is None):
        raise SettingsError("udp_port_min and udp_port_max must be set together")
    if (
        settings.udp_port_min is not None
        and settings.udp_port_max is not None
        and settings.udp_port_min > settings.udp_port_max
    ):
        raise SettingsError(
            f"UDP port range: udp_port_min ({settings.udp_port_min}) is greater than "
            f"udp_port_max ({settings.udp_port_max})"
        )
    if settings.workers > 1 and not settings.redis_url:
        raise SettingsError(
            f"workers = {settings.workers} needs redis_url: the workers serve a meeting "
            "together through Redis (docs/OPERATIONS.md, 'Several nodes')"
        )
    if (
        settings.workers > 1
        and settings.udp_port_min is not None
        and settings.udp_port_max is not None
        and settings.udp_port_max - settings.udp_port_min + 1 < 2 * settings.workers
    ):
        raise SettingsError(
            f"UDP port range {settings.udp_port_min}-{settings.udp_port_max} is too small "
            f"for {settings.workers} workers (each takes its own share of it)"
        )
    if bool(settings.turn_secret) != bool(settings.turn_urls):
        missing = "turn_urls" if settings.turn_secret else "turn_secret"
        raise SettingsError(f"turn_secret and turn_urls go together ({missing} is not set)")
    has_cert, has_key = settings.tls_cert is not None, settings.tls_key is not None
    if not tls_explicit and (has_cert or has_key):
        settings.tls = "files"
    if settings.tls == "files" and not (has_cert and has_key):
        missing = "tls_cert" if not has_cert else "tls_key"
        raise SettingsError(f"tls = files needs both tls_cert and tls_key ({missing} is not set)")
    if settings.webhook_urls and not settings.webhook_secret:
        raise SettingsError("webhook_urls needs webhook_secret: every delivery is signed")
    if settings.metrics_port is not None and (
        settings.metrics_port <= settings.port < settings.metrics_port + settings.workers
        or settings.metrics_port + settings.workers - 1 > 65535
    ):
        raise SettingsError(
            f"metrics_port {settings.metrics_port}: the ports {settings.metrics_port}-"
            f"{settings.metrics_port + settings.workers - 1} (one per worker) must be free "
            f"of the HTTPS port {settings.port} and at most 65535"
        )


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build `Settings` from defaults < TOML file < environment < overrides.

    `config_file` defaults to $CONFERENCE_CONFIG; `env` defaults to `os.environ`;
    `overrides` (command-line flags) are keyed by setting name and None values are ignored.
    """
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    path = config_file if config_file is not None else env.get(CONFIG_ENV) or None
    if path is not None:
        values.update(_from_toml(Path(path).expanduser()))
    values.update(_from_env(env))
    values.update(_from_overrides(overrides or {}))
    settings = Settings(**values)  # type: ignore[arg-type]  # converted per field above
    _check(settings, tls_explicit="tls" in values)
    return settings


# --- data directory and token secret -----------------------------------------------------------


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise SettingsError(f"cannot read token secret {path}: {exc.strerror}") from None
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(
            f"{path}: secret is shorter than {MIN_SECRET_BYTES} bytes; "
            "delete the file to generate a new one"
        )
    if mode & 0o077:
        log.warning("token secret %s is readable by other users; run: chmod 600 %s", path, path)
    return secret


def _create_secret(path: Path) -> str:
    """Write a new secret atomically; if another process won the race, use its secret."""
    secret = secrets.token_urlsafe(48)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret + "\n")
        os.link(temporary, path)
    except FileExistsError:
        return _read_secret(path)
    finally:
        temporary.unlink(missing_ok=True)
    log.info("created token secret %s", path)
    return secret


def protect_files(settings: Settings) -> None:
    """Make what this process creates private (umask 077, or 027 with ``group_access``),
    and take back what an older version left open: the recordings folder, the SQLite
    database and its journals (0700 / 0600; 0750 / 0640 with ``group_access``)."""
    group = settings.group_access
    os.umask(0o027 if group else 0o077)
    folder, file = (0o750, 0o640) if group else (0o700, 0o600)
    paths = [(settings.recordings_dir, folder), (settings.data_dir, folder)]
    database = settings.data_dir / "conference.db"
    paths += [(Path(f"{database}{suffix}"), file) for suffix in ("", "-wal", "-shm", "-journal")]
    for path, mode in paths:
        try:
            current = path.stat().st_mode & 0o777
            if current & ~mode:
                path.chmod(current & mode)
                log.info("%s was readable by others: now %o", path, current & mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot restrict %s: %s", path, exc.strerror)


def ensure_data_dir(settings: Settings, recordings: bool = False) -> str:
    """Create the data directory (and with ``recordings`` the recordings directory: only
    ``serve`` records; 0700, see `protect_files`); return the token secret.

    When `settings.token_secret` is unset, the secret is read from `data_dir/secret.key`,
    which is created (mode 0600) on first run; `settings.token_secret` is updated.
    """
    mode = 0o750 if settings.group_access else 0o700
    folders = (settings.data_dir, settings.recordings_dir) if recordings else (settings.data_dir,)
    for directory in folders:
        try:
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"cannot create directory {directory}: {exc.strerror}") from None
    if settings.token_secret is None:
        path = settings.data_dir / SECRET_FILE
        try:
            secret = _read_secret(path) if path.exists() else _create_secret(path)
        except OSError as exc:
            raise SettingsError(f"cannot create token secret {path}: {exc.strerror}") from None
        settings.token_secret = secret
    return settings.token_secret


def load_secret(settings: Settings) -> str:
    """Return the token secret without creating anything (for verifying tokens)."""
    if settings.token_secret is not None:
        return settings.token_secret
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        raise SettingsError(
            f"no token secret: {path} does not exist (run 'conference serve' first)"
        )
    secret = _read_secret(path)
    settings.token_secret = secret
    return secret
