"""JSON from outside (API bodies, WebSocket messages), with a nesting limit.

``json.loads`` recurses once per nesting level: a body of 100,000 ``[`` raises
RecursionError, which no caller expects from a parser (the API answered 500 and a
WebSocket session died with a traceback).  :func:`loads` refuses anything nested
deeper than :data:`MAX_DEPTH` with a ValueError, like any other malformed JSON, before
``json.loads`` sees it.  Nothing the server accepts nests beyond a handful of levels.

JSON to outside: :class:`Encoded` is a message that carries its own encoding, made once
for a message that goes to every page of a room (the room state: ~50 kB at 100 points,
once per page was ~0.4 ms each, every 50 ms while points join).
"""

from __future__ import annotations

import json
import re
from typing import Any

#: the deepest nesting of arrays and objects accepted
MAX_DEPTH = 64

# brackets, and strings (whose brackets do not count)
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)``, but ValueError for a document nested deeper than
    ``max_depth`` (or not valid JSON, or bytes that are not UTF-8)."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if text.count("[") + text.count("{") > max_depth:
        depth = 0
        for match in _TOKENS.finditer(text):
            token = match.group()
            if token in "[{":
                depth += 1
                if depth > max_depth:
                    raise ValueError(f"JSON nested deeper than {max_depth} levels")
            elif token in "]}":
                depth -= 1
    return json.loads(text)


class Encoded(dict[str, Any]):
    """A message (still a dict for whoever reads it) with its JSON text, encoded once."""

    __slots__ = ("text",)

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(message)
        self.text = json.dumps(message, ensure_ascii=False)


def dumps(message: dict[str, Any]) -> str:
    """A message's JSON text (an :class:`Encoded` one's own)."""
    if isinstance(message, Encoded):
        return message.text
    return json.dumps(message, ensure_ascii=False)
