"""`conference backup` / `conference restore` on real SQLite and PostgreSQL databases.

An installation is built with the project's own services (units, points, accounts, a
meeting with invitations, attendance, minutes, a signed synthetic recording, the audit
log), backed up while another connection holds a transaction open, and restored into an
empty data directory and database, SQLite and PostgreSQL in every direction.  The
restored installation must hold the same rows, accept the tokens made before, verify
the recordings (once their media are copied beside the manifests, as the operator does
with rsync) and let an account sign in with its old password.  PostgreSQL: see
tests/domain/conftest.py (skipped where unreachable).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, select, text
from sqlalchemy.engine import URL

from conference.backup.archive import BackupError
from conference.backup.service import make_backup, restore_backup
from conference.cli import main
from conference.domain import db
from conference.domain.accounts import check_credentials, create_user, get_user
from conference.domain.attendance import record_event
from conference.domain.cli import prepare_database
from conference.domain.meetings import AgendaInput, create_meeting
from conference.domain.models import LoginFailure, Minutes, RevokedToken
from conference.domain.organisation import create_point, create_unit
from conference.domain.usertokens import API_AUDIENCE, create_api_token, fingerprint, verify
from conference.recording import audit
from conference.recording.jobs import state_path
from conference.recording.signing import load_public_key
from conference.recording.store import verify_directory
from conference.settings import Settings, ensure_data_dir, load_secret, load_settings
from conference.tokens import create_token, verify_token
from conference.tools.synthetic import Participant, write_recording
from tests.domain.conftest import _postgres_schema_url
from tests.domain.meeting_setup import MONDAY_8, hours, make_org

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "mật-khẩu-của-thư-ký-2030"
MEETING_DIR = "2030/01/{meeting}"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed synthetic recording (one point, 1 s), its key beside it: the folder."""
    folder = tmp_path_factory.mktemp("recording")
    people = [Participant("ubnd-xa-01", length=1.0, size=(160, 120))]
    write_recording(folder / "meeting", people, [(0.0, "ubnd-xa-01")], folder / "recording.key")
    return folder


def _database(kind: str, path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield str(URL.create("sqlite", database=str(path / "conference.db")))
    else:
        for url in _postgres_schema_url():
            yield url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def source_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "source").mkdir()
    yield from _database(request.param, tmp_path / "source")


@pytest.fixture(params=["sqlite", "postgresql"])
def target_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "target").mkdir()
    yield from _database(request.param, tmp_path / "target")


def settings_for(base: Path, database: str | None = None) -> Settings:
    """An installation in `base` (data/, recordings/), the environment ignored."""
    overrides: dict[str, object] = {
        "data_dir": base / "data",
        "recordings_dir": base / "recordings",
        "database_url": database,
    }
    return load_settings(env={}, overrides=overrides)


@dataclass
class Installation:
    settings: Settings
    meeting_id: int
    meeting_token: str
    api_token: str


def install(base: Path, database: str | None, recording: Path) -> Installation:
    """A realistic installation made with the project's services."""
    settings = settings_for(base, database)
    secret = ensure_data_dir(settings)
    data = settings.data_dir
    database_ = prepare_database(settings)
    try:
        with database_.session() as session:
            org = make_org(session)
            create_unit(session, code="xa-04", name="Xã Tả Van", kind="commune", parent="huyen-a")
            create_point(session, code="ubnd-xa-04", name="UBND xã Tả Van", unit="xa-04")
            user = create_user(
                session, username="thu-ky-2", password=PASSWORD, role="secretary", unit="huyen-a"
            )
            meeting = create_meeting(
                session,
                title="Giao ban tháng Một",
                unit=org.district,
                chair=org.chair,
                start=MONDAY_8,
                end=MONDAY_8 + hours(2),
                points=org.points,
                agenda=[AgendaInput("Tình hình kinh tế", "Phòng Tài chính")],
                notes="Ghi chú: điểm cầu xã chuẩn bị số liệu.",
                recording_policy="auto",
            ).meeting
            record_event(
                session,
                meeting.id,
                identity="ubnd-xa-01",
                participant_id="p-1",
                kind="join",
                at=MONDAY_8.astimezone(UTC),
                name="UBND xã số 1",
                role="point",
            )
            session.add(
                Minutes(meeting_id=meeting.id, content={"tiêu_đề": "Biên bản", "mục": [1, 2]})
            )
            session.add(
                RevokedToken(token_id="jti-1", kind="session", expires_at=datetime.now(UTC))
            )
            session.add(LoginFailure(key="user:x", failures=2, last_failure=datetime.now(UTC)))
            session.flush()
            meeting_id = meeting.id
            api_token = create_api_token(secret, user, timedelta(hours=1))
    finally:
        database_.close()
    meeting_token = create_token(
        secret,
        meeting=str(meeting_id),
        identity="ubnd-xa-01",
        kind="point",
        name="UBND xã số 1",
        role="point",
    )
    folder = settings.recordings_dir / MEETING_DIR.format(meeting=meeting_id)
    shutil.copytree(recording / "meeting", folder)
    for name in ("recording.key", "recording.key.pub"):
        shutil.copy(recording / name, data / name)
    [manifest] = folder.glob("*.manifest.json")
    state_path(manifest).write_text(json.dumps({"state": "done"}), encoding="utf-8")
    audit.append(data / audit.AUDIT_FILE, {"action": "view", "username": "thu-ky-2"})
    (data / "audit.log-20291201").write_text('{"action": "play"}\n')  # rotated by logrotate
    (data / "tls").mkdir(mode=0o700)
    (data / "tls" / "self-signed.crt").write_text("CERT\n")
    (data / "tls" / "self-signed.key").write_text("KEY\n")
    return Installation(settings, meeting_id, meeting_token, api_token)


def table_rows(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table but Alembic's, in primary-key order."""
    engine = create_engine(db.database_url(settings))
    try:
        with engine.connect() as connection:
            metadata = MetaData()
            metadata.reflect(connection)
            return {
                table.name: [
                    dict(row)
                    for row in connection.execute(
                        select(table).order_by(*table.primary_key.columns)
                    ).mappings()
                ]
                for table in metadata.sorted_tables
                if table.name != "alembic_version"
            }
    finally:
        engine.dispose()


def copy_media(source: Settings, target: Settings) -> None:
    """What the operator does with rsync: the media files beside the restored manifests."""
    for path in source.recordings_dir.rglob("*.webm"):
        relative = path.relative_to(source.recordings_dir)
        shutil.copy(path, target.recordings_dir / relative)


def check_restored(original: Installation, settings: Settings) -> None:
    """The restored installation accepts the old tokens, recordings and password."""
    settings = dataclasses.replace(settings, token_secret=None)  # read from the files
    secret = load_secret(settings)
    claims = verify_token(secret, original.meeting_token, meeting=str(original.meeting_id))
    assert claims.identity == "pt:ubnd-xa-01"
    folder = settings.recordings_dir / MEETING_DIR.format(meeting=original.meeting_id)
    trusted = load_public_key(settings.data_dir / "recording.key.pub")
    ok, problems = verify_directory(folder, trusted)
    assert problems == [] and any("signature valid" in line for line in ok), (ok, problems)
    database = db.Database.from_settings(settings)
    try:
        with database.session() as session:
            api = verify(secret, original.api_token, API_AUDIENCE)
            user = get_user(session, "thu-ky-2")
            assert api is not None and api.user_id == user.id
            assert api.fingerprint == fingerprint(secret, user.password_hash)
            assert api.version == user.token_version
            assert check_credentials(session, "thu-ky-2", PASSWORD) is not None
            assert check_credentials(session, "thu-ky-2", "wrong password") is None
        with database.session() as session:  # ids go on after the restored ones
            unit = create_unit(session, code="xa-moi", name="Xã Mới", kind="district")
            assert unit.id > 4
    finally:
        database.close()
    assert (settings.data_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (settings.data_dir / "recording.key").stat().st_mode & 0o777 == 0o600
    assert (settings.data_dir / "audit.log").read_text().count("\n") == 1
    assert (settings.data_dir / "audit.log-20291201").read_text() == '{"action": "play"}\n'


def test_backup_and_restore(
    source_db: str, target_db: str, tmp_path: Path, recording: Path
) -> None:
    original = install(tmp_path / "source", source_db, recording)
    source = original.settings
    # another connection's transaction stays open (uncommitted) during the backup
    engine = create_engine(db.database_url(source))
    with engine.connect() as other:
        other.execute(text("UPDATE users SET display_name = 'uncommitted' WHERE id = 1"))
        assert other.in_transaction()
        archive = tmp_path / "backup.tar.gz"
        result = make_backup(source, archive)
        other.rollback()
    engine.dispose()
    assert archive.stat().st_mode & 0o777 == 0o600
    assert result.tables["invitations"] == 3 and result.tables["users"] == 4
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        users = tar.extractfile("database/users.jsonl").read().decode()  # type: ignore[union-attr]
    assert names[0] == "backup.json"
    assert "uncommitted" not in users and "Ông chu-tich" in users
    assert {"keys/secret.key", "keys/recording.key", "audit/audit.log"} <= set(names)
    assert not any(name.endswith(".webm") for name in names)

    target = settings_for(tmp_path / "target", target_db)
    restored = restore_backup(target, archive)
    assert restored.tables == result.tables
    assert table_rows(target) == table_rows(source)
    actions = {a.member: a.action for a in restored.files}
    assert set(actions.values()) == {"write"} and len(actions) == len(result.members)
    copy_media(source, target)
    check_restored(original, target)


def test_backup_reads_one_snapshot(source_db: str, tmp_path: Path, recording: Path) -> None:
    """Rows committed by another connection while the backup runs are in no table of it:
    the point added after the units were read is not there without its unit."""
    original = install(tmp_path / "source", source_db, recording)
    writer = db.Database.from_settings(original.settings)
    seen: list[str] = []

    def after_table(name: str, rows: int) -> None:
        seen.append(name)
        if name == "units":
            with writer.session() as session:
                create_unit(session, code="xa-sau", name="Xã Sau", kind="district")
                create_point(session, code="ubnd-xa-sau", name="UBND Xã Sau", unit="xa-sau")

    try:
        result = make_backup(original.settings, tmp_path / "b.tar.gz", after_table)
    finally:
        writer.close()
    assert seen.index("units") < seen.index("points")
    assert result.tables["units"] == 7 and result.tables["points"] == 4
    assert len(table_rows(original.settings)["points"]) == 5  # it was committed
    target = settings_for(tmp_path / "target")
    restore_backup(target, tmp_path / "b.tar.gz")
    codes = [row["code"] for row in table_rows(target)["points"]]
    assert "ubnd-xa-sau" not in codes and len(codes) == 4


def test_restore_refuses_a_database_that_is_not_empty(tmp_path: Path, recording: Path) -> None:
    original = install(tmp_path / "source", None, recording)
    archive = tmp_path / "b.tar.gz"
    make_backup(original.settings, archive)
    target = settings_for(tmp_path / "target")
    ensure_data_dir(target)  # a different secret.key, and a unit below
    database = prepare_database(target)
    with database.session() as session:
        create_unit(session, code="khac", name="Tỉnh khác", kind="province")
        # another application's table in the same database: never read nor touched
        session.execute(text("CREATE TABLE other_app (id INTEGER PRIMARY KEY, note TEXT)"))
        session.execute(text("INSERT INTO other_app VALUES (1, 'giữ nguyên')"))
    database.close()
    before = table_rows(target)
    # the keys are checked first: a different secret.key
    with pytest.raises(BackupError, match=r"secret\.key already exist.*--force"):
        restore_backup(target, archive)
    (target.data_dir / "secret.key").rename(tmp_path / "aside.key")
    with pytest.raises(BackupError, match=r"not empty \(rows in units: 1\).*--force"):
        restore_backup(target, archive)
    assert table_rows(target) == before
    assert not (target.data_dir / "secret.key").exists()
    assert not (target.data_dir / "recording.key").exists()
    (tmp_path / "aside.key").rename(target.data_dir / "secret.key")

    result = restore_backup(target, archive, force=True)  # replaces everything
    assert {a.member: a.action for a in result.files}["keys/secret.key"] == "replace"
    kept = {"other_app": [{"id": 1, "note": "giữ nguyên"}]}
    assert table_rows(target) == table_rows(original.settings) | kept
    copy_media(original.settings, target)
    check_restored(original, target)
    folder = target.recordings_dir / MEETING_DIR.format(meeting=original.meeting_id)
    [manifest] = folder.glob("*.manifest.json")
    newer = json.loads(manifest.read_text()) | {"minutes_final": True}  # set after the backup
    manifest.write_text(json.dumps(newer))
    again = restore_backup(target, archive, force=True)  # files present: all kept
    assert {a.action for a in again.files} == {"keep"}
    assert json.loads(manifest.read_text())["minutes_final"] is True
    assert [a.why for a in again.files if a.target == manifest] == ["newer on disk"]


def test_restore_of_an_older_schema(tmp_path: Path, target_db: str) -> None:
    """A backup of a database at revision 0003 restores and is upgraded to the head; an
    up-to-date target is taken back to 0003 first (--force)."""
    source = settings_for(tmp_path / "source")
    source.data_dir.mkdir(parents=True)
    url = db.database_url(source)
    db.upgrade(url, "0003")
    engine = create_engine(url)
    now = datetime(2030, 1, 7, 1, 0)
    with engine.begin() as connection:
        metadata = MetaData()
        metadata.reflect(connection)
        units, users = metadata.tables["units"], metadata.tables["users"]
        connection.execute(units.insert(), [{"id": 2, "code": "h", "name": "Huyện", "kind": "district", "parent_id": None, "created_at": now}])  # fmt: skip
        connection.execute(units.insert(), [{"id": 1, "code": "x", "name": "Xã", "kind": "commune", "parent_id": 2, "created_at": now}])  # fmt: skip
        connection.execute(users.insert(), [{"username": "an", "display_name": "An", "password_hash": "!", "role": "chair", "unit_id": 1, "point_id": None, "active": True, "created_at": now, "last_login_at": None, "password_changed_at": None}])  # fmt: skip
    engine.dispose()
    archive = tmp_path / "old.tar.gz"
    assert make_backup(source, archive).revision == "0003"

    target = settings_for(tmp_path / "target", target_db)
    prepare_database(target).close()  # at the head already, empty
    result = restore_backup(target, archive)
    assert result.revision == db.head_revision() and result.tables["units"] == 2
    rows = table_rows(target)
    assert [u["token_version"] for u in rows["users"]] == [0]
    assert [(u["id"], u["parent_id"]) for u in rows["units"]] == [(1, 2), (2, None)]
    result = restore_backup(target, archive, force=True)
    assert table_rows(target) == rows


def _archive(path: Path, members: dict[str, bytes], header: dict[str, Any] | None = None) -> Path:
    """A hand-made archive: `members` after a header that lists them truthfully."""
    import hashlib

    listed = {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in members.items()}  # fmt: skip
    base = {
        "format": "conference-backup/1",
        "schema_revision": db.head_revision(),
        "database": {"kind": "sqlite", "tables": {}},
        "members": listed,
    }
    content = {"backup.json": json.dumps(base | (header or {})).encode(), **members}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_restore_refuses_unsafe_and_bad_archives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = settings_for(tmp_path / "target")
    args = ["--data-dir", str(target.data_dir), "--recordings-dir", str(target.recordings_dir)]
    evil = tmp_path / "evil"

    def refused(archive: Path, expected: str) -> None:
        assert main(["restore", str(archive), "--force", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("conference: error: ") and err.count("\n") == 1, err
        assert expected in err, err
        assert not evil.exists() and not (target.data_dir / "conference.db").exists()

    refused(_archive(tmp_path / "a.tgz", {"../evil": b"x"}), "a path with '..'")
    refused(_archive(tmp_path / "b.tgz", {str(evil): b"x"}), "an absolute path")
    refused(
        _archive(tmp_path / "c.tgz", {"recordings/2030/01/m/../../../../evil.manifest.json": b"x"}),
        "a path with '..'",
    )
    refused(_archive(tmp_path / "d.tgz", {"keys/evil": b"x"}), "not a file a backup writes")
    link = tmp_path / "e.tgz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("keys/secret.key")
        info.type, info.linkname = tarfile.SYMTYPE, str(evil)
        tar.addfile(info)
    refused(link, "is a link, a directory or a device")
    refused(_archive(tmp_path / "f.tgz", {}, {"schema_revision": "9999"}), "is newer than")
    refused(_archive(tmp_path / "g.tgz", {}, {"format": "conference-backup/2"}), "newer version")
    refused(_archive(tmp_path / "h.tgz", {}, {"format": "other/1"}), "unknown archive format")
    (tmp_path / "i.tgz").write_text("not an archive\n")
    refused(tmp_path / "i.tgz", "not a backup archive")
    refused(tmp_path / "missing.tgz", "no such file")
    real = _archive(tmp_path / "j.tgz", {"audit/audit.log": b"{}\n" * 50000})
    (tmp_path / "k.tgz").write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    refused(tmp_path / "k.tgz", "truncated or damaged")
    damaged = _archive(tmp_path / "l.tgz", {"audit/audit.log": b"{}\n"}, {"members": {}})
    refused(damaged, "is not listed")


def test_backup_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data-dir", str(tmp_path / "data"), "--recordings-dir", str(tmp_path / "r")]
    assert main(["backup", "--output", str(tmp_path / "x.tgz"), *args]) == 2
    assert "does not exist: nothing to back up" in capsys.readouterr().err
    (tmp_path / "x.tgz").write_text("keep me")
    assert main(["backup", "--output", str(tmp_path / "x.tgz"), *args]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "x.tgz").read_text() == "keep me"


def test_the_commands(tmp_path: Path, recording: Path) -> None:
    """`python -m conference backup` and `restore` as the operator runs them."""
    original = install(tmp_path / "source", None, recording)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFERENCE_")}
    env["PYTHONPATH"] = str(ROOT)

    def conference(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conference", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = conference("backup", cwd=tmp_path / "source")
    assert done.returncode == 0, done.stderr
    [archive] = (tmp_path / "source").glob("conference-backup-*.tar.gz")
    assert "database: sqlite, schema revision" in done.stdout
    assert "1 manifests, 1 composition states" in done.stdout

    (tmp_path / "target").mkdir()
    done = conference("restore", str(archive), cwd=tmp_path / "target")
    assert done.returncode == 0, done.stderr
    assert "invitations: 3 rows" in done.stdout and "write    data/secret.key" in done.stdout
    target = settings_for(tmp_path / "target")
    assert table_rows(target) == table_rows(original.settings)

    done = conference("restore", str(archive), cwd=tmp_path / "target")
    assert done.returncode == 2
    assert done.stderr.startswith("conference: error: database sqlite:///data/conference.db")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
