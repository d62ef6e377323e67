"""Tests for conference.tls: self-signed certificates, server contexts, a real handshake."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conference.tls import RELOAD_INTERVAL, self_signed_certificate, ssl_context

from .conftest import check_clean_exit, start_server


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return dns, ips


def test_generates_certificate(tmp_path: Path) -> None:
    cert_path, key_path = self_signed_certificate(
        tmp_path, ["hop.example.vn", "192.0.2.10", "::1", "0.0.0.0", "Localhost"]
    )
    assert cert_path == tmp_path / "tls" / "self-signed.crt"
    assert key_path == tmp_path / "tls" / "self-signed.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700

    cert = load_cert(cert_path)
    dns, ips = san(cert)
    assert dns == ["hop.example.vn", "localhost"]  # deduplicated, lower case
    assert ips == ["192.0.2.10", "::1", "127.0.0.1"]  # 0.0.0.0 (bind-all) is skipped
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=364) < lifetime <= timedelta(days=365)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == public_key


def test_reuses_valid_certificate(tmp_path: Path) -> None:
    cert_path, key_path = self_signed_certificate(tmp_path, ["hop.example.vn"])
    cert_bytes, key_bytes = cert_path.read_bytes(), key_path.read_bytes()
    assert self_signed_certificate(tmp_path, ["hop.example.vn"]) == (cert_path, key_path)
    assert self_signed_certificate(tmp_path, []) == (cert_path, key_path)  # subset of names
    assert cert_path.read_bytes() == cert_bytes
    assert key_path.read_bytes() == key_bytes


def test_regenerates_for_new_host_name(tmp_path: Path) -> None:
    cert_path, _ = self_signed_certificate(tmp_path, ["hop.example.vn"])
    before = cert_path.read_bytes()
    self_signed_certificate(tmp_path, ["hop.example.vn", "10.1.2.3"])
    assert cert_path.read_bytes() != before
    assert "10.1.2.3" in san(load_cert(cert_path))[1]


def write_short_lived(cert_path: Path, key_path: Path, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=300))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_regenerates_certificate_close_to_expiry(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "tls" / "self-signed.crt", tmp_path / "tls" / "self-signed.key"
    write_short_lived(cert_path, key_path, days=30)
    self_signed_certificate(tmp_path, [])
    assert load_cert(cert_path).serial_number == 1  # 30 days left: reused

    write_short_lived(cert_path, key_path, days=3)
    self_signed_certificate(tmp_path, [])
    cert = load_cert(cert_path)
    assert cert.serial_number != 1
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=364)


def test_regenerates_damaged_files(tmp_path: Path) -> None:
    cert_path, key_path = self_signed_certificate(tmp_path, [])
    key_path.write_text("garbage")
    self_signed_certificate(tmp_path, [])
    ssl_context(cert_path, key_path)  # a matching pair again

    other_cert, other_key = self_signed_certificate(tmp_path / "other", [])
    key_path.write_bytes(other_key.read_bytes())  # key of another certificate
    self_signed_certificate(tmp_path, [])
    ssl_context(cert_path, key_path)


def test_rejects_bad_host_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid host name for the certificate"):
        self_signed_certificate(tmp_path, ["a" * 70 + ".example.vn"])


def test_ssl_context(tmp_path: Path) -> None:
    context = ssl_context(*self_signed_certificate(tmp_path, []))
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_ssl_context_errors(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "a", [])
    other_cert, other_key = self_signed_certificate(tmp_path / "b", [])

    with pytest.raises(ValueError, match=r"^TLS certificate file not found: .*missing\.crt$"):
        ssl_context(tmp_path / "missing.crt", key)
    with pytest.raises(ValueError, match=r"^TLS key file not found: .*missing\.key$"):
        ssl_context(cert, tmp_path / "missing.key")
    with pytest.raises(ValueError, match=r"^TLS key .* does not match certificate "):
        ssl_context(cert, other_key)

    garbage = tmp_path / "garbage.crt"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match=r"^cannot load TLS certificate .*garbage\.crt"):
        ssl_context(garbage, key)

    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="the TLS key is encrypted"):
        ssl_context(cert, encrypted)


async def test_tls_handshake(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, ["hop.example.vn"])
    server_context = ssl_context(cert, key)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"xin chao " + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert))
    try:
        for hostname in ("localhost", "127.0.0.1", "hop.example.vn"):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context, server_hostname=hostname
                ),
                timeout=10,
            )
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.read(), timeout=10) == b"xin chao ping\n"
            writer.close()

        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context, server_hostname="evil.example.com"
                ),
                timeout=10,
            )
    finally:
        server.close()
        await server.wait_closed()


async def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to 127.0.0.1:``port`` gets."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


def der(path: Path) -> bytes:
    return load_cert(path).public_bytes(serialization.Encoding.DER)


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    """Issue 15 item 2: ``tls = "files"``; certbot renews the files (certificate first,
    then the key): new connections get the new certificate within a few seconds, and the
    moment between the two writes (a mismatched pair) leaves the old one serving."""
    old_cert, old_key = self_signed_certificate(tmp_path / "old", ["hop.example.vn"])
    new_cert, new_key = self_signed_certificate(tmp_path / "new", ["hop.example.vn"])
    live = tmp_path / "letsencrypt"
    live.mkdir()
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    server = start_server(
        tmp_path, "--tls", "files", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        assert await served_certificate(server.port) == der(old_cert)
        assert "self-signed certificate" not in server.log()

        shutil.copy(new_cert, cert)  # the renewal, half done: the new certificate, the old key
        await asyncio.sleep(RELOAD_INTERVAL + 2)
        assert await served_certificate(server.port) == der(old_cert)
        assert "was not loaded" in server.log()

        shutil.copy(new_key, key)
        deadline = time.monotonic() + RELOAD_INTERVAL + 5
        while await served_certificate(server.port) != der(new_cert):
            assert time.monotonic() < deadline, server.log()[-2000:]
            await asyncio.sleep(0.5)
        assert "TLS certificate reloaded" in server.log()
    finally:
        check_clean_exit(server)


def test_the_self_signed_default_says_it_is_for_trying_out(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--tls", "self-signed")
    try:
        assert "It is for trying the server out" in server.log()
    finally:
        check_clean_exit(server)
