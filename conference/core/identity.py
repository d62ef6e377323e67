"""Who a participant is, as its token says: what access control hands the media plane.

Identity spaces
---------------
A participant's identity is a *key* ``KIND:SUBJECT``: the kind of who it is, then the name
that kind uses (a point's code, an account's username).  Points, accounts, guests and
hand-made (ad-hoc) tokens are separate spaces, so a point whose code equals a username is
another participant than that account, and no kind can replace, be admitted as, or take
the place of another (issue 14, item 3).

========  ==========  =========================================================
kind      prefix      subject
========  ==========  =========================================================
point     ``pt:``     the point's code (invitation links)
account   ``u:``      the account's username (the chair's side, from the meeting page)
guest     ``g:``      a guest's id (not a point, not an account)
token     ``t:``      anything else: tokens made by hand (``conference token create``)
========  ==========  =========================================================

The key is what the room, the lobby, the briefing rules, the cluster, attendance and
recording manifests use; the subject is for database look-ups and for display (people
never see a prefix).  A bare value (no ``:``, e.g. the ``sub`` of a token issued before
identity kinds existed, or an old recording manifest) is read by `legacy_kind` of its role.
Subjects never contain ``:`` (``[A-Za-z0-9._~-]``), so a key splits at its first ``:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KINDS",
    "Identity",
    "identity_key",
    "legacy_kind",
    "normal_key",
    "shown_identity",
    "split_identity",
]

#: kind -> the prefix of its keys
KINDS = {"point": "pt", "account": "u", "guest": "g", "token": "t"}
_BY_PREFIX = {prefix: kind for kind, prefix in KINDS.items()}
#: the kind a bare identity has, by its role (what the role meant before kinds existed)
_ROLE_KINDS = {"point": "point", "chair": "account", "viewer": "account"}


def legacy_kind(role: str) -> str:
    """The kind of a bare identity of ``role``: a point's token names a point, the chair's
    and viewers' tokens (the meeting page's) an account, anything else is a token."""
    return _ROLE_KINDS.get(role, "token")


def identity_key(kind: str, subject: str) -> str:
    """The key ``PREFIX:SUBJECT`` (ValueError for an unknown kind)."""
    if kind not in KINDS:
        raise ValueError(f"unknown identity kind {kind!r} (expected one of {', '.join(KINDS)})")
    return f"{KINDS[kind]}:{subject}"


def split_identity(key: str) -> tuple[str | None, str]:
    """(kind, subject) of a key; (None, ``key``) for a bare value (no known prefix)."""
    prefix, colon, subject = key.partition(":")
    kind = _BY_PREFIX.get(prefix) if colon else None
    return (kind, subject) if kind is not None else (None, key)


def normal_key(identity: str, role: str) -> str:
    """``identity`` as a key: a bare one gets the kind its role implies (`legacy_kind`)."""
    kind, subject = split_identity(identity)
    return identity if kind is not None else identity_key(legacy_kind(role), subject)


def shown_identity(identity: str) -> str:
    """What people see of an identity: its subject, never the prefix."""
    return split_identity(identity)[1]


class KindOf:
    """The kind and the subject of an ``identity`` (a bare one, from before identity kinds,
    by its ``role``): shared by tokens' claims and the room's identities."""

    identity: str
    role: str

    @property
    def kind(self) -> str:
        """point, account, guest or token (a bare identity: by its role)."""
        return split_identity(self.identity)[0] or legacy_kind(self.role)

    @property
    def subject(self) -> str:
        """The point's code, the account's username...: the identity without its kind."""
        return split_identity(self.identity)[1]


@dataclass
class Identity(KindOf):
    """Who a participant is, from its token.  ``identity`` is its key (see above)."""

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
