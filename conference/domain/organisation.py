"""Units and points: create, list, scope, and import them from a CSV file.

Every function takes an open `Session` and leaves committing to the caller (see
`Database.session`), so a failed import or a rejected value writes nothing.  Errors are
`OrganisationError` with a one-line message; CSV errors name the line.

CSV format (UTF-8, with or without a byte-order mark; comma or semicolon separated), one
row per unit or point, in any order (a parent may come later in the file or exist already):

    kind,code,name,parent,email,phone,bandwidth
    district,huyen-a,Huyện A,,,,
    commune,xa-tan-lap,Xã Tân Lập,huyen-a,,,
    point,ubnd-tan-lap,UBND xã Tân Lập,xa-tan-lap,vanphong@tanlap.gov.vn,0210 3861 234,low

`kind` is province, district, commune or point; `parent` is the code of the parent unit
(the unit a point belongs to).  `email`, `phone` and `bandwidth` (low, standard, high;
default standard) are for points only.  Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.domain.models import (
    BANDWIDTH_PROFILES,
    DEFAULT_BANDWIDTH,
    UNIT_KINDS,
    UNIT_LEVEL,
    Point,
    Unit,
)

__all__ = [
    "CSV_COLUMNS",
    "ImportResult",
    "OrganisationError",
    "create_point",
    "create_unit",
    "get_point",
    "get_unit",
    "import_csv",
    "list_points",
    "list_units",
    "sort_key",
    "subtree_ids",
]

CSV_COLUMNS = ("kind", "code", "name", "parent", "email", "phone", "bandwidth")
REQUIRED_COLUMNS = ("kind", "code", "name", "parent")
MAX_NAME = 200

_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EMAIL = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{4,30}")


class OrganisationError(ValueError):
    """A unit or point is invalid, unknown or duplicated; the message is one line.

    ``key`` and ``params`` say the same for the pages, in the reader's language (the
    catalogue's ``org.err.*`` entries: web/static/i18n/admin.json); ``line``: the CSV
    line it is about.  The message stays English for the command line and the log."""

    def __init__(
        self, message: str, key: str | None = None, line: int | None = None, **params: Any
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.key = key
        self.line = line
        self.params = params

    def at(self, line: int) -> OrganisationError:
        """The same problem, said of CSV line ``line``."""
        return OrganisationError(f"line {line}: {self}", self.key, line, **self.params)


# --- validation ---------------------------------------------------------------------------


def clean_name(value: str, what: str = "name") -> str:
    """Trim and NFC-normalise a name (Vietnamese text typed on macOS arrives decomposed)."""
    name = " ".join(unicodedata.normalize("NFC", value).split())
    if not name:
        raise OrganisationError(f"{what} is empty", "org.err.name_empty")
    if len(name) > MAX_NAME:
        raise OrganisationError(
            f"{what} is longer than {MAX_NAME} characters", "org.err.name_long", max=MAX_NAME
        )
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise OrganisationError(f"{what} contains control characters", "org.err.name_control")
    return name


def clean_code(value: str, what: str = "code") -> str:
    code = value.strip()
    if not _CODE.fullmatch(code):
        raise OrganisationError(
            f"{what} {code!r} is invalid (letters, digits, '.', '_', '-'; at most 64; "
            "starting with a letter or digit)",
            "org.err.bad_code",
            code=code,
        )
    return code


def _clean_kind(value: str) -> str:
    kind = value.strip().lower()
    if kind not in UNIT_KINDS:
        raise OrganisationError(
            f"unknown unit kind {kind!r} (expected {', '.join(UNIT_KINDS)})",
            "org.err.unknown_kind",
            kind=kind,
        )
    return kind


def _clean_email(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    email = value.strip()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise OrganisationError(
            f"e-mail address {email!r} is invalid", "org.err.email", email=email
        )
    return email


def _clean_phone(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    phone = " ".join(value.split())
    if len(phone) > 32 or not _PHONE.fullmatch(phone):
        raise OrganisationError(f"phone number {phone!r} is invalid", "org.err.phone", phone=phone)
    return phone


def _clean_bandwidth(value: str | None) -> str:
    if value is None or not value.strip():
        return DEFAULT_BANDWIDTH
    profile = value.strip().lower()
    if profile not in BANDWIDTH_PROFILES:
        raise OrganisationError(
            f"unknown bandwidth profile {profile!r} (expected {', '.join(BANDWIDTH_PROFILES)})",
            "org.err.bandwidth",
            profile=profile,
        )
    return profile


def _check_parent(kind: str, parent_kind: str | None, parent_code: str | None) -> None:
    if parent_kind is None:
        if kind == "commune":
            raise OrganisationError(
                "a commune needs a parent unit (a district or province)",
                "org.err.commune_parent",
            )
        return
    if UNIT_LEVEL[parent_kind] >= UNIT_LEVEL[kind]:
        raise OrganisationError(
            f"a {kind} cannot belong to the {parent_kind} {parent_code!r} "
            "(the parent must be a higher level: province > district > commune)",
            "org.err.parent_level",
            parent=parent_code or "",
        )


def sort_key(name: str) -> tuple[str, str]:
    """Order Vietnamese names as people expect: Đồng Văn between Dế and Mèo, not after Z.

    Letters first without tone marks and diacritics (đ as d), then the full name as a tie-break.
    """
    base = unicodedata.normalize("NFD", name.replace("đ", "d").replace("Đ", "D"))
    plain = "".join(ch for ch in base if not unicodedata.combining(ch))
    return plain.casefold(), name


# --- queries --------------------------------------------------------------------------------


def get_unit(session: Session, code: str) -> Unit:
    unit = session.scalar(select(Unit).where(Unit.code == code.strip()))
    if unit is None:
        raise OrganisationError(f"unknown unit {code.strip()!r}")
    return unit


def get_point(session: Session, code: str) -> Point:
    point = session.scalar(select(Point).where(Point.code == code.strip()))
    if point is None:
        raise OrganisationError(f"unknown point {code.strip()!r}")
    return point


def subtree_ids(session: Session, unit_id: int) -> set[int]:
    """The ids of a unit and of every unit below it (a recursive query)."""
    tree = select(Unit.id).where(Unit.id == unit_id).cte("tree", recursive=True)
    tree = tree.union_all(select(Unit.id).where(Unit.parent_id == tree.c.id))
    return set(session.scalars(select(tree.c.id)))


def list_units(session: Session, under: Unit | None = None) -> list[Unit]:
    """Units ordered by level then name; with `under`, that unit and its descendants."""
    query = select(Unit)
    if under is not None:
        query = query.where(Unit.id.in_(subtree_ids(session, under.id)))
    units = list(session.scalars(query))
    units.sort(key=lambda u: (UNIT_LEVEL[u.kind], sort_key(u.name), u.code))
    return units


def list_points(
    session: Session, under: Unit | None = None, include_inactive: bool = True
) -> list[Point]:
    """Points ordered by name; with `under`, only points of that unit's subtree."""
    query = select(Point)
    if under is not None:
        query = query.where(Point.unit_id.in_(subtree_ids(session, under.id)))
    if not include_inactive:
        query = query.where(Point.active.is_(True))
    return sorted(session.scalars(query), key=lambda p: (sort_key(p.name), p.code))


# --- creation -------------------------------------------------------------------------------


def create_unit(
    session: Session, *, code: str, name: str, kind: str, parent: str | None = None
) -> Unit:
    """Add a unit; `parent` is the code of an existing unit of a higher level."""
    code = clean_code(code, "unit code")
    kind = _clean_kind(kind)
    name = clean_name(name, "unit name")
    if session.scalar(select(Unit.id).where(Unit.code == code)) is not None:
        raise OrganisationError(f"unit code {code!r} already exists")
    parent_unit = get_unit(session, parent) if parent and parent.strip() else None
    _check_parent(kind, parent_unit.kind if parent_unit else None, parent)
    unit = Unit(code=code, name=name, kind=kind, parent=parent_unit)
    session.add(unit)
    session.flush()
    return unit


def create_point(
    session: Session,
    *,
    code: str,
    name: str,
    unit: str,
    email: str | None = None,
    phone: str | None = None,
    bandwidth: str | None = None,
    active: bool = True,
) -> Point:
    """Add a meeting point to the unit with code `unit`."""
    code = clean_code(code, "point code")
    name = clean_name(name, "point name")
    if session.scalar(select(Point.id).where(Point.code == code)) is not None:
        raise OrganisationError(f"point code {code!r} already exists")
    point = Point(
        code=code,
        name=name,
        unit=get_unit(session, unit),
        contact_email=_clean_email(email),
        phone=_clean_phone(phone),
        bandwidth_profile=_clean_bandwidth(bandwidth),
        active=active,
    )
    session.add(point)
    session.flush()
    return point


# --- CSV import -----------------------------------------------------------------------------


@dataclass
class ImportResult:
    units: list[Unit] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)


@dataclass
class _Row:
    line: int
    kind: str
    code: str
    name: str
    parent: str
    email: str | None
    phone: str | None
    bandwidth: str


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise OrganisationError(
            f"line {line}: the file is not UTF-8 text (in Excel, save as 'CSV UTF-8')",
            "org.err.not_utf8",
            line,
        ) from None


def _parse(text: str) -> list[_Row]:
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise OrganisationError("the file is empty", "org.err.empty")
    delimiter = ";" if lines[first].count(";") > lines[first].count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[_Row] = []
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record) or record[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in record]
                missing = [c for c in REQUIRED_COLUMNS if c not in header]
                unknown = [c for c in header if c not in CSV_COLUMNS]
                if missing or unknown:
                    problem = (
                        f"missing column {missing[0]!r}"
                        if missing
                        else f"unknown column {unknown[0]!r}"
                    )
                    raise OrganisationError(
                        f"line {line}: {problem} (the header must name the columns "
                        f"{', '.join(CSV_COLUMNS)})",
                        "org.err.missing_column" if missing else "org.err.unknown_column",
                        line,
                        column=(missing or unknown)[0],
                        columns=", ".join(CSV_COLUMNS),
                    )
                if len(set(header)) != len(header):
                    raise OrganisationError(
                        f"line {line}: a column is named twice", "org.err.column_twice", line
                    )
                continue
            if len(record) > len(header) and any(c.strip() for c in record[len(header) :]):
                raise OrganisationError(
                    f"line {line}: {len(record)} fields, the header has {len(header)}",
                    "org.err.fields",
                    line,
                    fields=len(record),
                    header=len(header),
                )
            values = dict(zip(header, record, strict=False))
            try:
                rows.append(_row(line, values))
            except OrganisationError as exc:
                raise exc.at(line) from None
    except csv.Error as exc:
        raise OrganisationError(
            f"line {reader.line_num}: {exc}", "org.err.csv", reader.line_num, detail=str(exc)
        ) from None
    if header is None:
        raise OrganisationError("the file is empty", "org.err.empty")
    return rows


def _row(line: int, values: dict[str, str]) -> _Row:
    kind = values.get("kind", "").strip().lower()
    if kind != "point":
        kind = _clean_kind(kind) if kind else ""
    if not kind:
        raise OrganisationError(
            "kind is empty (province, district, commune or point)", "org.err.kind_empty"
        )
    what = "point" if kind == "point" else "unit"
    row = _Row(
        line=line,
        kind=kind,
        code=clean_code(values.get("code", ""), f"{what} code"),
        name=clean_name(values.get("name", ""), f"{what} name"),
        parent=values.get("parent", "").strip(),
        email=_clean_email(values.get("email")),
        phone=_clean_phone(values.get("phone")),
        bandwidth=_clean_bandwidth(values.get("bandwidth")),
    )
    if kind == "point":
        if not row.parent:
            raise OrganisationError(
                "a point needs its unit's code in the 'parent' column", "org.err.point_parent"
            )
    elif row.email or row.phone or values.get("bandwidth", "").strip():
        raise OrganisationError(
            "email, phone and bandwidth are for points, not units", "org.err.unit_contact"
        )
    return row


def import_csv(session: Session, source: bytes | str | Path) -> ImportResult:
    """Import units and points from CSV (a path, raw bytes or text): all rows or none.

    Raises `OrganisationError` naming the line of the first problem; the caller's
    transaction should then be rolled back (nothing is flushed before every row is valid).
    """
    if isinstance(source, Path):
        path = source
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise OrganisationError(f"cannot read {path}: {exc.strerror}") from None
    text = _decode(source) if isinstance(source, bytes) else source.removeprefix("\ufeff")
    rows = _parse(text)

    unit_rows: dict[str, _Row] = {}
    point_rows: dict[str, _Row] = {}
    for row in rows:
        seen = point_rows if row.kind == "point" else unit_rows
        if row.code in seen:
            raise OrganisationError(
                f"line {row.line}: {'point' if row.kind == 'point' else 'unit'} code "
                f"{row.code!r} is already used on line {seen[row.code].line}",
                "org.err.code_repeated",
                row.line,
                code=row.code,
                other=seen[row.code].line,
            )
        seen[row.code] = row

    existing_units = (
        {u.code: u for u in session.scalars(select(Unit).where(Unit.code.in_(list(unit_rows))))}
        if unit_rows
        else {}
    )
    # (the answer names only the importer's own row: the unit or point holding the code
    # may belong to another district, whose names it must not learn)
    for code in sorted(existing_units, key=lambda code: unit_rows[code].line):
        raise OrganisationError(
            f"line {unit_rows[code].line}: unit code {code!r} already exists",
            "org.err.unit_exists",
            unit_rows[code].line,
            code=code,
        )
    if point_rows:
        taken = session.scalars(select(Point).where(Point.code.in_(list(point_rows))))
        for point in sorted(taken, key=lambda p: point_rows[p.code].line):
            raise OrganisationError(
                f"line {point_rows[point.code].line}: point code {point.code!r} already exists",
                "org.err.point_exists",
                point_rows[point.code].line,
                code=point.code,
            )
    parents = _referenced_units(session, [r.parent for r in rows if r.parent], unit_rows)

    def kind_of(code: str) -> str | None:
        if code in unit_rows:
            return unit_rows[code].kind
        return parents[code].kind if code in parents else None

    for row in rows:
        if row.parent and kind_of(row.parent) is None:
            raise OrganisationError(
                f"line {row.line}: unknown parent unit {row.parent!r}",
                "org.err.unknown_parent",
                row.line,
                code=row.parent,
            )
        if row.kind != "point":
            if row.parent == row.code:
                raise OrganisationError(
                    f"line {row.line}: a unit cannot be its own parent",
                    "org.err.own_parent",
                    row.line,
                )
            try:
                _check_parent(row.kind, kind_of(row.parent) if row.parent else None, row.parent)
            except OrganisationError as exc:
                raise exc.at(row.line) from None

    result = ImportResult()
    created: dict[str, Unit] = {}
    for row in unit_rows.values():
        created[row.code] = Unit(code=row.code, name=row.name, kind=row.kind)
    for row in unit_rows.values():
        if row.parent:
            created[row.code].parent = created.get(row.parent) or parents[row.parent]
    for row in point_rows.values():
        result.points.append(
            Point(
                code=row.code,
                name=row.name,
                unit=created.get(row.parent) or parents[row.parent],
                contact_email=row.email,
                phone=row.phone,
                bandwidth_profile=row.bandwidth,
                active=True,
            )
        )
    result.units = list(created.values())
    session.add_all(result.units)
    session.add_all(result.points)
    session.flush()
    return result


def _referenced_units(
    session: Session, codes: Sequence[str], in_file: dict[str, _Row]
) -> dict[str, Unit]:
    wanted = sorted({c for c in codes if c not in in_file})
    if not wanted:
        return {}
    return {u.code: u for u in session.scalars(select(Unit).where(Unit.code.in_(wanted)))}
