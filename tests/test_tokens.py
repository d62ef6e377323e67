"""Tests for conference.tokens: creation, verification, forged tokens, revocation, TTLs."""

from __future__ import annotations

import base64
import json
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conference.core.identity import (
    Identity,
    identity_key,
    legacy_kind,
    normal_key,
    shown_identity,
    split_identity,
)
from conference.tokens import (
    ROLES,
    Claims,
    Grants,
    RevocationList,
    TokenError,
    create_token,
    parse_ttl,
    verify_token,
)

SECRET = "k" * 64  # long enough for HS512 too, so PyJWT emits no key-length warning
OTHER_SECRET = "z" * 64
NOW = datetime(2025, 6, 2, 7, 30, tzinfo=UTC)
VIETNAMESE = "UBND xã Tân Lập – Điểm cầu số 3 (Chủ tịch Nguyễn Văn Đạt)"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def make(**kwargs: Any) -> str:
    args: dict[str, Any] = {
        "meeting": "giao-ban-2025-06",
        "identity": "xa-tan-lap",
        "name": VIETNAMESE,
        "role": "point",
    }
    args.update(kwargs)
    return create_token(SECRET, **args)


def valid_payload(**changes: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    payload: dict[str, Any] = {
        "iss": "conference",
        "sub": "xa-tan-lap",
        "name": "Điểm cầu",
        "meeting": "m1",
        "role": "point",
        "grants": {"publish": True, "subscribe": True, "moderate": False, "record": False},
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "0123456789abcdef",
    }
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def rejected(token: str, code: str, *, meeting: str | None = None) -> TokenError:
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, token, meeting=meeting)
    error = caught.value
    assert error.code == code, error.message
    if len(token) > 20:
        assert token not in str(error) and token[-20:] not in str(error)
    assert "\n" not in error.message
    return error


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_keeps_vietnamese_name() -> None:
    token = make(ttl=timedelta(hours=2), now=NOW, not_before=NOW)
    header, payload, _ = segments(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert payload["iss"] == "conference"
    assert payload["name"] == VIETNAMESE
    assert payload["grants"] == {
        "publish": True,
        "subscribe": True,
        "moderate": False,
        "record": False,
    }
    assert payload["iat"] == payload["nbf"] == int(NOW.timestamp())
    assert payload["exp"] == int((NOW + timedelta(hours=2)).timestamp())
    assert len(payload["jti"]) == 32 and int(payload["jti"], 16) >= 0

    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["name"] == VIETNAMESE


def test_verify_returns_claims() -> None:
    token = make(role="chair")
    claims = verify_token(SECRET, token, meeting="giao-ban-2025-06")
    assert isinstance(claims, Claims)
    assert claims.identity == "xa-tan-lap"  # the sub as signed
    assert claims.key == "u:xa-tan-lap"  # a bare sub: the kind of its role
    assert (claims.kind, claims.subject, claims.bare) == ("account", "xa-tan-lap", True)
    assert claims.name == VIETNAMESE
    assert claims.meeting == "giao-ban-2025-06"
    assert claims.role == "chair"
    assert claims.grants == Grants(publish=True, subscribe=True, moderate=True, record=False)
    assert claims.expires_at - claims.not_before == timedelta(hours=3)
    assert claims.expires_at.tzinfo is UTC
    assert claims.token_id == segments(token)[1]["jti"]
    assert claims.to_dict()["name"] == VIETNAMESE
    assert verify_token(SECRET, token).meeting == "giao-ban-2025-06"  # meeting check optional


def test_name_is_normalized_to_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "  Xã Tân Lập  ")
    assert decomposed.strip() != "Xã Tân Lập"
    assert verify_token(SECRET, make(name=decomposed)).name == "Xã Tân Lập"


def test_every_token_has_its_own_id() -> None:
    assert verify_token(SECRET, make()).token_id != verify_token(SECRET, make()).token_id


def test_explicit_grants() -> None:
    grants = Grants(publish=False, subscribe=True, moderate=False, record=False)
    assert verify_token(SECRET, make(role="point", grants=grants)).grants == grants


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("chair", (True, True, True, False)),
        ("point", (True, True, False, False)),
        ("viewer", (False, True, False, False)),
        ("recorder", (False, True, False, True)),
    ],
)
def test_grants_for_role(role: str, expected: tuple[bool, bool, bool, bool]) -> None:
    grants = Grants.for_role(role)
    assert (grants.publish, grants.subscribe, grants.moderate, grants.record) == expected
    assert role in ROLES


def test_grants_for_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown role 'admin'"):
        Grants.for_role("admin")


# --- creation errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"meeting": ""}, "meeting must not be empty"),
        ({"meeting": "họp giao ban"}, "meeting must be 1-128 characters from A-Z a-z 0-9"),
        ({"meeting": "m" * 129}, "meeting must be 1-128 characters"),
        ({"identity": ""}, "identity must not be empty"),
        ({"identity": "a/b"}, "identity must be 1-128 characters"),
        ({"name": "   "}, "name must not be empty"),
        ({"name": "x" * 201}, "name must be at most 200 characters"),
        ({"name": "Xã\nTân Lập"}, "name must not contain control characters"),
        ({"role": "admin"}, "unknown role 'admin'"),
        ({"ttl": timedelta(0)}, "ttl must be positive"),
        ({"ttl": timedelta(days=7, seconds=1)}, "ttl must be at most 7 days"),
        ({"now": datetime(2025, 1, 1)}, "now must be a timezone-aware datetime"),
        (
            {"now": NOW, "not_before": NOW + timedelta(hours=4)},
            "not_before must be earlier than the expiry",
        ),
    ],
)
def test_create_token_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        make(**changes)
    assert message in str(caught.value)


def test_create_token_accepts_limits() -> None:
    verify_token(SECRET, make(meeting="m" * 128, identity="a.b_c~d-9", ttl=timedelta(days=7)))
    verify_token(SECRET, make(name="x" * 200))


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="token secret must be at least 32 bytes"):
        create_token("short", meeting="m", identity="i", name="n", role="point")
    with pytest.raises(ValueError, match="token secret must be at least 32 bytes"):
        verify_token("short", make())


# --- forged and invalid tokens -----------------------------------------------------------------


def test_alg_none_token_is_rejected() -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(valid_payload(role="chair")).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.{b64(b'x')}"):
        error = rejected(token, "bad-signature")
        assert error.message == "token algorithm is not accepted"


def test_header_without_alg_is_rejected() -> None:
    payload = b64(json.dumps(valid_payload()).encode())
    rejected(f"{b64(b'{}')}.{payload}.{b64(b'sig')}", "bad-signature")


def test_other_hmac_algorithm_is_rejected() -> None:
    token = jwt.encode(valid_payload(), SECRET, algorithm="HS512")
    assert rejected(token, "bad-signature").message == "token algorithm is not accepted"


def test_asymmetric_algorithm_is_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = jwt.encode(valid_payload(), pem, algorithm="ES256")
    rejected(token, "bad-signature")


def test_wrong_key_is_rejected() -> None:
    token = create_token(OTHER_SECRET, meeting="m1", identity="x", name="n", role="chair")
    assert rejected(token, "bad-signature").message == "token signature is invalid"


def test_tampered_payload_is_rejected() -> None:
    token = make(role="viewer")
    header, _, signature = token.split(".")
    claims = segments(token)[1]
    claims["role"] = "chair"
    claims["grants"]["moderate"] = True
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    rejected(forged, "bad-signature")


def test_tampered_signature_is_rejected() -> None:
    token = make()
    last = "A" if token[-2] != "A" else "B"
    rejected(token[:-2] + last + token[-1], "bad-signature")


def test_expired_token() -> None:
    token = make(now=datetime.now(UTC) - timedelta(hours=4), ttl=timedelta(hours=3))
    assert rejected(token, "expired").message == "token has expired"


def test_leeway_absorbs_clock_skew() -> None:
    token = make(now=datetime.now(UTC) - timedelta(seconds=65), ttl=timedelta(seconds=60))
    assert verify_token(SECRET, token).subject == "xa-tan-lap"  # default leeway 10 s
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, token, leeway=0)
    assert caught.value.code == "expired"


def test_not_yet_valid_token() -> None:
    now = datetime.now(UTC)
    token = make(now=now, not_before=now + timedelta(minutes=30))
    assert rejected(token, "not-yet-valid").message == "token is not valid yet"


def test_wrong_meeting() -> None:
    error = rejected(make(), "wrong-meeting", meeting="another-meeting")
    assert error.message == "token is for another meeting"
    assert str(error) == "token is for another meeting (wrong-meeting)"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"jti": None}, "token lacks the 'jti' claim"),
        ({"exp": None}, "token lacks the 'exp' claim"),
        ({"nbf": None}, "token lacks the 'nbf' claim"),
        ({"sub": None}, "token lacks the 'sub' claim"),
        ({"iss": None}, "token lacks the 'iss' claim"),
        ({"iss": "someone-else"}, "token issuer is not accepted"),
        ({"role": None}, "token claim 'role' is missing or invalid"),
        ({"role": "admin"}, "token claim 'role' is missing or invalid"),
        ({"meeting": None}, "token claim 'meeting' is missing or invalid"),
        ({"meeting": ["m1"]}, "token claim 'meeting' is missing or invalid"),
        ({"name": 42}, "token claim 'name' is missing or invalid"),
        ({"grants": None}, "token claim 'grants' is missing or invalid"),
        ({"grants": {"publish": "yes"}}, "token claim 'grants' is missing or invalid"),
        ({"sub": 7}, "token claims are invalid"),
        ({"exp": "tomorrow"}, "token claims are invalid"),
    ],
)
def test_invalid_claims(changes: dict[str, Any], message: str) -> None:
    token = jwt.encode(valid_payload(**changes), SECRET, algorithm="HS256")
    assert rejected(token, "invalid-claims").message == message


def test_signed_payload_that_is_not_an_object() -> None:
    token = jwt.api_jws.encode(b"[1, 2, 3]", SECRET, algorithm="HS256")
    rejected(token, "invalid-claims")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "%%%.###.!!!",
        b64(b"[1]") + ".e30.sig",  # header is not an object
        b64(b'{"alg": "HS256"') + ".e30.sig",  # header is not JSON
    ],
)
def test_malformed_tokens(token: str) -> None:
    error = rejected(token, "malformed")
    assert error.message in ("token is not a JWT", "token is not a valid JWT")


# --- revocation --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def test_revocation_list() -> None:
    clock = FakeClock(NOW)
    revoked = RevocationList(clock=clock)
    assert not revoked.is_revoked("a")
    revoked.revoke("a", NOW + timedelta(minutes=5))
    revoked.revoke("b", NOW + timedelta(hours=1))
    assert revoked.is_revoked("a") and revoked.is_revoked("b") and not revoked.is_revoked("c")
    assert len(revoked) == 2

    clock.now = NOW + timedelta(minutes=5, seconds=5)  # expired, but within the leeway
    assert revoked.is_revoked("a")
    clock.now = NOW + timedelta(minutes=5, seconds=11)
    assert not revoked.is_revoked("a")  # pruned: the token is rejected as expired anyway
    assert revoked.is_revoked("b")
    assert len(revoked) == 1


def test_revocation_keeps_latest_expiry() -> None:
    clock = FakeClock(NOW)
    revoked = RevocationList(clock=clock, leeway=timedelta(0))
    revoked.revoke("a", NOW + timedelta(minutes=1))
    revoked.revoke("a", NOW + timedelta(minutes=10))
    revoked.revoke("a", NOW + timedelta(minutes=2))
    clock.now = NOW + timedelta(minutes=5)
    assert revoked.is_revoked("a")
    clock.now = NOW + timedelta(minutes=11)
    assert not revoked.is_revoked("a")
    assert len(revoked) == 0


def test_revoked_token_flow() -> None:
    """How the server uses it: a removed participant cannot rejoin with the same token."""
    revoked = RevocationList()
    claims = verify_token(SECRET, make())
    revoked.revoke(claims.token_id, claims.expires_at)
    assert revoked.is_revoked(verify_token(SECRET, make()).token_id) is False
    assert revoked.is_revoked(claims.token_id) is True


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3h", timedelta(hours=3)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (" 2H ", timedelta(hours=2)),
    ],
)
def test_parse_ttl(text: str, expected: timedelta) -> None:
    assert parse_ttl(text) == expected


@pytest.mark.parametrize("text", ["", "3", "h", "3x", "30m1h", "-1h", "1.5h", "0h", "0m0s"])
def test_parse_ttl_errors(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_ttl(text)


def test_parse_ttl_too_large() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_ttl("999999999999d")


# --- identity kinds (issue 14, item 3) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "sub"),
    [("point", "pt:xa-a"), ("account", "u:xa-a"), ("guest", "g:xa-a"), ("token", "t:xa-a")],
)
def test_the_kind_is_in_the_sub(kind: str, sub: str) -> None:
    for role in ROLES:  # whatever the role: the kind is who it is, the role what it may do
        token = make(identity="xa-a", kind=kind, role=role)
        assert segments(token)[1]["sub"] == sub
        claims = verify_token(SECRET, token)
        assert (claims.identity, claims.key, claims.kind, claims.subject) == (
            sub,
            sub,
            kind,
            "xa-a",
        )
        assert not claims.bare
        data = claims.to_dict()
        assert (data["identity"], data["key"], data["kind"], data["subject"]) == (
            sub,
            sub,
            kind,
            "xa-a",
        )


def test_a_key_as_identity_keeps_its_kind() -> None:
    token = make(identity="pt:xa-a", role="viewer")
    assert segments(token)[1]["sub"] == "pt:xa-a"
    assert verify_token(SECRET, token).kind == "point"


@pytest.mark.parametrize(
    ("role", "identity", "kind"),
    [
        ("point", "pt:chair-a", "point"),
        ("chair", "u:chair-a", "account"),
        ("viewer", "u:chair-a", "account"),
        ("recorder", "t:chair-a", "token"),
    ],
)
def test_tokens_issued_before_kinds_are_read_by_their_role(
    role: str, identity: str, kind: str
) -> None:
    """An invitation link e-mailed before identity kinds has a bare sub: still valid, its
    kind is what its role meant (a point's link names a point, the chair's an account)."""
    token = jwt.encode(valid_payload(sub="chair-a", role=role), SECRET, algorithm="HS256")
    claims = verify_token(SECRET, token)
    assert (claims.key, claims.kind, claims.subject) == (identity, kind, "chair-a")
    assert claims.identity == "chair-a" and claims.bare


def test_a_point_and_an_account_of_one_name_are_two_identities() -> None:
    point = verify_token(SECRET, make(identity="chair-a", role="point"))
    account = verify_token(SECRET, make(identity="chair-a", role="chair"))
    new_point = verify_token(SECRET, make(identity="chair-a", kind="point", role="point"))
    new_account = verify_token(SECRET, make(identity="chair-a", kind="account", role="chair"))
    assert point.key == new_point.key != account.key == new_account.key
    # a point's token with the chair's role is still the point, not the account
    forged = verify_token(SECRET, make(identity="chair-a", kind="point", role="chair"))
    assert forged.key == "pt:chair-a" and forged.kind == "point"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "admin"}, "unknown identity kind 'admin'"),
        ({"kind": "point", "identity": "pt:xa-a"}, "identity must be 1-128 characters"),
        ({"identity": "pt:"}, "identity must not be empty"),
        ({"identity": "x:xa-a"}, "identity must be 1-128 characters"),
        ({"identity": "pt:pt:xa-a"}, "identity must be 1-128 characters"),
    ],
)
def test_kind_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**changes)


@pytest.mark.parametrize(
    "sub", ["x:xa-a", "pt:", ":xa-a", "pt:xa:a", "PT:xa-a", "pt:" + "a" * 129, "u:xã"]
)
def test_a_sub_with_a_bad_kind_is_refused(sub: str) -> None:
    token = jwt.encode(valid_payload(sub=sub), SECRET, algorithm="HS256")
    assert rejected(token, "invalid-claims").message == "token claim 'sub' is missing or invalid"


def test_identity_keys() -> None:
    assert identity_key("point", "xa-a") == "pt:xa-a"
    assert identity_key("account", "chair-a") == "u:chair-a"
    with pytest.raises(ValueError):
        identity_key("admin", "x")
    assert split_identity("pt:xa-a") == ("point", "xa-a")
    assert split_identity("g:khach") == ("guest", "khach")
    assert split_identity("t:loadtest") == ("token", "loadtest")
    assert split_identity("xa-a") == (None, "xa-a")  # bare: a manifest of before kinds
    assert split_identity("zz:xa-a") == (None, "zz:xa-a")
    assert [legacy_kind(role) for role in ROLES] == ["account", "point", "account", "token"]
    assert normal_key("xa-a", "point") == "pt:xa-a"
    assert normal_key("u:xa-a", "point") == "u:xa-a"  # a key keeps its kind
    assert shown_identity("pt:xa-a") == shown_identity("xa-a") == "xa-a"
    who = Identity(identity="pt:chair-a", name="UBND", role="chair")
    assert (who.kind, who.subject) == ("point", "chair-a")
    bare = Identity(identity="chair-a", name="Chủ tịch", role="chair")
    assert (bare.kind, bare.subject) == ("account", "chair-a")
