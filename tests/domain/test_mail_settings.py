"""E-mail and reminder settings, and what the SMTP client does with them."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from conference.notify.mail import MailError, send_messages
from conference.settings import Settings, SettingsError, load_settings

from .smtp_server import Mailbox, mailbox_fixture  # noqa: F401 - fixture


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings.smtp_host is None and settings.smtp_port == 587
    assert settings.smtp_security == "starttls"
    assert settings.reminders == ["24h", "15m"] and settings.reminder_interval == 60
    assert settings.link_hours_after_end == 3 and settings.public_url is None
    assert "smtp_password" not in repr(Settings(smtp_password="secret-password"))


def test_from_environment_and_toml(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "CONFERENCE_SMTP_HOST": "mail.huyen.gov.vn",
            "CONFERENCE_SMTP_PORT": "465",
            "CONFERENCE_SMTP_SECURITY": "TLS",
            "CONFERENCE_SMTP_USER": "hop@huyen.gov.vn",
            "CONFERENCE_SMTP_PASSWORD": " spaces kept ",
            "CONFERENCE_MAIL_FROM": "Văn phòng <hop@huyen.gov.vn>",
            "CONFERENCE_PUBLIC_URL": "https://hop.huyen.gov.vn/",
            "CONFERENCE_REMINDERS": "2h, 10m",
            "CONFERENCE_LINK_HOURS_AFTER_END": "6",
        }
    )
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == (
        "mail.huyen.gov.vn",
        465,
        "tls",
    )
    assert settings.smtp_password == " spaces kept "
    assert settings.public_url == "https://hop.huyen.gov.vn"
    assert settings.reminders == ["2h", "10m"] and settings.link_hours_after_end == 6
    assert load_settings(env={"CONFERENCE_REMINDERS": "none"}).reminders == []
    config = tmp_path / "conference.toml"
    config.write_text('reminders = ["1d", "30m"]\nsmtp_host = "127.0.0.1"\n', encoding="utf-8")
    assert load_settings(config, env={}).reminders == ["1d", "30m"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONFERENCE_SMTP_SECURITY": "ssl"}, "CONFERENCE_SMTP_SECURITY: unknown SMTP security"),
        ({"CONFERENCE_SMTP_PORT": "70000"}, "CONFERENCE_SMTP_PORT: must be between 1 and 65535"),
        ({"CONFERENCE_REMINDERS": "24h,soon"}, "CONFERENCE_REMINDERS: invalid duration 'soon'"),
        ({"CONFERENCE_PUBLIC_URL": "hop.huyen.gov.vn"}, "CONFERENCE_PUBLIC_URL: expected a URL"),
        ({"CONFERENCE_LINK_HOURS_AFTER_END": "-1"}, "CONFERENCE_LINK_HOURS_AFTER_END: must be"),
        ({"CONFERENCE_REMINDER_INTERVAL": "0"}, "CONFERENCE_REMINDER_INTERVAL: must be"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env=env)
    assert message in str(info.value)


def message_to(address: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "hop@huyen.example.vn"
    message["To"] = address
    message["Subject"] = "Thử"
    message.set_content("Nội dung")
    return message


async def test_starttls_is_required_not_optional(mailbox: Mailbox) -> None:
    """With smtp_security = starttls a server without STARTTLS gets nothing in clear text."""
    settings = Settings(smtp_host=mailbox.host, smtp_port=mailbox.port)
    errors = await send_messages(settings, [message_to("a@xa.example.vn")])
    assert errors[0] is not None and "STARTTLS" in str(errors[0]).upper()
    assert errors[0].key == "mail.err.tls"
    assert mailbox.messages() == []
    settings.smtp_security = "none"
    assert await send_messages(settings, [message_to("a@xa.example.vn")]) == [None]
    assert len(mailbox.messages()) == 1


async def test_not_configured() -> None:
    errors = await send_messages(Settings(), [message_to("a@xa.example.vn")])
    assert [str(e) for e in errors] == ["e-mail is not configured (smtp_host)"]
    assert errors[0] is not None and errors[0].key == "mail.err.not_configured"


async def test_each_failure_is_said_in_the_readers_language(mailbox: Mailbox) -> None:
    """Issue 15 item 4: a mail server's refusal reaches the page as a catalogue key with
    its values (Vietnamese by default, English by choice), never as aiosmtplib's English;
    the English detail stays for the log. Every case against a real server or socket."""
    import socket

    def settings(**values: object) -> Settings:
        base: dict[str, object] = {
            "smtp_host": mailbox.host,
            "smtp_port": mailbox.port,
            "smtp_security": "none",
        }
        return Settings(**(base | values))  # type: ignore[arg-type]

    async def one(settings: Settings, to: str = "a@xa.example.vn") -> MailError:
        [error] = await send_messages(settings, [message_to(to)], timeout=5)
        assert error is not None
        return error

    with socket.socket() as silent:  # accepts connections, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        cases = [
            (settings(smtp_port=free_closed_port()), "mail.err.refused", "từ chối kết nối"),
            (settings(smtp_host="khong-co-may.invalid"), "mail.err.unknown_host", "Không tìm thấy"),
            (settings(smtp_security="starttls"), "mail.err.tls", "kết nối bảo mật"),
            (settings(smtp_security="tls"), "mail.err.tls", "kết nối bảo mật"),
            (settings(smtp_user="u", smtp_password="p"), "mail.err.auth", "mật khẩu"),
        ]
        for case, key, words in cases:
            error = await one(case)
            assert error.key == key, (key, error)
            vi, en = error.said("vi"), error.said("en")
            assert words in vi and vi != en and "{" not in vi + en, vi
            assert str(error) and str(error) not in vi  # the English detail is the log's
        timed_out = await send_messages(
            settings(smtp_port=port), [message_to("a@xa.example.vn")], timeout=0.5
        )
        assert timed_out[0] is not None and timed_out[0].key == "mail.err.timeout"
    mailbox.refuse.add("b@xa.example.vn")
    refused = await one(settings(), "b@xa.example.vn")
    assert refused.key == "mail.err.recipient" and refused.params["code"] == "550"
    assert "b@xa.example.vn" in refused.said("en") and "(code 550)" in refused.said("en")
    assert mailbox.messages() == []


def free_closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_mail_error_has_both_languages() -> None:
    import re

    from conference.notify.mail import catalogue

    keys = [k for k in catalogue() if k.startswith("mail.err.")]
    assert len(keys) >= 12
    for key in keys:
        entry = catalogue()[key]
        assert entry["vi"] and entry["en"] and entry["vi"] != entry["en"], key
        assert set(re.findall(r"{(\w+)}", entry["vi"])) == set(re.findall(r"{(\w+)}", entry["en"]))
