"""`conference meeting ...`: a weekly briefing with 20 invited points, from the command line."""

from __future__ import annotations

import re
from pathlib import Path

from ..test_cli import assert_one_line_error, run
from .smtp_server import Mailbox, mailbox_fixture  # noqa: F401 - fixture
from .test_cli import database_of, env, ok  # noqa: F401 - fixture

SECRET = "cli-meeting-secret-" + "q" * 32


def district_csv(path: Path) -> Path:
    lines = ["kind,code,name,parent,email,phone,bandwidth", "district,huyen-a,Huyện Bắc Hà,,,,"]
    for i in range(1, 21):
        lines.append(f"commune,xa-{i:02d},Xã số {i},huyen-a,,,")
        lines.append(f"point,ubnd-xa-{i:02d},UBND xã số {i},xa-{i:02d},vp{i:02d}@xa.example.vn,,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_weekly_briefing_for_20_points(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
    mailbox: Mailbox,
) -> None:
    env = {
        **env,
        **mailbox.settings_env(),
        "CONFERENCE_TOKEN_SECRET": SECRET,
        "CONFERENCE_PUBLIC_URL": "https://hop.example.vn",
    }
    ok(run("unit", "import", str(district_csv(tmp_path / "huyen.csv")), cwd=tmp_path, env=env))
    ok(
        run(
            "user",
            "add",
            "--username",
            "chu-tich",
            "--role",
            "chair",
            "--unit",
            "huyen-a",
            "--name",
            "Nguyễn Văn An",
            "--password-stdin",
            cwd=tmp_path,
            env=env,
            stdin="mat-khau-rat-dai\n",
        )
    )
    out = ok(
        run(
            "meeting",
            "add",
            "--title",
            "Giao ban thứ Hai",
            "--unit",
            "huyen-a",
            "--chair",
            "chu-tich",
            "--start",
            "2030-01-07 08:00",
            "--end",
            "2030-01-07 09:30",
            "--rrule",
            "FREQ=WEEKLY;BYDAY=MO",
            "--points-under",
            "huyen-a",
            "--agenda",
            "Tình hình tuần qua|Văn phòng UBND",
            "--agenda",
            "Chỉ đạo|@chu-tich",
            cwd=tmp_path,
            env=env,
        )
    )
    assert re.search(r"added series 1: Giao ban thứ Hai .*, \d+ meetings scheduled, 20 points", out)
    first = re.findall(r"meeting (\d+)\t2030-01-07 08:00-09:30", out)
    assert len(first) == 1
    meeting_id = first[0]

    listing = ok(
        run("meeting", "list", "--from", "2030-01-01", "--to", "2030-01-15", cwd=tmp_path, env=env)
    )
    assert len(listing.splitlines()) == 2
    assert "0/20 confirmed\tseries 1" in listing.splitlines()[0]

    sent = ok(run("meeting", "send-invitations", "--series", "1", cwd=tmp_path, env=env))
    assert sent.strip() == f"meeting {meeting_id}: 20 sent, 0 cancellations"
    messages = mailbox.wait_for(20)
    assert len(messages) == 20
    assert {str(m["To"].addresses[0].addr_spec) for m in messages} == {
        f"vp{i:02d}@xa.example.vn" for i in range(1, 21)
    }
    shown = ok(run("meeting", "show", meeting_id, cwd=tmp_path, env=env))
    assert "time: 2030-01-07 08:00-09:30 (Asia/Ho_Chi_Minh)" in shown
    assert "agenda 2: Chỉ đạo (Nguyễn Văn An)" in shown
    assert shown.count("\tpending\tsent #0\t") == 20

    # cancel this occurrence: the series records the exception, the points get METHOD:CANCEL
    ok(run("meeting", "cancel", meeting_id, cwd=tmp_path, env=env))
    mailbox.clear()
    sent = ok(run("meeting", "send-invitations", meeting_id, cwd=tmp_path, env=env))
    assert sent.strip() == f"meeting {meeting_id}: 0 sent, 20 cancellations"
    for message in mailbox.wait_for(20):
        parts = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
        assert [p.get_param("method") for p in parts] == ["CANCEL"]
        assert "METHOD:CANCEL" in parts[0].get_content()

    with database_of(env).session() as session:
        from conference.domain.models import SeriesException

        assert [e.kind for e in session.query(SeriesException)] == ["cancelled"]

    # `meeting end`: a cancelled meeting cannot be ended; an ended one stays ended
    result = run("meeting", "end", meeting_id, cwd=tmp_path, env=env)
    assert_one_line_error(result, "the meeting was cancelled")
    with database_of(env).session() as session:
        from conference.domain.models import Meeting

        other = session.query(Meeting).filter(Meeting.status == "scheduled").first()
        assert other is not None
        other_id = str(other.id)
    for _ in range(2):
        out = ok(run("meeting", "end", other_id, cwd=tmp_path, env=env))
        assert out.startswith(f"ended meeting {other_id}: ")
    with database_of(env).session() as session:
        assert session.get(Meeting, int(other_id)).status == "ended"


def test_meeting_cli_errors(tmp_path: Path, env: dict[str, str]) -> None:  # noqa: F811
    ok(
        run(
            "unit",
            "add",
            "--code",
            "huyen-a",
            "--name",
            "Huyện A",
            "--kind",
            "district",
            cwd=tmp_path,
            env=env,
        )
    )
    base = ["meeting", "add", "--title", "X", "--unit", "huyen-a", "--chair", "nobody"]
    result = run(
        *base, "--start", "2030-02-31 08:00", "--end", "2030-03-01 09:00", cwd=tmp_path, env=env
    )
    assert_one_line_error(result, "start: '2030-02-31 08:00' is not a valid date and time")
    result = run(
        *base, "--start", "2030-02-03 08:00", "--end", "2030-02-03 09:00", cwd=tmp_path, env=env
    )
    assert_one_line_error(result, "unknown user 'nobody'")
    result = run("meeting", "show", "42", cwd=tmp_path, env=env)
    assert_one_line_error(result, "no meeting 42")
    result = run("meeting", "send-invitations", "42", cwd=tmp_path, env=env)
    assert_one_line_error(result, "e-mail is not configured")
