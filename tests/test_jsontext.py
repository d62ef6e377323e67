"""JSON from outside with a nesting limit (conference/core/jsontext.py)."""

from __future__ import annotations

import json

import pytest

from conference.core import jsontext
from conference.core.jsontext import MAX_DEPTH, loads


def test_loads_is_json_loads_for_what_the_server_accepts():
    for text in ('{"type": "join", "version": 1}', "[1, [2, [3]]]", '"[{"', "null", '{"a": "]]]"}'):
        assert loads(text) == json.loads(text)
    assert loads(b'{"x": "\\u0111"}') == {"x": "đ"}
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(nested) == json.loads(nested)  # exactly the limit: accepted


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # json.loads: RecursionError
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        '{"a": ' + '{"b": ' * MAX_DEPTH + "1" + "}" * (MAX_DEPTH + 1),
    ],
)
def test_loads_refuses_deep_nesting_with_a_value_error(text):
    with pytest.raises(ValueError, match="nested deeper"):
        loads(text)


def test_brackets_inside_strings_do_not_count():
    text = '["' + "[" * 1000 + '\\"{"]'
    assert loads(text) == ["[" * 1000 + '"{']


def test_malformed_input_is_a_value_error():
    for text in ("{not json", "", b"\xff\xfe", '["unterminated' + "[" * 100):
        with pytest.raises(ValueError):
            loads(text)


def test_an_encoded_message_is_encoded_once_and_still_a_dict() -> None:
    message = {"type": "room", "participants": [{"name": "UBND xã Đắk Ha"}]}
    encoded = jsontext.Encoded(message)
    assert encoded == message and encoded["type"] == "room"
    assert jsontext.dumps(encoded) is encoded.text
    assert json.loads(encoded.text) == message
    assert "Đắk" in encoded.text  # UTF-8 as the socket sends it, not \\u escapes
    assert jsontext.dumps(message) == encoded.text
