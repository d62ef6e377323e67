"""The documents that operators and client authors read say what the code does.

Like Datasette's documentation tests: every setting is in README.md's table, every
signaling message type and WebSocket close code the server uses is in
docs/PROTOCOL.md, every module over ~600 lines says at its top why it is that long.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from conference.realtime.messages import HANDLERS
from conference.settings import ENV_VARS, Settings

from .conftest import parse_python

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROTOCOL = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
MAX_LINES = 600


def quoted(text: str) -> set[str]:
    """Every `code span` and fenced block of a Markdown text, and every name inside one."""
    fences = re.findall(r"^```.*?^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", rest) + fences
    return set(spans) | {word for span in spans for word in re.findall(r"[\w-]+", span)}


def test_every_setting_and_its_variable_is_in_the_readme_table() -> None:
    table = quoted("\n".join(line for line in README.splitlines() if line.startswith("| `")))
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert len(fields) > 25
    assert sorted(fields - table) == []
    assert sorted(set(ENV_VARS) - table) == []


def sent_types() -> set[str]:
    """The ``type`` of every message the server's signaling code builds."""
    found: set[str] = set()
    for path in [
        *(ROOT / "conference" / "realtime").glob("*.py"),
        ROOT / "conference" / "sfu" / "participant.py",
        ROOT / "conference" / "sfu" / "bandwidth.py",
    ]:
        found |= set(re.findall(r'"type": "([a-z-]+)"', path.read_text(encoding="utf-8")))
    return found


def test_every_message_type_is_in_the_protocol() -> None:
    documented = quoted(PROTOCOL) | set(re.findall(r'"type": "([a-z-]+)"', PROTOCOL))
    received, sent = set(HANDLERS), sent_types()
    assert {"offer", "chat", "give-floor", "admit"} <= received
    assert {"room", "floor", "leave", "layers", "lobby-state"} <= sent
    assert sorted((received | sent) - documented) == []


def test_every_close_code_is_in_the_protocol() -> None:
    codes: set[str] = set()
    for path in (ROOT / "conference" / "realtime").glob("*.py"):
        code = "\n".join(
            line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines()
        )
        codes |= set(re.findall(r"\b(4[0-9]{3})\b", code))
    assert {"4401", "4409", "4410"} <= codes
    assert sorted(code for code in codes if code not in PROTOCOL) == []


def test_long_modules_say_why() -> None:
    unexplained = []
    for path in sorted((ROOT / "conference").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES:
            docstring = ast.get_docstring(parse_python(text)) or ""
            if "Size:" not in docstring:
                unexplained.append(str(path.relative_to(ROOT)))
    assert unexplained == []
