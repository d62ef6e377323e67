"""The organisation as administrators see it: units, points and users in the actor's scope.

The functions ``list_*``, ``get_*``, ``create_*``, ``update_*`` and ``import_units`` take an
open session and the acting :class:`~conference.domain.permissions.CurrentUser`, and
wrap the services of :mod:`conference.domain.organisation` and
:mod:`conference.domain.accounts` with the unit scope: an admin of a district sees and
edits only that district and the units below it (an admin without a unit sees
everything).  Something outside the scope is reported as not found (:class:`NotFound`), so
its existence does not leak.  Invalid input raises :class:`Invalid` with one message per
field (catalogue keys of ``web/static/i18n/admin.json``, so pages show them in Vietnamese
and the API in English); nothing is written then.  Views (:class:`UnitView`, ...) are
plain snapshots, safe to use after the session is closed.  Used by the admin pages
(conference/web/pages/admin.py) and the JSON API (conference/web/api/__init__.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.core import errors
from conference.domain import accounts, organisation
from conference.domain.models import ROLES, UNIT_KINDS, UNIT_LEVEL, Point, Unit, User
from conference.domain.organisation import (
    OrganisationError,
    _clean_bandwidth,
    _clean_email,
    _clean_phone,
    clean_code,
    clean_name,
)
from conference.domain.permissions import CurrentUser, visible_unit_ids

Message = tuple[str, dict[str, Any]]


class Invalid(errors.Refused):
    """Rejected input: field -> (catalogue key, parameters).  409 for a taken code."""

    def __init__(self, errors: dict[str, Message], status: int = 422) -> None:
        summary = ", ".join(f"{k}: {v[0]}" for k, v in errors.items())
        super().__init__("conflict" if status == 409 else "invalid", summary, status)
        self.errors = errors

    def fields(self, translate: Mapping[str, str]) -> dict[str, str]:
        return {k: message_text(translate, key, p) for k, (key, p) in self.errors.items()}


def message_text(strings: Mapping[str, str], key: str, params: Mapping[str, Any]) -> str:
    """``key`` formatted with ``params``; a ``detail_key`` among them is said first, in the
    same language, as ``detail`` (else the ``detail`` given, English, stays)."""
    values = dict(params)
    inner = values.pop("detail_key", None)
    if isinstance(inner, str) and inner in strings:
        values["detail"] = strings[inner].format(**values)
    return strings.get(key, key).format(**values)


class NotFound(errors.NotFound):
    """No such unit, point or user in the actor's scope."""


# --- views --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitView:
    code: str
    name: str
    kind: str
    parent: str | None
    depth: int = 0

    @classmethod
    def of(cls, unit: Unit, depth: int = 0) -> UnitView:
        return cls(
            unit.code, unit.name, unit.kind, unit.parent.code if unit.parent else None, depth
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["depth"]
        return data


@dataclass(frozen=True)
class PointView:
    code: str
    name: str
    unit: str
    unit_name: str
    email: str | None
    phone: str | None
    bandwidth: str
    active: bool

    @classmethod
    def of(cls, point: Point) -> PointView:
        return cls(
            point.code,
            point.name,
            point.unit.code,
            point.unit.name,
            point.contact_email,
            point.phone,
            point.bandwidth_profile,
            point.active,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UserView:
    username: str
    display_name: str
    role: str
    unit: str | None
    unit_name: str | None
    point: str | None
    active: bool
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(
            user.username,
            user.display_name,
            user.role,
            user.unit.code if user.unit else None,
            user.unit.name if user.unit else None,
            user.point.code if user.point else None,
            user.active,
            user.last_login_at,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_login_at"] = self.last_login_at.isoformat() if self.last_login_at else None
        return data


# --- scoped services ----------------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value.strip() if isinstance(value, str) else ""


def _visible(session: Session, actor: CurrentUser, unit_id: int | None) -> bool:
    scope = visible_unit_ids(session, actor)
    return scope is None or (unit_id is not None and unit_id in scope)


def _unit_in_scope(
    session: Session, actor: CurrentUser, code: str, field: str, errors: dict[str, Message]
) -> Unit | None:
    unit = session.scalar(select(Unit).where(Unit.code == code)) if code else None
    if unit is None or not _visible(session, actor, unit.id):
        errors[field] = ("admin.err.unit_unknown", {"code": code})
        return None
    return unit


def _check(errors: dict[str, Message], field: str, key: str, function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except (OrganisationError, accounts.AccountError):
        errors[field] = (key, {})
        return None


def list_units(session: Session, actor: CurrentUser) -> list[UnitView]:
    """The visible units as a tree, depth-first (children by level, then name)."""
    scope = visible_unit_ids(session, actor)
    units = [u for u in organisation.list_units(session) if scope is None or u.id in scope]
    ids = {u.id for u in units}
    children: dict[int | None, list[Unit]] = {}
    for unit in units:
        children.setdefault(unit.parent_id if unit.parent_id in ids else None, []).append(unit)
    out: list[UnitView] = []

    def walk(parent: int | None, depth: int) -> None:
        for unit in children.get(parent, []):
            out.append(UnitView.of(unit, depth))
            walk(unit.id, depth + 1)

    walk(None, 0)
    return out


def get_unit(session: Session, actor: CurrentUser, code: str) -> UnitView:
    unit = session.scalar(select(Unit).where(Unit.code == code))
    if unit is None or not _visible(session, actor, unit.id):
        raise NotFound(code)
    return UnitView.of(unit)


def create_unit(session: Session, actor: CurrentUser, data: Mapping[str, Any]) -> UnitView:
    errors: dict[str, Message] = {}
    code = _check(errors, "code", "admin.err.code", clean_code, _text(data, "code"))
    name = _check(errors, "name", "admin.err.name", clean_name, _text(data, "name"))
    kind = _text(data, "kind")
    if kind not in UNIT_KINDS:
        errors["kind"] = ("admin.err.kind", {})
    parent_code = _text(data, "parent")
    parent = None
    if parent_code:
        parent = _unit_in_scope(session, actor, parent_code, "parent", errors)
    elif actor.unit_id is not None:
        errors["parent"] = ("admin.err.parent_required", {})
    elif kind == "commune":
        errors["parent"] = ("admin.err.parent_commune", {})
    if parent is not None and kind in UNIT_KINDS and UNIT_LEVEL[parent.kind] >= UNIT_LEVEL[kind]:
        errors["parent"] = ("admin.err.parent_level", {})
    if code and session.scalar(select(Unit.id).where(Unit.code == code)) is not None:
        raise Invalid({"code": ("admin.err.code_taken", {"code": code})}, 409)
    if errors:
        raise Invalid(errors)
    unit = organisation.create_unit(session, code=code, name=name, kind=kind, parent=parent_code)
    return UnitView.of(unit)


def list_points(session: Session, actor: CurrentUser) -> list[PointView]:
    scope = visible_unit_ids(session, actor)
    points = organisation.list_points(session)
    return [PointView.of(p) for p in points if scope is None or p.unit_id in scope]


def _point(session: Session, actor: CurrentUser, code: str) -> Point:
    point = session.scalar(select(Point).where(Point.code == code))
    if point is None or not _visible(session, actor, point.unit_id):
        raise NotFound(code)
    return point


def get_point(session: Session, actor: CurrentUser, code: str) -> PointView:
    return PointView.of(_point(session, actor, code))


def _point_fields(
    session: Session, actor: CurrentUser, data: Mapping[str, Any], errors: dict[str, Message]
) -> dict[str, Any]:
    """Validate the editable fields present in `data`."""
    out: dict[str, Any] = {}
    if "name" in data:
        out["name"] = _check(errors, "name", "admin.err.name", clean_name, _text(data, "name"))
    if "unit" in data:
        out["unit"] = _unit_in_scope(session, actor, _text(data, "unit"), "unit", errors)
    if "email" in data:
        out["email"] = _check(
            errors, "email", "admin.err.email", _clean_email, _text(data, "email")
        )
    if "phone" in data:
        out["phone"] = _check(
            errors, "phone", "admin.err.phone", _clean_phone, _text(data, "phone")
        )
    if "bandwidth" in data:
        value = _text(data, "bandwidth")
        out["bandwidth"] = _check(
            errors, "bandwidth", "admin.err.bandwidth", _clean_bandwidth, value
        )
    if "active" in data:
        out["active"] = data["active"] in (True, "on", "true", "1")
    return out


def create_point(session: Session, actor: CurrentUser, data: Mapping[str, Any]) -> PointView:
    errors: dict[str, Message] = {}
    code = _check(errors, "code", "admin.err.code", clean_code, _text(data, "code"))
    fields = _point_fields(session, actor, {"name": "", "unit": "", **data}, errors)
    if code and session.scalar(select(Point.id).where(Point.code == code)) is not None:
        raise Invalid({"code": ("admin.err.code_taken", {"code": code})}, 409)
    if errors:
        raise Invalid(errors)
    point = Point(
        code=code,
        name=fields["name"],
        unit=fields["unit"],
        contact_email=fields.get("email"),
        phone=fields.get("phone"),
        bandwidth_profile=fields.get("bandwidth") or "standard",
        active=fields.get("active", True),
    )
    session.add(point)
    session.flush()
    return PointView.of(point)


def update_point(
    session: Session, actor: CurrentUser, code: str, data: Mapping[str, Any]
) -> PointView:
    """Change the fields present in `data` (the code, an identity in tokens, is fixed)."""
    point = _point(session, actor, code)
    errors: dict[str, Message] = {}
    fields = _point_fields(session, actor, data, errors)
    if errors:
        raise Invalid(errors)
    if "name" in fields:
        point.name = fields["name"]
    if "unit" in fields:
        point.unit = fields["unit"]
    if "email" in fields:
        point.contact_email = fields["email"]
    if "phone" in fields:
        point.phone = fields["phone"]
    if "bandwidth" in fields:
        point.bandwidth_profile = fields["bandwidth"]
    if "active" in fields:
        point.active = fields["active"]
    session.flush()
    return PointView.of(point)


def list_users(session: Session, actor: CurrentUser) -> list[UserView]:
    scope = visible_unit_ids(session, actor)
    users = accounts.list_users(session)
    return [UserView.of(u) for u in users if scope is None or u.unit_id in scope]


def _user(session: Session, actor: CurrentUser, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username.strip().lower()))
    if user is None or not _visible(session, actor, user.unit_id):
        raise NotFound(username)
    return user


def get_user(session: Session, actor: CurrentUser, username: str) -> UserView:
    return UserView.of(_user(session, actor, username))


def _password(data: Mapping[str, Any], errors: dict[str, Message]) -> str:
    password = data.get("password")
    password = password if isinstance(password, str) else ""
    if len(password) < accounts.MIN_PASSWORD:
        errors["password"] = ("admin.err.password_short", {"n": accounts.MIN_PASSWORD})
    elif len(password) > accounts.MAX_PASSWORD:
        errors["password"] = ("admin.err.password_long", {"n": accounts.MAX_PASSWORD})
    elif "repeat" in data and data["repeat"] != password:
        errors["repeat"] = ("admin.err.repeat", {})
    return password


def create_user(session: Session, actor: CurrentUser, data: Mapping[str, Any]) -> UserView:
    errors: dict[str, Message] = {}
    username = _check(
        errors, "username", "admin.err.username", accounts.clean_username, _text(data, "username")
    )
    display = _text(data, "display_name") or username  # default: the username
    display_name = (
        _check(errors, "display_name", "admin.err.name", clean_name, display) if display else None
    )
    role = _text(data, "role")
    if role not in ROLES:
        errors["role"] = ("admin.err.role", {})
    unit_code, point_code = _text(data, "unit"), _text(data, "point")
    unit = _unit_in_scope(session, actor, unit_code, "unit", errors) if unit_code else None
    if not unit_code and (actor.unit_id is not None or role != "admin") and not point_code:
        errors["unit"] = ("admin.err.unit_required", {})
    point = None
    if role == "operator":
        if not point_code:
            errors["point"] = ("admin.err.point_required", {})
        else:
            try:
                point = _point(session, actor, point_code)
            except NotFound:
                errors["point"] = ("admin.err.point_unknown", {"code": point_code})
    elif point_code:
        errors["point"] = ("admin.err.point_only_operator", {})
    if unit is not None and point is not None and not _in(session, point.unit_id, unit.id):
        errors["point"] = ("admin.err.point_outside", {})
    password = _password(data, errors)
    if username and session.scalar(select(User.id).where(User.username == username)):
        raise Invalid({"username": ("admin.err.username_taken", {"username": username})}, 409)
    if errors:
        raise Invalid(errors)
    user = accounts.create_user(
        session,
        username=username,
        password=password,
        role=role,
        unit=unit.code if unit else None,
        point=point.code if point else None,
        display_name=display_name,
    )
    return UserView.of(user)


def _in(session: Session, unit_id: int, root_id: int) -> bool:
    return unit_id in organisation.subtree_ids(session, root_id)


def update_user(
    session: Session, actor: CurrentUser, username: str, data: Mapping[str, Any]
) -> UserView:
    """Change ``display_name``, ``active`` or ``password`` (a reset) when present."""
    user = _user(session, actor, username)
    errors: dict[str, Message] = {}
    display_name = None
    if "display_name" in data:
        display_name = _check(
            errors, "display_name", "admin.err.name", clean_name, _text(data, "display_name")
        )
    password = _password(data, errors) if "password" in data else None
    active = None
    if "active" in data:
        active = data["active"] in (True, "on", "true", "1")
        if not active and user.id == actor.id:
            errors["active"] = ("admin.err.disable_self", {})
    if errors:
        raise Invalid(errors)
    if display_name is not None:
        user.display_name = display_name
    if password is not None:
        accounts.set_password(session, user.username, password)
    if active is not None:
        accounts.set_active(user, active)
    session.flush()
    return UserView.of(user)


def sign_out_everywhere(session: Session, actor: CurrentUser, username: str) -> UserView:
    """End every session cookie and API token of `username` (in the actor's scope)."""
    user = _user(session, actor, username)
    accounts.end_sessions(user)
    session.flush()
    return UserView.of(user)


_LINE = re.compile(r"line (\d+): (.*)", re.S)


@dataclass(frozen=True)
class ImportReport:
    units: int
    points: int


def import_units(session: Session, actor: CurrentUser, data: bytes) -> ImportReport:
    """The CSV import (all rows or none) limited to the actor's scope.

    Raises :class:`Invalid` on field ``file``: ``admin.err.import_line`` (``line``,
    ``detail``) or ``admin.err.import`` (``detail``); the caller's transaction is rolled back.
    """
    try:
        result = organisation.import_csv(session, data)
        if actor.unit_id is not None:
            scope = organisation.subtree_ids(session, actor.unit_id)
            outside = [u.code for u in result.units if u.id not in scope]
            outside += [p.code for p in result.points if p.unit_id not in scope]
            if outside:
                line = _line_of(data, outside[0])
                raise OrganisationError(
                    f"line {line}: {outside[0]!r} would be outside your unit"
                    if line
                    else f"{outside[0]!r} would be outside your unit",
                    "org.err.outside",
                    line,
                    code=outside[0],
                )
    except OrganisationError as exc:
        # the detail in the reader's language (``detail_key``, see `message_text`), the
        # English one as a fallback
        params: dict[str, Any] = dict(exc.params)
        if exc.key is not None:
            params["detail_key"] = exc.key
        match = _LINE.fullmatch(str(exc))
        if match:
            params |= {"line": exc.line or int(match.group(1)), "detail": match.group(2)}
            raise Invalid({"file": ("admin.err.import_line", params)}) from None
        params["detail"] = str(exc)
        raise Invalid({"file": ("admin.err.import", params)}) from None
    return ImportReport(len(result.units), len(result.points))


def _line_of(data: bytes, code: str) -> int | None:
    text = data.decode("utf-8-sig", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        cells = [c.strip().strip('"') for c in re.split(r"[,;]", line)]
        if len(cells) > 1 and cells[1] == code:
            return number
    return None
