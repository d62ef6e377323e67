"""E-mail and reminder settings, and what the SMTP client does with them."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from conference.notify.mail import send_messages
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
    assert errors[0] is not None and "STARTTLS" in errors[0].upper()
    assert mailbox.messages() == []
    settings.smtp_security = "none"
    assert await send_messages(settings, [message_to("a@xa.example.vn")]) == [None]
    assert len(mailbox.messages()) == 1


async def test_not_configured() -> None:
    errors = await send_messages(Settings(), [message_to("a@xa.example.vn")])
    assert errors == ["e-mail is not configured (smtp_host)"]
