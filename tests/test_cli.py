"""Tests for the `conference` command line (real subprocesses, plus a fake server module)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import types
from datetime import timedelta
from pathlib import Path

import pytest

from conference import __version__
from conference.cli import main
from conference.settings import Settings
from conference.tokens import Grants, create_token, verify_token

ROOT = Path(__file__).resolve().parent.parent
NAME = "UBND xã Tân Lập"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m conference ARGS` with a clean CONFERENCE_* environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONFERENCE_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean["PYTHONIOENCODING"] = "utf-8"
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "conference", *args],
        cwd=cwd,
        env=clean,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("conference: error: ")
    assert message in lines[0]


def create_args(data_dir: Path, *extra: str, role: str = "point") -> list[str]:
    return [
        "token",
        "create",
        "--meeting",
        "giao-ban-06",
        "--identity",
        "xa-tan-lap",
        "--name",
        NAME,
        "--role",
        role,
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def test_version(tmp_path: Path) -> None:
    result = run("version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"conference {__version__}\n"


def test_token_create_prints_verifiable_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run(*create_args(data_dir, "--ttl", "90m"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    token = result.stdout.removesuffix("\n")
    assert result.stdout == token + "\n" and token.count(".") == 2

    secret_file = data_dir / "secret.key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    secret = secret_file.read_text().strip()
    claims = verify_token(secret, token, meeting="giao-ban-06")
    assert claims.identity == "t:xa-tan-lap"  # made by hand: never a point's or an account's
    assert claims.name == NAME
    assert claims.role == "point"
    assert claims.grants == Grants.for_role("point")
    assert claims.expires_at - claims.not_before == timedelta(minutes=90)

    again = run(*create_args(data_dir), cwd=tmp_path)
    assert again.returncode == 0
    assert secret_file.read_text().strip() == secret  # the secret is created only once
    verify_token(secret, again.stdout.strip())


def test_token_create_grants(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run(
        *create_args(data_dir, "--grant", "publish", "--no-grant", "subscribe", role="viewer"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    claims = verify_token((data_dir / "secret.key").read_text().strip(), result.stdout.strip())
    assert claims.grants == Grants(publish=True, subscribe=False, moderate=False, record=False)


def test_token_create_uses_secret_from_environment(tmp_path: Path) -> None:
    secret = "e" * 48
    result = run(
        *create_args(tmp_path / "d"), cwd=tmp_path, env={"CONFERENCE_TOKEN_SECRET": secret}
    )
    assert result.returncode == 0, result.stderr
    assert verify_token(secret, result.stdout.strip()).name == NAME
    assert not (tmp_path / "d" / "secret.key").exists()


def test_token_create_uses_config_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "conference.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "state"\n')
    args = create_args(tmp_path / "ignored")[:-2]  # drop --data-dir
    result = run(*args, "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc" / "state" / "secret.key").exists()


@pytest.mark.parametrize(
    ("extra", "role", "message"),
    [
        ((), "admin", "unknown role 'admin' (expected one of chair, point, viewer, recorder)"),
        (("--ttl", "soon"), "point", "invalid duration 'soon'"),
        (("--ttl", "8d"), "point", "ttl must be at most 7 days"),
        (("--grant", "record", "--no-grant", "record"), "point", "both name 'record'"),
    ],
)
def test_token_create_errors(
    tmp_path: Path, extra: tuple[str, ...], role: str, message: str
) -> None:
    result = run(*create_args(tmp_path / "data", *extra, role=role), cwd=tmp_path)
    assert_one_line_error(result, message)


def test_token_create_bad_identity(tmp_path: Path) -> None:
    args = create_args(tmp_path / "data")
    args[args.index("--identity") + 1] = "xã tân lập"
    assert_one_line_error(run(*args, cwd=tmp_path), "identity must be 1-128 characters")


def test_token_create_for_a_point_or_an_account(tmp_path: Path) -> None:
    """A hand-made token names a point or an account only when told (pt:, u:, g:)."""
    data_dir = tmp_path / "data"
    for identity, kind in (("pt:xa-tan-lap", "point"), ("u:chu-tich", "account")):
        args = create_args(data_dir)
        args[args.index("--identity") + 1] = identity
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        secret = (data_dir / "secret.key").read_text().strip()
        claims = verify_token(secret, result.stdout.strip())
        assert (claims.key, claims.kind) == (identity, kind)
    args = create_args(data_dir)
    args[args.index("--identity") + 1] = "xx:xa-tan-lap"
    assert_one_line_error(run(*args, cwd=tmp_path), "identity must be 1-128 characters")


def test_token_verify_prints_claims(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = run(*create_args(data_dir, role="chair"), cwd=tmp_path).stdout.strip()
    result = run(
        "token",
        "verify",
        token,
        "--meeting",
        "giao-ban-06",
        "--data-dir",
        str(data_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert NAME in result.stdout  # ensure_ascii=False
    claims = json.loads(result.stdout)
    assert claims["identity"] == claims["key"] == "t:xa-tan-lap"
    assert (claims["kind"], claims["subject"]) == ("token", "xa-tan-lap")
    assert claims["name"] == NAME
    assert claims["meeting"] == "giao-ban-06"
    assert claims["role"] == "chair"
    assert claims["grants"] == {
        "publish": True,
        "subscribe": True,
        "moderate": True,
        "record": False,
    }
    assert set(claims) == {
        "identity",
        "key",
        "kind",
        "subject",
        "name",
        "meeting",
        "role",
        "grants",
        "expires_at",
        "not_before",
        "token_id",
    }

    from_stdin = run(
        "token", "verify", "-", "--data-dir", str(data_dir), cwd=tmp_path, stdin=token + "\n"
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == claims


def test_token_verify_errors(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = run(*create_args(data_dir), cwd=tmp_path).stdout.strip()

    wrong = run(
        "token", "verify", token, "--meeting", "other", "--data-dir", str(data_dir), cwd=tmp_path
    )
    assert_one_line_error(wrong, "token rejected (wrong-meeting): token is for another meeting")
    assert token not in wrong.stderr

    forged = create_token("f" * 40, meeting="giao-ban-06", identity="x", name="x", role="chair")
    result = run("token", "verify", forged, "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line_error(result, "token rejected (bad-signature): token signature is invalid")

    garbage = run("token", "verify", "abc", "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line_error(garbage, "token rejected (malformed)")

    no_secret = run("token", "verify", token, "--data-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert_one_line_error(no_secret, "no token secret:")
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--port", "70000"), {}, "port: must be between 0 and 65535, got 70000"),
        (("--tls", "files"), {}, "tls = files needs both tls_cert and tls_key"),
        (("--ice-host", "eth0"), {}, "ice_hosts: 'eth0' is not an IP address"),
        ((), {"CONFERENCE_UDP_PORTS": "50100-50000"}, "is greater than udp_port_max"),
        (("--config", "missing.toml"), {}, "config file not found: missing.toml"),
    ],
)
def test_serve_rejects_bad_settings(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run("serve", "--data-dir", str(tmp_path / "data"), *args, cwd=tmp_path, env=env)
    assert_one_line_error(result, message)
    assert not (tmp_path / "data").exists()  # nothing is created before settings are valid


def test_usage_errors(tmp_path: Path) -> None:
    for args in ((), ("token",), ("token", "create", "--meeting", "m")):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert "usage: conference" in result.stderr
        assert "Traceback" not in result.stderr


# --- `serve` with a stand-in for conference.server (written elsewhere) ----------------------------


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    calls: list[Settings] = []
    module = types.ModuleType("conference.server")

    def run_server(settings: Settings) -> None:
        calls.append(settings)

    module.run_server = run_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "conference.server", module)
    for name in list(os.environ):
        if name.startswith("CONFERENCE_"):
            monkeypatch.delenv(name)
    return calls


def test_serve_passes_settings_to_server(tmp_path: Path, fake_server: list[Settings]) -> None:
    code = main(
        [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "9443",
            "--data-dir",
            str(tmp_path / "data"),
            "--recordings-dir",
            str(tmp_path / "rec"),
            "--ice-host",
            "127.0.0.1",
            "--ice-host",
            "192.0.2.4",
            "--tls",
            "off",
        ]
    )
    assert code == 0
    [settings] = fake_server
    assert (settings.host, settings.port, settings.tls) == ("127.0.0.1", 9443, "off")
    assert settings.ice_hosts == ["127.0.0.1", "192.0.2.4"]
    assert settings.recordings_dir == tmp_path / "rec" and settings.recordings_dir.is_dir()
    secret = (tmp_path / "data" / "secret.key").read_text().strip()
    assert settings.token_secret == secret  # ensure_data_dir ran first


def test_serve_runs_coroutine_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_server: list[Settings]
) -> None:
    async def run_server(settings: Settings) -> int:
        fake_server.append(settings)
        return 3

    monkeypatch.setattr(sys.modules["conference.server"], "run_server", run_server)
    args = ["--data-dir", str(tmp_path / "d"), "--recordings-dir", str(tmp_path / "r")]
    assert main(["serve", *args]) == 3
    assert len(fake_server) == 1


def test_serve_reports_os_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_server: list[Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run_server(settings: Settings) -> None:
        raise OSError(98, "error while attempting to bind on address ('0.0.0.0', 8443)")

    monkeypatch.setattr(sys.modules["conference.server"], "run_server", run_server)
    args = ["--data-dir", str(tmp_path / "d"), "--recordings-dir", str(tmp_path / "r")]
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "conference: error: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8443)\n"
    )


def test_settle_heap_keeps_start_up_objects_out_of_full_collections():
    """Start-up objects go to the permanent generation: a full collection walks far
    fewer objects (measured at 40 points: 170-200 ms pauses became 55-100 ms)."""
    import gc

    from conference.server import settle_heap

    before = len(gc.get_objects())
    thresholds = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() >= before // 2
        assert len(gc.get_objects()) < before // 2
        # and full passes come ten times less often than Python's default
        assert gc.get_threshold() == (thresholds[0], thresholds[1], 100)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
