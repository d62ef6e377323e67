"""The minutes as a Word document (python-docx) and the data of the printable HTML page.

The document is always in Vietnamese (an official record); its fixed words come from the
catalogue (``mn.doc.*`` keys of ``web/static/i18n/minutes.json``), passed in as ``t``.
Layout (Nghị định 30/2020/NĐ-CP style, A4, Times New Roman 13 pt): the header as a
2-column borderless table (left: the issuing units and the number; right: the national
motto, underlined, and the place and date line in italics), the title "BIÊN BẢN" and the
meeting title, the times, place, chair and secretary, the agenda, the attendance table
(STT / Điểm cầu / Vào lúc / Rời lúc / Ghi chú), the speaking table, the text sections
(Nội dung, Kết luận) and the signature block (THƯ KÝ / CHỦ TRÌ).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from docx import Document
from docx.enum.table import WD_TABLE_ALIGNMENT
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.shared import Cm, Pt
from docx.table import Table

from conference.appkeys import SETTINGS
from conference.domain.minutes import MinutesResult, date_line
from conference.web.site import translator

__all__ = ["DOCX_TYPE", "duration_text", "to_docx"]

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
FONT = "Times New Roman"

Gettext = Callable[[str], str]


def duration_text(seconds: int) -> str:
    """``"1 phút 05 giây"`` style (Vietnamese, the document's language)."""
    minutes, rest = divmod(max(0, int(seconds)), 60)
    if minutes and rest:
        return f"{minutes} phút {rest:02d} giây"
    if minutes:
        return f"{minutes} phút"
    return f"{rest} giây"


def _paragraph(
    cell_or_doc: Any,
    text: str,
    *,
    bold: bool = False,
    italic: bool = False,
    underline: bool = False,
    size: float = 13,
    align: Any = None,
) -> Any:
    paragraph = cell_or_doc.add_paragraph()
    run = paragraph.add_run(text)
    run.bold, run.italic, run.underline = bold, italic, underline
    run.font.size = Pt(size)
    run.font.name = FONT
    if align is not None:
        paragraph.alignment = align
    paragraph.paragraph_format.space_after = Pt(2)
    return paragraph


def _no_borders(table: Table) -> None:
    """Remove every border of ``table`` (python-docx has no API for it: set tblBorders)."""
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    properties = table._tbl.tblPr
    borders = OxmlElement("w:tblBorders")
    for edge in ("top", "left", "bottom", "right", "insideH", "insideV"):
        element = OxmlElement(f"w:{edge}")
        element.set(qn("w:val"), "nil")
        borders.append(element)
    properties.append(borders)


def _grid(document: Any, header: list[str], rows: list[list[str]], widths: list[float]) -> Table:
    table = document.add_table(rows=1, cols=len(header))
    table.style = "Table Grid"
    table.alignment = WD_TABLE_ALIGNMENT.CENTER
    for cell, text in zip(table.rows[0].cells, header, strict=True):
        cell.text = ""
        run = cell.paragraphs[0].add_run(text)
        run.bold = True
        run.font.name = FONT
        cell.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.CENTER
    for values in rows:
        cells = table.add_row().cells
        for cell, text in zip(cells, values, strict=True):
            cell.text = text
    for row in table.rows:
        for cell, width in zip(row.cells, widths, strict=True):
            cell.width = Cm(width)
    return table


def to_docx(content: dict[str, Any], t: Gettext, final: bool = False) -> bytes:
    """The minutes ``content`` (:func:`conference.minutes.build_content`) as a .docx file."""
    document = Document()
    section = document.sections[0]
    section.page_height, section.page_width = Cm(29.7), Cm(21.0)
    section.left_margin, section.right_margin = Cm(3.0), Cm(2.0)
    section.top_margin, section.bottom_margin = Cm(2.0), Cm(2.0)
    style = document.styles["Normal"]
    style.font.name = FONT
    style.font.size = Pt(13)

    header = document.add_table(rows=1, cols=2)
    _no_borders(header)
    left, right = header.rows[0].cells
    left.width, right.width = Cm(6.5), Cm(9.5)
    left.paragraphs[0].text = ""
    center = WD_ALIGN_PARAGRAPH.CENTER
    if content.get("issuer_parent"):
        _paragraph(left, str(content["issuer_parent"]), size=12, align=center)
    _paragraph(left, str(content.get("issuer", "")), bold=True, size=12, align=center)
    _paragraph(left, str(content.get("number", "")), size=12, align=center)
    right.paragraphs[0].text = ""
    _paragraph(right, t("mn.doc.nation"), bold=True, size=12, align=center)
    _paragraph(right, t("mn.doc.motto"), bold=True, underline=True, align=center)
    _paragraph(right, date_line(content), italic=True, align=center)

    _paragraph(document, t("mn.doc.title"), bold=True, size=14, align=center)
    _paragraph(document, str(content.get("title", "")), bold=True, align=center)
    if not final:
        _paragraph(document, t("mn.doc.draft"), italic=True, size=11, align=center)

    def line(label: str, value: str) -> None:
        paragraph = document.add_paragraph()
        run = paragraph.add_run(f"{label}: ")
        run.bold = True
        paragraph.add_run(value)

    line(
        t("mn.doc.time"),
        t("mn.doc.time.value").format(
            start=content.get("start", ""), end=content.get("end", ""), day=content.get("day", "")
        ),
    )
    line(t("mn.doc.location"), str(content.get("location", "")))
    line(t("mn.doc.chair"), str(content.get("chair", "")))
    line(t("mn.doc.secretary"), str(content.get("secretary", "")))

    _paragraph(document, t("mn.doc.agenda"), bold=True)
    for number, item in enumerate(content.get("agenda") or [], 1):
        text = f"{number}. {item.get('title', '')}"
        if item.get("presenter"):
            text += f" ({t('mn.doc.presenter')}: {item['presenter']})"
        if item.get("spoke_at"):
            text += f" — {t('mn.doc.spoke_at')} {item['spoke_at']}"
        document.add_paragraph(text)

    rows = content.get("attendance") or []
    _paragraph(document, t("mn.doc.attendance"), bold=True)
    document.add_paragraph(
        t("mn.doc.attendance.summary").format(
            present=content.get("present_count", 0), invited=content.get("invited_count", 0)
        )
    )
    _grid(
        document,
        [t("mn.col.no"), t("mn.col.point"), t("mn.col.joined"), t("mn.col.left"), t("mn.col.note")],
        [
            [
                str(i),
                str(r.get("name", "")),
                str(r.get("joined", "")),
                str(r.get("left", "")),
                str(r.get("note", "")),
            ]
            for i, r in enumerate(rows, 1)
        ],
        [1.2, 6.0, 2.2, 2.2, 4.4],
    )

    _paragraph(document, t("mn.doc.speaking"), bold=True)
    speaking = content.get("speaking") or []
    if content.get("speaking_source") != "recording":
        document.add_paragraph(t("mn.doc.speaking.none"))
    elif not speaking:
        document.add_paragraph(t("mn.doc.speaking.empty"))
    else:
        _grid(
            document,
            [t("mn.col.no"), t("mn.col.speaker"), t("mn.col.start"), t("mn.col.duration")],
            [
                [
                    str(i),
                    str(s.get("name", "")),
                    str(s.get("start", "")),
                    duration_text(int(s.get("seconds", 0))),
                ]
                for i, s in enumerate(speaking, 1)
            ],
            [1.2, 7.8, 3.0, 4.0],
        )

    for key, field in (("mn.doc.content", "content"), ("mn.doc.conclusions", "conclusions")):
        _paragraph(document, t(key), bold=True)
        text = str(content.get(field) or "")
        for paragraph in text.split("\n") if text.strip() else ["…"]:
            document.add_paragraph(paragraph)

    signature = document.add_table(rows=1, cols=2)
    _no_borders(signature)
    for cell, (role, name) in zip(
        signature.rows[0].cells,
        (
            (t("mn.doc.sign.secretary"), str(content.get("secretary", ""))),
            (t("mn.doc.sign.chair"), str(content.get("chair", ""))),
        ),
        strict=True,
    ):
        cell.paragraphs[0].text = ""
        _paragraph(cell, role, bold=True, align=center)
        _paragraph(cell, t("mn.doc.sign.hint"), italic=True, size=11, align=center)
        for _ in range(3):
            cell.add_paragraph("")
        _paragraph(cell, name, bold=True, align=center)

    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# --- over HTTP (the minutes pages and the API) ---------------------------------------


def recordings_root(request: web.Request) -> Path:
    return Path(request.app[SETTINGS].recordings_dir)


def document_text(app: web.Application) -> Callable[[str], str]:
    """The catalogue in Vietnamese: the language of the document whatever the page's."""
    strings = translator(app, "vi")
    return lambda key: strings.get(key, key)


async def docx_response(request: web.Request, result: MinutesResult) -> web.Response:
    """The .docx download of ``result`` (made in a worker thread)."""
    data = await asyncio.to_thread(
        to_docx, result.content, document_text(request.app), result.state == "final"
    )
    return web.Response(
        body=data,
        content_type=DOCX_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="bien-ban-{result.meeting_id}.docx"',
            "Cache-Control": "no-store",
        },
    )
