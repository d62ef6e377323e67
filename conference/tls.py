"""TLS for the HTTPS/WebSocket listener.

Browsers only give a page camera access over HTTPS (except on localhost), so when no
certificate is configured the server makes a self-signed one in the data directory.

A configured certificate (``tls = "files"``) is watched: :class:`CertificateReloader`
loads the files again into the listening context when either changes (a certbot
renewal), so new connections get the new certificate without a restart; connections
already open keep theirs.  A pair that does not load (the key written after the
certificate, a typo) leaves the previous one serving, and is tried again at the next
change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERT_VALIDITY",
    "RELOAD_INTERVAL",
    "REUSE_MARGIN",
    "CertificateReloader",
    "self_signed_certificate",
    "ssl_context",
]

logger = logging.getLogger(__name__)

#: seconds between two looks at the certificate files (two ``stat`` calls)
RELOAD_INTERVAL = 5.0

CERT_VALIDITY = timedelta(days=365)
#: A stored certificate is replaced when it expires within this margin.
REUSE_MARGIN = timedelta(days=7)
_ALWAYS = ("localhost", "127.0.0.1")

_Name = x509.DNSName | x509.IPAddress


def _san_entries(hostnames: list[str]) -> list[_Name]:
    """DNS names and IP addresses for the certificate; wildcard bind addresses are skipped."""
    entries: list[_Name] = []
    for raw in [*hostnames, *_ALWAYS]:
        host = raw.strip().strip("[]")
        if not host:
            continue
        entry: _Name
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            try:
                entry = x509.DNSName(host.lower().encode("idna").decode("ascii"))
            except UnicodeError:
                raise ValueError(f"invalid host name for the certificate: {raw!r}") from None
        else:
            if address.is_unspecified:
                continue
            entry = x509.IPAddress(address)
        if entry not in entries:
            entries.append(entry)
    return entries


def _reusable(cert_path: Path, key_path: Path, wanted: list[_Name], now: datetime) -> bool:
    """True if the stored pair matches, covers `wanted` and stays valid long enough."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    if cert.public_key() != key.public_key():
        return False
    if cert.not_valid_after_utc - now <= REUSE_MARGIN:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(entry in san for entry in wanted)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (no window with looser permissions)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def self_signed_certificate(directory: Path, hostnames: list[str]) -> tuple[Path, Path]:
    """Return (cert, key) paths under `directory/tls/`, generating them when needed.

    The pair is reused while it is valid for more than 7 days and names every host in
    `hostnames` (DNS names or IP addresses; "localhost" and 127.0.0.1 are always added).
    Otherwise a new EC P-256 certificate valid for one year is written; the key is 0600.
    """
    tls_dir = Path(directory) / "tls"
    cert_path, key_path = tls_dir / "self-signed.crt", tls_dir / "self-signed.key"
    wanted = _san_entries(hostnames)
    now = datetime.now(UTC)
    if _reusable(cert_path, key_path, wanted, now):
        return cert_path, key_path

    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "conference"),
            x509.NameAttribute(NameOID.COMMON_NAME, "conference self-signed"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _no_password() -> bytes:
    raise ValueError("the TLS key is encrypted; provide an unencrypted key file")


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) for `cert` and `key`; ValueError if unusable."""
    for kind, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise ValueError(f"TLS {kind} file not found: {path}")
        if not os.access(path, os.R_OK):
            raise ValueError(f"TLS {kind} file is not readable: {path}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError(f"TLS key {key} does not match certificate {cert}") from None
        raise ValueError(
            f"cannot load TLS certificate {cert} and key {key}: {exc.reason}"
        ) from None
    except OSError as exc:
        raise ValueError(
            f"cannot read TLS certificate {cert} or key {key}: {exc.strerror}"
        ) from None
    return context


def _expiry(cert: Path) -> str:
    try:
        loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError):
        return "?"
    return f"{loaded.not_valid_after_utc:%Y-%m-%d}"


class CertificateReloader:
    """Load ``cert`` and ``key`` again into ``context`` when either file changes."""

    def __init__(
        self, context: ssl.SSLContext, cert: Path, key: Path, interval: float = RELOAD_INTERVAL
    ) -> None:
        self.context = context
        self.cert = Path(cert)
        self.key = Path(key)
        self.interval = interval
        self._seen = self._stamp()

    def _stamp(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            found = [os.stat(path) for path in (self.cert, self.key)]
        except OSError:
            return None  # being replaced: look again next time
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in found)

    def check(self) -> bool:
        """Reload if the files changed since the last look; True if reloaded."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            ssl_context(self.cert, self.key)  # a pair that loads: only then the live one
            self.context.load_cert_chain(self.cert, self.key, password=_no_password)
        except (ValueError, ssl.SSLError, OSError) as exc:
            logger.warning(
                "TLS certificate %s changed but was not loaded (%s): the previous one "
                "still serves; it is tried again at the next change",
                self.cert,
                exc,
            )
            return False
        logger.info(
            "TLS certificate reloaded from %s (valid until %s)", self.cert, _expiry(self.cert)
        )
        return True

    async def run(self) -> None:
        """Look every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.check()
