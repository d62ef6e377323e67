"""The country's clock: meetings are planned in Asia/Ho_Chi_Minh and stored in UTC."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

TIMEZONE = "Asia/Ho_Chi_Minh"
ZONE = ZoneInfo(TIMEZONE)


def local_time(value: datetime) -> datetime:
    """A stored UTC time in Asia/Ho_Chi_Minh."""
    return value.astimezone(ZONE)
