"""The server's Ed25519 key for recording manifests, and signing/verifying them.

The private key is a PEM (PKCS#8) file, ``data_dir/recording.key`` unless
``recording_key`` says otherwise, created on first use with mode 0600; the
public key is exported next to it as ``<key>.pub`` (PEM) for whoever must
check recordings without access to the server's secrets.

What is signed: the manifest as canonical JSON (sorted keys, no spaces,
UTF-8) without its ``signature`` and ``minutes_final`` members.
``minutes_final`` is a retention flag that the minutes feature sets after
the recording was sealed, so it stays outside the signature.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "KEY_FILE",
    "UNSIGNED_KEYS",
    "SignatureError",
    "canonical",
    "load_or_create_key",
    "load_public_key",
    "public_key_path",
    "sign",
    "verify",
]

KEY_FILE = "recording.key"
UNSIGNED_KEYS = ("signature", "minutes_final")


class SignatureError(Exception):
    """A manifest's signature is missing, malformed or does not match."""


def public_key_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


def load_or_create_key(key_path: Path) -> Ed25519PrivateKey:
    """Read the signing key, creating it (0600) and its ``.pub`` on first use."""
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it meanwhile: read theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{key_path} is not an Ed25519 private key")
    public = public_key_path(key_path)
    pem_public = loaded.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public.exists() or public.read_bytes() != pem_public:
        tmp = public.with_name(public.name + ".tmp")
        tmp.write_bytes(pem_public)
        os.chmod(tmp, 0o644)
        os.replace(tmp, public)
    return loaded


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key (``recording.key.pub``) or the private key file itself."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
        return private.public_key()
    public = serialization.load_pem_public_key(data)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return public


def canonical(manifest: dict[str, Any]) -> bytes:
    """The signed bytes of ``manifest``."""
    body = {k: v for k, v in manifest.items() if k not in UNSIGNED_KEYS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``manifest`` with a ``signature`` member (algorithm, public key, value; base64)."""
    signature = key.sign(canonical(manifest))
    return manifest | {
        "signature": {
            "algorithm": "Ed25519",
            "public_key": base64.b64encode(_raw(key.public_key())).decode(),
            "value": base64.b64encode(signature).decode(),
        }
    }


def verify(manifest: dict[str, Any], trusted: Ed25519PublicKey | None = None) -> str:
    """Check the signature; returns which key was used.  Raises :class:`SignatureError`.

    With ``trusted`` (the server's public key) the manifest must be signed by
    it; without, the key embedded in the manifest is used, which proves only
    that the manifest was not changed after signing.
    """
    signature = manifest.get("signature")
    if not isinstance(signature, dict):
        raise SignatureError("the manifest is not signed")
    if signature.get("algorithm") != "Ed25519":
        raise SignatureError(f"unknown signature algorithm {signature.get('algorithm')!r}")
    try:
        embedded = base64.b64decode(str(signature.get("public_key")), validate=True)
        value = base64.b64decode(str(signature.get("value")), validate=True)
        public = Ed25519PublicKey.from_public_bytes(embedded)
    except ValueError as exc:
        raise SignatureError(f"malformed signature: {exc}") from None
    if trusted is not None:
        if _raw(trusted) != embedded:
            raise SignatureError("the manifest was signed by another key than this server's")
        public = trusted
    try:
        public.verify(value, canonical(manifest))
    except InvalidSignature:
        raise SignatureError("the signature does not match the manifest's content") from None
    return "server key" if trusted is not None else "embedded key"
