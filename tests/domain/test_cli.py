"""`conference db|unit|point|user` and the first-run admin of `serve`, as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from conference.domain import db
from conference.domain.accounts import check_credentials

from ..test_cli import ROOT, assert_one_line_error, run
from .conftest import _postgres_schema_url


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for the subprocess: a temp data dir, SQLite or a PostgreSQL schema."""
    values = {"CONFERENCE_DATA_DIR": str(tmp_path / "data")}
    if request.param == "sqlite":
        yield values
    else:
        for url in _postgres_schema_url():
            values["CONFERENCE_DATABASE_URL"] = url.render_as_string(hide_password=False)
            yield values


def database_of(env: dict[str, str]) -> db.Database:
    url = env.get("CONFERENCE_DATABASE_URL") or URL.create(
        "sqlite", database=str(Path(env["CONFERENCE_DATA_DIR"]) / "conference.db")
    )
    return db.Database(url)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_organisation_and_users(tmp_path: Path, env: dict[str, str]) -> None:
    out = ok(run("db", "upgrade", cwd=tmp_path, env=env))
    assert f"is at revision {db.head_revision()}" in out
    ok(
        run(
            "unit",
            "add",
            "--code",
            "huyen-a",
            "--name",
            "Huyện Bắc Hà",
            "--kind",
            "district",
            cwd=tmp_path,
            env=env,
        )
    )
    csv = tmp_path / "xa.csv"
    csv.write_text(
        "kind,code,name,parent,email,phone,bandwidth\n"
        "commune,xa-ban-pho,Xã Bản Phố,huyen-a,,,\n"
        "point,ubnd-ban-pho,UBND xã Bản Phố,xa-ban-pho,vp@banpho.gov.vn,,low\n",
        encoding="utf-8-sig",
    )
    assert ok(run("units", "import", str(csv), cwd=tmp_path, env=env)) == (
        "imported 1 units and 1 points\n"
    )
    ok(
        run(
            "point",
            "add",
            "--code",
            "hoi-truong",
            "--name",
            "Hội trường huyện",
            "--unit",
            "huyen-a",
            cwd=tmp_path,
            env=env,
        )
    )
    assert ok(run("unit", "list", cwd=tmp_path, env=env)) == (
        "huyen-a\tdistrict\tHuyện Bắc Hà\n  xa-ban-pho\tcommune\tXã Bản Phố\n"
    )
    points = ok(run("point", "list", "--unit", "xa-ban-pho", cwd=tmp_path, env=env))
    assert points == "ubnd-ban-pho\tUBND xã Bản Phố\txa-ban-pho\tlow\tvp@banpho.gov.vn\t-\tactive\n"

    # A broken file: the line is reported and nothing is imported.
    csv.write_text(
        "kind,code,name,parent\ncommune,xa-moi,Xã Mới,huyen-a\npoint,p,P,nowhere\n",
        encoding="utf-8",
    )
    assert_one_line_error(
        run("unit", "import", str(csv), cwd=tmp_path, env=env),
        "line 3: unknown parent unit 'nowhere'",
    )
    assert "xa-moi" not in ok(run("unit", "list", cwd=tmp_path, env=env))

    add_user = ["user", "add", "--username", "thuky", "--role", "secretary", "--unit", "huyen-a"]
    assert (
        ok(
            run(
                *add_user,
                "--name",
                "Lò Thị Mai",
                "--password-stdin",
                cwd=tmp_path,
                env=env,
                stdin="mật khẩu 1\n",
            )
        )
        == "added secretary thuky (huyen-a)\n"
    )
    assert_one_line_error(
        run(*add_user, "--password-stdin", cwd=tmp_path, env=env, stdin="another pw\n"),
        "user 'thuky' already exists",
    )
    assert_one_line_error(run(*add_user, cwd=tmp_path, env=env, stdin=""), "use --password-stdin")
    ok(
        run(
            "user",
            "passwd",
            "thuky",
            "--password-stdin",
            cwd=tmp_path,
            env=env,
            stdin="mật khẩu 2\n",
        )
    )
    assert ok(run("user", "list", cwd=tmp_path, env=env)).startswith(
        "thuky\tsecretary\thuyen-a\t-\tLò Thị Mai\t-\tactive"
    )
    database = database_of(env)
    try:
        with database.session() as session:
            assert check_credentials(session, "thuky", "mật khẩu 1") is None
            assert check_credentials(session, "thuky", "mật khẩu 2") is not None
    finally:
        database.close()


def test_errors_are_one_line(tmp_path: Path) -> None:
    env = {"CONFERENCE_DATA_DIR": str(tmp_path / "data")}
    assert_one_line_error(
        run(
            "unit",
            "add",
            "--code",
            "x",
            "--name",
            "Xã X",
            "--kind",
            "commune",
            cwd=tmp_path,
            env=env,
        ),
        "a commune needs a parent unit",
    )
    assert_one_line_error(
        run("unit", "import", str(tmp_path / "missing.csv"), cwd=tmp_path, env=env),
        "cannot read",
    )
    assert_one_line_error(
        run(
            "db",
            "upgrade",
            cwd=tmp_path,
            env={"CONFERENCE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x?connect_timeout=2"},
        ),
        "database postgresql+psycopg://nobody@127.0.0.1:1/x",
    )
    assert_one_line_error(
        run("db", "upgrade", cwd=tmp_path, env={"CONFERENCE_DATABASE_URL": "mysql://x/y"}),
        "CONFERENCE_DATABASE_URL",
    )


def serve_once(tmp_path: Path, env: dict[str, str]) -> str:
    """Start `conference serve`, wait for the listening line, stop it; return its output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONFERENCE_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update(env, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conference",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--tls",
                "off",
            ],
            cwd=tmp_path,
            env=clean,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while '"listening"' not in log.read_text(errors="replace"):
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            time.sleep(0.5)  # signal handlers are installed just after the line
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0, log.read_text()
    return log.read_text()


def test_serve_creates_first_admin_once(tmp_path: Path, env: dict[str, str]) -> None:
    first = serve_once(tmp_path, env)
    lines = first.splitlines()
    created = [line for line in lines if "created the administrator account 'admin'" in line]
    assert len(created) == 1, first
    password = created[0].rsplit(" ", 1)[1]
    assert "shown only once" in first and "Traceback" not in first
    listening = next(i for i, line in enumerate(lines) if line.startswith("{"))
    assert json.loads(lines[listening])["event"] == "listening"
    assert lines.index(created[0]) < listening

    second = serve_once(tmp_path, env)
    assert "administrator" not in second and password not in second
    database = database_of(env)
    try:
        with database.session() as session:
            assert check_credentials(session, "admin", password) is not None
    finally:
        database.close()
