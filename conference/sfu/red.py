"""RED (RFC 2198): redundant audio, so that one lost packet costs no sound.

A RED packet carries the current Opus frame (the *primary* block) and copies
of the previous ones (*redundant* blocks, each with its timestamp offset)::

    header per redundant block:  F=1 | block PT (7) | ts offset (14) | length (10)
    header of the primary block: F=0 | block PT (7)
    then the blocks' data, redundant ones first, the primary last

Browsers send it for Opus when ``red/48000/2`` is their first audio codec
(libwebrtc: one redundant block, the previous frame).  The SFU works on plain
Opus inside, and uses RED at its two edges:

* from a publisher, :func:`parse` gives the blocks: the primary is forwarded
  as the Opus packet it is, and a redundant block fills the hole a lost
  packet left (it has that packet's frame and timestamp);
* to a subscriber that supports it, :func:`build` wraps each Opus frame with
  the one before it, once per packet of the publication (every such
  subscriber gets the same payload).  Subscribers without RED (WHEP players,
  Python clients, the recorder) get plain Opus.

Nothing here raises on malformed input from the network: :func:`parse`
returns None for anything that is not a well-formed RED payload.
"""

from __future__ import annotations

#: a redundant block's timestamp offset and length have 14 and 10 bits
MAX_OFFSET = (1 << 14) - 1
MAX_LENGTH = (1 << 10) - 1


def parse(payload: bytes) -> tuple[int, list[tuple[int, int, bytes]], bytes] | None:
    """(primary block PT, [(PT, timestamp offset, data) of each redundant
    block, oldest first], primary data), or None if ``payload`` is not RED."""
    headers: list[tuple[int, int, int]] = []
    pos = 0
    size = len(payload)
    while True:
        if pos >= size:
            return None
        first = payload[pos]
        if not first & 0x80:  # the primary block's one-byte header
            primary_pt = first & 0x7F
            pos += 1
            break
        if pos + 4 > size:
            return None
        word = int.from_bytes(payload[pos : pos + 4], "big")
        headers.append(((word >> 24) & 0x7F, (word >> 10) & MAX_OFFSET, word & MAX_LENGTH))
        pos += 4
    blocks: list[tuple[int, int, bytes]] = []
    for pt, offset, length in headers:
        if pos + length > size:
            return None
        blocks.append((pt, offset, payload[pos : pos + length]))
        pos += length
    return primary_pt, blocks, payload[pos:]


def build(pt: int, primary: bytes, previous: tuple[int, bytes] | None = None) -> bytes:
    """A RED payload: ``primary`` (block PT ``pt``), after ``previous``
    (timestamp offset, data) if it fits a redundant block's fields."""
    if previous is not None:
        offset, data = previous
        if 0 < offset <= MAX_OFFSET and 0 < len(data) <= MAX_LENGTH:
            header = (0x80 | pt) << 24 | offset << 10 | len(data)
            return header.to_bytes(4, "big") + bytes((pt,)) + data + primary
    return bytes((pt,)) + primary
