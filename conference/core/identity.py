"""Who a participant is, as its token says: what access control hands the media plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Identity:
    """Who a participant is, from its token."""

    identity: str
    name: str
    role: str
    publish: bool = False
    subscribe: bool = True
    moderate: bool = False
    record: bool = False
    token_id: str = ""
    expires_at: float = 0.0  # POSIX time the token expires
    extra: dict[str, Any] = field(default_factory=dict)
