"""QR codes as inline SVG, made here (segno, pure Python): no external service, no script.

Used by the points' printable QR sheet (conference/web/pages/links.py): a district office
prints one card per point, and the commune's clerk opens its link by pointing a phone at it.
Error correction level M (15 % of the code may be smudged or folded); a join link of about
400 characters gives a version 15 code, 85 modules with the quiet zone, about 0.6 mm a
module at the printed 50 mm, which any phone camera reads.
"""

from __future__ import annotations

from markupsafe import Markup

__all__ = ["qr_svg"]


def qr_svg(text: str) -> Markup:
    """``text`` as an ``<svg>`` element (no size of its own: the page's CSS sizes it),
    black on white with the 4-module quiet zone the standard asks for."""
    import segno  # here, not at start-up: with xml.sax it costs every server start ~50 ms

    code = segno.make(text, error="m", micro=False, boost_error=False)
    svg = code.svg_inline(
        omitsize=True, border=4, dark="#000", light="#fff", svgclass="qr-code", lineclass=None
    )
    return Markup(svg)  # segno's own markup: ``text`` is encoded in the path, never quoted
