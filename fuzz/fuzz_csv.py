"""Fuzz the CSV import of units and points (conference/domain/organisation.py `import_csv`).

The database is a migrated SQLite file (``db.upgrade``, as the server makes it) holding
a province, a district and a point, so that rows may name existing parents and collide
with existing codes.  Each input is imported in a transaction that is rolled back.  The
input is given as bytes (any encoding: `import_csv` decodes UTF-8 itself) or, for one in
two inputs, as text.  A crash is any exception other than `OrganisationError`, or an
import that succeeds with a unit or point that breaks the rules the module documents
(codes, names, e-mail, levels, a point's unit).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import common

with common.instrumented():
    from sqlalchemy.orm import Session

    from conference.domain import db, organisation
    from conference.domain.models import UNIT_LEVEL
    from conference.domain.organisation import OrganisationError, import_csv

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-csv-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
_URL = f"sqlite:///{_DIR / 'conference.db'}"
db.upgrade(_URL)
_DATABASE = db.Database(_URL)
with _DATABASE.session() as _setup:
    organisation.create_unit(_setup, code="tinh-x", name="Tỉnh X", kind="province")
    organisation.create_unit(
        _setup, code="huyen-a", name="Huyện A", kind="district", parent="tinh-x"
    )
    organisation.create_point(_setup, code="ubnd-a", name="UBND huyện A", unit="huyen-a")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    source: bytes | str = data[1:]
    if data[0] & 1:
        source = data[1:].decode("utf-8", "replace")
    with Session(_DATABASE.engine) as session:
        try:
            result = import_csv(session, source)
        except OrganisationError as exc:
            assert "\n" not in str(exc), "an error message of several lines"
            return
        finally:
            session.rollback()
        for unit in result.units:
            organisation.clean_code(unit.code)
            assert organisation.clean_name(unit.name) == unit.name
            if unit.parent is not None:
                assert UNIT_LEVEL[unit.parent.kind] < UNIT_LEVEL[unit.kind], unit.code
            else:
                assert unit.kind != "commune", unit.code
        for point in result.points:
            organisation.clean_code(point.code)
            assert point.unit is not None and point.bandwidth_profile
            assert point.contact_email is None or "@" in point.contact_email


SEEDS = [
    b"\x00kind,code,name,parent,email,phone,bandwidth\n"
    b"district,huyen-b,Huy\xe1\xbb\x87n B,tinh-x,,,\n"
    b"commune,xa-tan-lap,X\xc3\xa3 T\xc3\xa2n L\xe1\xba\xadp,huyen-b,,,\n"
    b"point,ubnd-tan-lap,UBND x\xc3\xa3 T\xc3\xa2n L\xe1\xba\xadp,xa-tan-lap,vp@tanlap.gov.vn,0210 3861 234,low\n",
    b'\x01\xef\xbb\xbfkind;code;name;parent\n# comment\n\ncommune;xa-b;"X\xc3\xa3; B";huyen-a\n',
    b"\x00kind,code,name,parent\npoint,ubnd-a,Again,huyen-a\ndistrict,huyen-a,Dup,\n",
    b'\x00code,kind,parent,name,bandwidth\nx,province,,"a""b",\n',
]

if __name__ == "__main__":
    common.run("csv", test_one_input, SEEDS)
