"""Tests for conference.settings: layering, validation messages, data directory, secret."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from conference.settings import (
    SECRET_FILE,
    Settings,
    SettingsError,
    ensure_data_dir,
    load_secret,
    load_settings,
)

SECRET = "s" * 40


def write_toml(tmp_path: Path, text: str, name: str = "conference.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 8443
    assert settings.data_dir == Path("data")
    assert settings.recordings_dir == Path("recordings")
    assert settings.ice_hosts == []
    assert settings.ice_servers == []
    assert settings.udp_port_min is None and settings.udp_port_max is None
    assert settings.tls == "self-signed"
    assert settings.token_secret is None
    assert (settings.max_participants_per_room, settings.max_rooms) == (100, 50)
    assert settings.max_message_bytes == 1024 * 1024
    assert settings.log_level == "INFO"


def test_toml_file(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        """
port = 9443
data_dir = "state"
recordings_dir = "/srv/recordings"
ice_hosts = ["192.0.2.7", "2001:db8::1"]
udp_port_min = 50000
udp_port_max = 50100
public_ip = "203.0.113.10"
max_rooms = 5
log_level = "debug"

[[ice_servers]]
urls = "stun:stun.example.vn:3478"

[[ice_servers]]
urls = ["turn:turn.example.vn:3478", "turns:turn.example.vn:5349"]
username = "u"
credential = "p"
""",
    )
    settings = load_settings(config, env={})
    assert settings.port == 9443
    assert settings.data_dir == tmp_path / "state"  # relative to the config file
    assert settings.recordings_dir == Path("/srv/recordings")
    assert settings.ice_hosts == ["192.0.2.7", "2001:db8::1"]
    assert (settings.udp_port_min, settings.udp_port_max) == (50000, 50100)
    assert settings.public_ip == "203.0.113.10"
    assert settings.max_rooms == 5
    assert settings.log_level == "DEBUG"
    assert settings.ice_servers == [
        {"urls": ["stun:stun.example.vn:3478"]},
        {
            "urls": ["turn:turn.example.vn:3478", "turns:turn.example.vn:5349"],
            "username": "u",
            "credential": "p",
        },
    ]


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'port = 1000\nhost = "10.0.0.1"\nmax_rooms = 7\n')
    env = {"CONFERENCE_PORT": "2000", "CONFERENCE_HOST": "10.0.0.2"}
    settings = load_settings(config, env=env, overrides={"port": 3000, "host": None})
    assert settings.port == 3000  # override beats env
    assert settings.host == "10.0.0.2"  # env beats TOML; None override ignored
    assert settings.max_rooms == 7  # TOML beats default
    assert settings.max_participants_per_room == 100  # default


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "port = 8080\n")
    assert load_settings(env={"CONFERENCE_CONFIG": str(config)}).port == 8080
    other = write_toml(tmp_path, "port = 8081\n", name="other.toml")
    assert load_settings(other, env={"CONFERENCE_CONFIG": str(config)}).port == 8081


def test_environment_values() -> None:
    env = {
        "CONFERENCE_HOST": "127.0.0.1",
        "CONFERENCE_DATA_DIR": "/var/lib/conference",
        "CONFERENCE_RECORDINGS_DIR": "/var/lib/conference/rec",
        "CONFERENCE_ICE_HOSTS": " 192.0.2.1, 192.0.2.2 ,",
        "CONFERENCE_UDP_PORTS": "50000-50100",
        "CONFERENCE_PUBLIC_IP": "203.0.113.5",
        "CONFERENCE_ICE_SERVERS": '[{"urls": ["stun:stun.example.vn"]}]',
        "CONFERENCE_TOKEN_SECRET": SECRET,
        "CONFERENCE_TLS": "OFF",
        "CONFERENCE_MAX_PARTICIPANTS": "40",
        "CONFERENCE_MAX_ROOMS": "3",
        "CONFERENCE_MAX_MESSAGE_BYTES": "131072",
        "CONFERENCE_LOG_LEVEL": "warning",
        "CONFERENCE_TLS_CERT": "",  # empty variables count as unset
        "CONFERENCE_REDIS_URL": "redis://:pw@10.0.0.1:6379/0",
        "CONFERENCE_NODE_NAME": "node-1",
        "CONFERENCE_RELAY_HOST": "10.0.0.11",
        "CONFERENCE_RELAY_PORT": "7000",
    }
    settings = load_settings(env=env)
    assert settings.host == "127.0.0.1"
    assert settings.data_dir == Path("/var/lib/conference")
    assert settings.recordings_dir == Path("/var/lib/conference/rec")
    assert settings.ice_hosts == ["192.0.2.1", "192.0.2.2"]
    assert (settings.udp_port_min, settings.udp_port_max) == (50000, 50100)
    assert settings.public_ip == "203.0.113.5"
    assert settings.ice_servers == [{"urls": ["stun:stun.example.vn"]}]
    assert settings.token_secret == SECRET
    assert settings.tls == "off"
    assert settings.tls_cert is None
    assert settings.max_participants_per_room == 40
    assert settings.max_rooms == 3
    assert settings.max_message_bytes == 131072
    assert settings.log_level == "WARNING"
    assert settings.redis_url == "redis://:pw@10.0.0.1:6379/0"
    assert "pw" not in repr(settings)  # the URL may hold Redis's password
    assert (settings.node_name, settings.relay_host, settings.relay_port) == (
        "node-1",
        "10.0.0.11",
        7000,
    )


def test_overrides_accept_cli_strings() -> None:
    settings = load_settings(
        env={},
        overrides={"data_dir": "/tmp/d", "ice_hosts": ["127.0.0.1"], "tls": "off", "port": 0},
    )
    assert settings.data_dir == Path("/tmp/d")
    assert settings.ice_hosts == ["127.0.0.1"]
    assert settings.tls == "off"
    assert settings.port == 0


def test_tls_files_implied_by_cert_and_key() -> None:
    env = {"CONFERENCE_TLS_CERT": "/etc/c.pem", "CONFERENCE_TLS_KEY": "/etc/k.pem"}
    settings = load_settings(env=env)
    assert settings.tls == "files"
    assert settings.tls_cert == Path("/etc/c.pem")
    assert settings.tls_key == Path("/etc/k.pem")
    # An explicit mode wins over the implication.
    assert load_settings(env=env, overrides={"tls": "off"}).tls == "off"


def test_secret_hidden_from_repr() -> None:
    settings = load_settings(env={"CONFERENCE_TOKEN_SECRET": SECRET})
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONFERENCE_PORT": "http"}, "CONFERENCE_PORT: expected an integer, got 'http'"),
        ({"CONFERENCE_PORT": "70000"}, "CONFERENCE_PORT: must be between 0 and 65535, got 70000"),
        ({"CONFERENCE_UDP_PORTS": "50000"}, "CONFERENCE_UDP_PORTS: expected MIN-MAX"),
        ({"CONFERENCE_UDP_PORTS": "0-10"}, "CONFERENCE_UDP_PORTS: must be between 1 and 65535"),
        (
            {"CONFERENCE_UDP_PORTS": "50100-50000"},
            "udp_port_min (50100) is greater than udp_port_max (50000)",
        ),
        ({"CONFERENCE_TLS": "letsencrypt"}, "CONFERENCE_TLS: unknown TLS mode 'letsencrypt'"),
        ({"CONFERENCE_TLS": "files"}, "tls = files needs both tls_cert and tls_key"),
        (
            {"CONFERENCE_TLS_CERT": "/etc/c.pem"},
            "tls = files needs both tls_cert and tls_key (tls_key is not set)",
        ),
        ({"CONFERENCE_ICE_SERVERS": "[{urls: 1}"}, "CONFERENCE_ICE_SERVERS: invalid JSON"),
        ({"CONFERENCE_ICE_SERVERS": '{"urls": []}'}, "expected a list of ICE servers"),
        (
            {"CONFERENCE_ICE_SERVERS": '[{"urls": ["http://x"]}]'},
            "CONFERENCE_ICE_SERVERS[0]: 'http://x' is not a stun:, stuns:, turn: or turns: URL",
        ),
        (
            {"CONFERENCE_ICE_SERVERS": '[{"urls": ["turn:t.example.vn"]}]'},
            "CONFERENCE_ICE_SERVERS[0]: TURN servers need 'username' and 'credential'",
        ),
        (
            {"CONFERENCE_ICE_HOSTS": "192.0.2.1,eth0"},
            "CONFERENCE_ICE_HOSTS: 'eth0' is not an IP address",
        ),
        ({"CONFERENCE_ICE_HOSTS": "0.0.0.0"}, "CONFERENCE_ICE_HOSTS: 0.0.0.0 is not a specific"),
        ({"CONFERENCE_PUBLIC_IP": "example.vn"}, "CONFERENCE_PUBLIC_IP: 'example.vn' is not an IP"),
        ({"CONFERENCE_TOKEN_SECRET": "short"}, "CONFERENCE_TOKEN_SECRET: secret must be at least"),
        ({"CONFERENCE_MAX_ROOMS": "0"}, "CONFERENCE_MAX_ROOMS: must be at least 1, got 0"),
        ({"CONFERENCE_LOG_LEVEL": "loud"}, "CONFERENCE_LOG_LEVEL: unknown log level 'LOUD'"),
        ({"CONFERENCE_REDIS_URL": "127.0.0.1:6379"}, "CONFERENCE_REDIS_URL: expected a redis://"),
        ({"CONFERENCE_NODE_NAME": "node 1/a"}, "CONFERENCE_NODE_NAME: letters, digits"),
        ({"CONFERENCE_RELAY_HOST": "0.0.0.0"}, "CONFERENCE_RELAY_HOST: 0.0.0.0 is not a specific"),
        ({"CONFERENCE_RELAY_PORT": "-1"}, "CONFERENCE_RELAY_PORT: must be between 0 and 65535"),
    ],
)
def test_environment_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("prot = 1\n", "unknown key 'prot'"),
        ("port = true\n", "port: expected an integer, got True"),
        ("port = -1\n", "port: must be between 0 and 65535, got -1"),
        ("udp_port_min = 50000\n", "udp_port_min and udp_port_max must be set together"),
        ('tls = "files"\ntls_cert = "c.pem"\n', "(tls_key is not set)"),
        ("ice_hosts = [1]\n", "ice_hosts: expected a non-empty string"),
        ('[[ice_servers]]\nurls = ["stun:x"]\npassword = "p"\n', "unknown key 'password'"),
        ("port = \n", "invalid TOML"),
    ],
)
def test_toml_errors(tmp_path: Path, toml: str, message: str) -> None:
    config = write_toml(tmp_path, toml)
    with pytest.raises(SettingsError) as caught:
        load_settings(config, env={})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^config file not found: .*missing\.toml$"):
        load_settings(tmp_path / "missing.toml", env={})


def test_unknown_override() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings(env={}, overrides={"colour": "red"})


def test_ensure_data_dir_creates_secret_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    settings = load_settings(
        env={}, overrides={"data_dir": data_dir, "recordings_dir": tmp_path / "rec"}
    )
    secret = ensure_data_dir(settings)
    assert settings.token_secret == secret
    assert len(secret) == 64  # secrets.token_urlsafe(48)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    # only serve records: a command such as `token create` leaves no empty recordings/
    # wherever it is run (issue 15 item 7)
    assert not (tmp_path / "rec").exists()
    ensure_data_dir(settings, recordings=True)
    assert stat.S_IMODE((tmp_path / "rec").stat().st_mode) == 0o700
    secret_file = data_dir / SECRET_FILE
    assert secret_file.read_text().strip() == secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert [p.name for p in data_dir.iterdir()] == [SECRET_FILE]  # no temporary left behind

    again = load_settings(env={}, overrides={"data_dir": data_dir, "recordings_dir": tmp_path})
    assert ensure_data_dir(again) == secret
    assert load_secret(load_settings(env={}, overrides={"data_dir": data_dir})) == secret


def test_ensure_data_dir_keeps_configured_secret(tmp_path: Path) -> None:
    settings = load_settings(
        env={"CONFERENCE_TOKEN_SECRET": SECRET},
        overrides={"data_dir": tmp_path / "d", "recordings_dir": tmp_path / "r"},
    )
    assert ensure_data_dir(settings) == SECRET
    assert not (tmp_path / "d" / SECRET_FILE).exists()


def test_short_secret_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("abc\n")
    settings = load_settings(
        env={}, overrides={"data_dir": tmp_path, "recordings_dir": tmp_path / "r"}
    )
    with pytest.raises(SettingsError, match="secret is shorter than 32 bytes"):
        ensure_data_dir(settings)


def test_load_secret_without_file(tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"data_dir": tmp_path})
    with pytest.raises(SettingsError, match="no token secret: .*secret.key does not exist"):
        load_secret(settings)
    assert not (tmp_path / SECRET_FILE).exists()


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = load_settings(env={}, overrides={"data_dir": blocker / "data"})
    with pytest.raises(SettingsError, match="cannot create directory .*data"):
        ensure_data_dir(settings)


def test_protect_files_closes_what_an_older_version_left_open(tmp_path: Path) -> None:
    """Issue 14 item 9: recordings were 0755/0644 and conference.db 0644.  The server's
    umask makes everything it creates private, and what exists is taken back at start;
    `group_access` keeps the group's read access (a backup account)."""
    import os
    import stat

    from conference.settings import Settings, ensure_data_dir, protect_files

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    old_umask = os.umask(0o022)
    try:
        for group, folder, file in ((False, 0o700, 0o600), (True, 0o750, 0o640)):
            os.umask(0o022)  # as a shell leaves it
            base = tmp_path / ("group" if group else "private")
            data, recordings = base / "data", base / "recordings"
            data.mkdir(parents=True, mode=0o755)
            recordings.mkdir(mode=0o755)
            database = data / "conference.db"
            database.write_bytes(b"")
            database.chmod(0o644)
            (data / "conference.db-wal").write_bytes(b"")
            settings = Settings(data_dir=data, recordings_dir=recordings, group_access=group)
            protect_files(settings)
            assert (mode(data), mode(recordings)) == (folder, folder)
            assert mode(database) == file and mode(data / "conference.db-wal") == file
            # what the process creates from now on
            (recordings / "m1").mkdir()
            (recordings / "m1" / "track.webm").write_bytes(b"x")
            assert mode(recordings / "m1") == folder
            assert mode(recordings / "m1" / "track.webm") == file
            fresh = Settings(
                data_dir=base / "new", recordings_dir=base / "new-rec", group_access=group
            )
            ensure_data_dir(fresh, recordings=True)  # as serve does
            assert mode(base / "new") == folder and mode(base / "new-rec") == folder
            assert mode(base / "new" / "secret.key") == 0o600
    finally:
        os.umask(old_umask)
