"""DTLS 1.2 through the system's OpenSSL 3 (``libssl.so.3``), by ctypes.

Why: FFmpeg's WHIP muxer, with its default options, makes an ECDSA **P-224**
self-signed certificate for its DTLS (the GnuTLS backend of PyAV's and most
distributions' FFmpeg).  In (D)TLS 1.2 OpenSSL accepts a peer's ECDSA key only
on a curve of its own groups list, and the OpenSSL bundled in ``cryptography``
(which aiortc's DTLS uses, through pyOpenSSL) no longer offers P-224 as a group
at all.  The system's OpenSSL 3.0 still does: with P-224 in the groups list the
handshake completes when this side is the DTLS client (FFmpeg's default).  As DTLS
server, OpenSSL also wants the client's curve among the groups the *client*
offered, and FFmpeg's GnuTLS offers no P-224: ``whip_flags=dtls_active`` still
needs a P-256 certificate (tests/test_ffmpeg_whip.py pins it).

This module is the part of pyOpenSSL's ``SSL.Context`` / ``SSL.Connection`` API
that aiortc's ``RTCDtlsTransport`` uses, over memory BIOs, on that library:

* :class:`Context`: ``set_options``, ``set_verify`` (every peer certificate is
  accepted: WebRTC authenticates the peer by the fingerprint in the SDP, which
  the caller checks after the handshake), ``use_certificate`` and
  ``use_privatekey`` (``cryptography`` objects, handed over as DER),
  ``set_cipher_list``, ``set_tlsext_use_srtp``, and ``set_groups`` (the reason
  for all this; :data:`GROUPS` by default);
* :class:`Connection`: ``set_accept_state``/``set_connect_state``,
  ``do_handshake``, ``bio_read``/``bio_write``, ``recv``/``send``,
  ``get_peer_certificate(as_cryptography=True)``, ``get_selected_srtp_profile``,
  ``export_keying_material``, ``DTLSv1_get_timeout``/``DTLSv1_handle_timeout``,
  ``shutdown``.

Errors are pyOpenSSL's own exception classes (``WantReadError``,
``ZeroReturnError``, ``SysCallError``, ``Error``), so code written for pyOpenSSL
catches them unchanged.  Every OpenSSL object is freed when its Python object
goes (``weakref.finalize``), every return value is checked, and OpenSSL's
per-thread error queue is left empty after every call (Python's ``ssl`` module
shares it: it is the same library).

:func:`load` returns ``None`` (and says why in :func:`unavailable_reason`) where
the library cannot be loaded, is not OpenSSL 3, lacks a function used here, or
cannot offer the groups: the caller keeps its stock DTLS then.

No import of aiortc here: ``conference/sfu/bridge.py`` wires it in.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL.SSL import (
    DTLS_METHOD,
    Error,
    SysCallError,
    WantReadError,
    WantWriteError,
    ZeroReturnError,
)

__all__ = [
    "DTLS_METHOD",
    "GROUPS",
    "OP_NO_TICKET",
    "VERIFY_FAIL_IF_NO_PEER_CERT",
    "VERIFY_PEER",
    "Connection",
    "Context",
    "Error",
    "Library",
    "SysCallError",
    "WantReadError",
    "WantWriteError",
    "ZeroReturnError",
    "load",
    "unavailable_reason",
]

#: ECDHE groups offered, and the curves a peer's ECDSA key may use: the usual ones
#: first (the key exchange takes the first both sides have), P-224 last, for
#: FFmpeg's certificate
GROUPS = b"X25519:P-256:P-384:P-521:P-224"

OP_NO_TICKET = 0x00004000
VERIFY_PEER = 0x01
VERIFY_FAIL_IF_NO_PEER_CERT = 0x02

# OpenSSL 3 constants (ssl.h, bio.h)
_SSL_CTRL_MODE = 33
_DTLS_CTRL_GET_TIMEOUT = 73
_DTLS_CTRL_HANDLE_TIMEOUT = 74
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1
_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x2
_SSL_MODE_AUTO_RETRY = 0x4
_SSL_ERROR_NONE = 0
_SSL_ERROR_SSL = 1
_SSL_ERROR_WANT_READ = 2
_SSL_ERROR_WANT_WRITE = 3
_SSL_ERROR_SYSCALL = 5
_SSL_ERROR_ZERO_RETURN = 6
_BIO_FLAGS_READ = 0x01
_BIO_FLAGS_WRITE = 0x02
_BIO_FLAGS_SHOULD_RETRY = 0x08

_P = ctypes.c_void_p
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class _SrtpProfile(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("id", ctypes.c_ulong)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


# name: (library, result type, argument types)
_FUNCTIONS: dict[str, tuple[str, Any, list[Any]]] = {
    "OpenSSL_version_num": ("crypto", ctypes.c_ulong, []),
    "OpenSSL_version": ("crypto", ctypes.c_char_p, [ctypes.c_int]),
    "ERR_get_error": ("crypto", ctypes.c_ulong, []),
    "ERR_clear_error": ("crypto", None, []),
    "ERR_peek_error": ("crypto", ctypes.c_ulong, []),
    "ERR_error_string_n": ("crypto", None, [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t]),
    "BIO_s_mem": ("crypto", _P, []),
    "BIO_new": ("crypto", _P, [_P]),
    "BIO_free": ("crypto", ctypes.c_int, [_P]),
    "BIO_read": ("crypto", ctypes.c_int, [_P, _P, ctypes.c_int]),
    "BIO_write": ("crypto", ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_int]),
    "BIO_test_flags": ("crypto", ctypes.c_int, [_P, ctypes.c_int]),
    "d2i_AutoPrivateKey": ("crypto", _P, [_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
    "EVP_PKEY_free": ("crypto", None, [_P]),
    "i2d_X509": ("crypto", ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_void_p)]),
    "X509_free": ("crypto", None, [_P]),
    "DTLS_method": ("ssl", _P, []),
    "SSL_CTX_new": ("ssl", _P, [_P]),
    "SSL_CTX_free": ("ssl", None, [_P]),
    "SSL_CTX_ctrl": ("ssl", ctypes.c_long, [_P, ctypes.c_int, ctypes.c_long, _P]),
    "SSL_CTX_set_options": ("ssl", ctypes.c_uint64, [_P, ctypes.c_uint64]),
    "SSL_CTX_set_verify": ("ssl", None, [_P, ctypes.c_int, _VERIFY_CALLBACK]),
    "SSL_CTX_use_certificate_ASN1": ("ssl", ctypes.c_int, [_P, ctypes.c_int, ctypes.c_char_p]),
    "SSL_CTX_use_PrivateKey": ("ssl", ctypes.c_int, [_P, _P]),
    "SSL_CTX_set_cipher_list": ("ssl", ctypes.c_int, [_P, ctypes.c_char_p]),
    "SSL_CTX_set_tlsext_use_srtp": ("ssl", ctypes.c_int, [_P, ctypes.c_char_p]),
    "SSL_new": ("ssl", _P, [_P]),
    "SSL_free": ("ssl", None, [_P]),
    "SSL_ctrl": ("ssl", ctypes.c_long, [_P, ctypes.c_int, ctypes.c_long, _P]),
    "SSL_set_bio": ("ssl", None, [_P, _P, _P]),
    "SSL_set_accept_state": ("ssl", None, [_P]),
    "SSL_set_connect_state": ("ssl", None, [_P]),
    "SSL_do_handshake": ("ssl", ctypes.c_int, [_P]),
    "SSL_get_error": ("ssl", ctypes.c_int, [_P, ctypes.c_int]),
    "SSL_read": ("ssl", ctypes.c_int, [_P, _P, ctypes.c_int]),
    "SSL_write": ("ssl", ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_int]),
    "SSL_shutdown": ("ssl", ctypes.c_int, [_P]),
    "SSL_get1_peer_certificate": ("ssl", _P, [_P]),
    "SSL_get_selected_srtp_profile": ("ssl", ctypes.POINTER(_SrtpProfile), [_P]),
    "SSL_export_keying_material": (
        "ssl",
        ctypes.c_int,
        [
            _P,
            _P,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_int,
        ],
    ),
    "SSL_get_version": ("ssl", ctypes.c_char_p, [_P]),
}


@_VERIFY_CALLBACK
def _accept_any_certificate(preverify_ok: int, store: int | None) -> int:
    """OpenSSL's verify callback: every chain passes (the fingerprint is checked later)."""
    return 1


class Library:
    """The loaded ``libssl``/``libcrypto`` pair, with every function declared."""

    def __init__(self, ssl: ctypes.CDLL, crypto: ctypes.CDLL) -> None:
        self.names = (ssl._name, crypto._name)
        libraries = {"ssl": ssl, "crypto": crypto}
        for name, (where, restype, argtypes) in _FUNCTIONS.items():
            function = getattr(libraries[where], name)  # AttributeError: missing
            function.restype = restype
            function.argtypes = argtypes
            setattr(self, name, function)
        self.version = int(self.OpenSSL_version_num())
        self.version_text = (self.OpenSSL_version(0) or b"OpenSSL").decode("ascii", "replace")

    def __getattr__(self, name: str) -> Any:  # the functions set above (for mypy)
        raise AttributeError(name)

    def errors(self) -> list[str]:
        """OpenSSL's error queue of this thread, as text, emptied."""
        messages: list[str] = []
        buffer = ctypes.create_string_buffer(256)
        while code := self.ERR_get_error():
            self.ERR_error_string_n(code, buffer, len(buffer))
            messages.append(buffer.value.decode("ascii", "replace"))
        return messages

    def fail(self, what: str) -> Error:
        """An :class:`Error` for a failed call, with what OpenSSL queued (emptied)."""
        return Error([what, *self.errors()])


_lock = threading.Lock()
_loaded: Library | None = None
_reason: str | None = None
_tried = False


def _open() -> Library:
    if ctypes.sizeof(ctypes.c_long) != 8 or ctypes.sizeof(ctypes.c_void_p) != 8:
        # `_Timeval` is LP64's struct timeval: on a 32-bit system (time64 or not)
        # OpenSSL would write past it
        raise OSError("the system's OpenSSL is used on 64-bit systems only")
    names = ["libssl.so.3"]  # every OpenSSL 3.x has this name
    last: OSError | None = None
    for name in names:
        crypto_name = name.replace("libssl", "libcrypto")
        try:
            library = Library(ctypes.CDLL(name), ctypes.CDLL(crypto_name))
        except OSError as exc:
            last = exc
            continue
        if library.version >> 28 != 3:
            raise OSError(f"{name} is OpenSSL {library.version:#x}, not 3.x")
        return library
    raise OSError(f"no libssl.so.3 ({last})")


def load() -> Library | None:
    """The system's OpenSSL 3, ready for :class:`Context`, or None (see
    :func:`unavailable_reason`).  Tried once per process."""
    global _loaded, _reason, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                library = _open()
                Context(library=library).set_groups(GROUPS)  # the groups are offered
            except (OSError, AttributeError, Error) as exc:
                _reason = f"{type(exc).__name__}: {exc}"
            else:
                _loaded = library
        return _loaded


def unavailable_reason() -> str | None:
    """Why :func:`load` returned None (None when it did not, or was not called)."""
    return _reason


def _library(library: Library | None) -> Library:
    if library is not None:
        return library
    loaded = load()
    if loaded is None:
        raise Error([f"the system's OpenSSL is not available: {_reason}"])
    return loaded


class Context:
    """``SSL_CTX`` for DTLS (pyOpenSSL's ``Context(DTLS_METHOD)``, the part aiortc uses)."""

    def __init__(self, method: int = DTLS_METHOD, *, library: Library | None = None) -> None:
        if method != DTLS_METHOD:
            raise ValueError("only DTLS_METHOD is offered")
        lib = self._lib = _library(library)
        lib.ERR_clear_error()
        dtls = lib.DTLS_method()
        pointer = lib.SSL_CTX_new(dtls) if dtls else None
        if not pointer:
            raise lib.fail("SSL_CTX_new")
        self._ctx: int = pointer
        weakref.finalize(self, lib.SSL_CTX_free, pointer).atexit = False
        # as pyOpenSSL's Context does
        mode = _SSL_MODE_ENABLE_PARTIAL_WRITE | _SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_MODE, mode, None)
        self._used = False

    def _check(self) -> None:
        if self._used:  # as pyOpenSSL: the settings are copied into each SSL at SSL_new
            raise ValueError("the context is already used by a connection")
        self._lib.ERR_clear_error()

    def set_options(self, options: int) -> int:
        self._check()
        return int(self._lib.SSL_CTX_set_options(self._ctx, options))

    def set_verify(self, mode: int, callback: Any = None) -> None:
        """Ask for the peer's certificate (``mode``) and accept whatever it is.

        ``callback`` is accepted for pyOpenSSL's signature and never called: the
        only policy here is the one WebRTC needs (aiortc's is ``lambda *args:
        True``), with the certificate's fingerprint checked after the handshake.
        """
        self._check()
        self._lib.SSL_CTX_set_verify(self._ctx, mode, _accept_any_certificate)

    def use_certificate(self, certificate: x509.Certificate) -> None:
        self._check()
        der = certificate.public_bytes(serialization.Encoding.DER)
        if self._lib.SSL_CTX_use_certificate_ASN1(self._ctx, len(der), der) != 1:
            raise self._lib.fail("SSL_CTX_use_certificate_ASN1")

    def use_privatekey(self, key: PrivateKeyTypes) -> None:
        self._check()
        lib = self._lib
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cursor = ctypes.c_char_p(der)
        pkey = lib.d2i_AutoPrivateKey(None, ctypes.byref(cursor), len(der))
        if not pkey:
            raise lib.fail("d2i_AutoPrivateKey")
        try:
            if lib.SSL_CTX_use_PrivateKey(self._ctx, pkey) != 1:
                raise lib.fail("SSL_CTX_use_PrivateKey")
        finally:
            lib.EVP_PKEY_free(pkey)  # the context holds its own reference

    def set_cipher_list(self, ciphers: bytes) -> None:
        self._check()
        if self._lib.SSL_CTX_set_cipher_list(self._ctx, ciphers) != 1:
            raise self._lib.fail("SSL_CTX_set_cipher_list")

    def set_tlsext_use_srtp(self, profiles: bytes) -> None:
        self._check()
        if self._lib.SSL_CTX_set_tlsext_use_srtp(self._ctx, profiles) != 0:  # 0 is success
            raise self._lib.fail("SSL_CTX_set_tlsext_use_srtp")

    def set_groups(self, groups: bytes = GROUPS) -> None:
        """The ECDHE groups offered and the curves accepted for the peer's key."""
        self._check()
        if self._lib.SSL_CTX_ctrl(self._ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, groups) != 1:
            raise self._lib.fail(f"SSL_CTX_set1_groups_list({groups.decode()})")


class Connection:
    """One ``SSL`` over two memory BIOs (pyOpenSSL's ``Connection(context)``)."""

    def __init__(self, context: Context) -> None:
        if not isinstance(context, Context):
            raise TypeError("context must be a sysdtls.Context")
        lib = self._lib = context._lib
        lib.ERR_clear_error()
        ssl = lib.SSL_new(context._ctx)
        if not ssl:
            raise lib.fail("SSL_new")
        self._ssl: int = ssl
        weakref.finalize(self, lib.SSL_free, ssl).atexit = False  # frees the BIOs too
        context._used = True
        self._context = context  # (OpenSSL counts its own reference too)
        lib.SSL_ctrl(ssl, _SSL_CTRL_MODE, _SSL_MODE_AUTO_RETRY, None)
        into_ssl = lib.BIO_new(lib.BIO_s_mem())
        if not into_ssl:
            raise lib.fail("BIO_new")
        from_ssl = lib.BIO_new(lib.BIO_s_mem())
        if not from_ssl:
            lib.BIO_free(into_ssl)
            raise lib.fail("BIO_new")
        lib.SSL_set_bio(ssl, into_ssl, from_ssl)  # owned by the SSL from here
        self._into_ssl: int = into_ssl
        self._from_ssl: int = from_ssl

    # -- errors ------------------------------------------------------------------
    def _raise_ssl_error(self, result: int, what: str) -> None:
        """Raise what ``result`` of an SSL call means (nothing on success), with
        OpenSSL's error queue emptied either way."""
        lib = self._lib
        error = lib.SSL_get_error(self._ssl, result)
        if error == _SSL_ERROR_NONE:
            lib.ERR_clear_error()
            return
        if error == _SSL_ERROR_WANT_READ:
            lib.ERR_clear_error()
            raise WantReadError()
        if error == _SSL_ERROR_WANT_WRITE:
            lib.ERR_clear_error()
            raise WantWriteError()
        if error == _SSL_ERROR_ZERO_RETURN:
            lib.ERR_clear_error()
            raise ZeroReturnError()
        if error == _SSL_ERROR_SYSCALL:
            messages = lib.errors()
            if not messages:
                raise SysCallError(-1, "Unexpected EOF")
            raise Error([what, *messages])
        raise lib.fail(what)

    def _bio_error(self, bio: int, what: str) -> Error:
        lib = self._lib
        if lib.BIO_test_flags(bio, _BIO_FLAGS_SHOULD_RETRY):
            lib.ERR_clear_error()
            if lib.BIO_test_flags(bio, _BIO_FLAGS_READ):
                return WantReadError()
            if lib.BIO_test_flags(bio, _BIO_FLAGS_WRITE):
                return WantWriteError()
        return lib.fail(what)

    # -- the handshake -------------------------------------------------------------
    def set_accept_state(self) -> None:
        self._lib.SSL_set_accept_state(self._ssl)

    def set_connect_state(self) -> None:
        self._lib.SSL_set_connect_state(self._ssl)

    def do_handshake(self) -> None:
        self._lib.ERR_clear_error()
        result = self._lib.SSL_do_handshake(self._ssl)
        self._raise_ssl_error(result, "SSL_do_handshake")

    def DTLSv1_get_timeout(self) -> float | None:  # noqa: N802 (pyOpenSSL's name)
        """Seconds until the handshake's retransmission timer fires, or None."""
        timeval = _Timeval()
        if self._lib.SSL_ctrl(self._ssl, _DTLS_CTRL_GET_TIMEOUT, 0, ctypes.byref(timeval)):
            return float(timeval.tv_sec + timeval.tv_usec / 1_000_000)
        return None

    def DTLSv1_handle_timeout(self) -> bool:  # noqa: N802 (pyOpenSSL's name)
        """Retransmit the last flight if its timer fired; True if there was one."""
        self._lib.ERR_clear_error()
        result = int(self._lib.SSL_ctrl(self._ssl, _DTLS_CTRL_HANDLE_TIMEOUT, 0, None))
        if result < 0:
            self._raise_ssl_error(result, "DTLSv1_handle_timeout")
            raise self._lib.fail("DTLSv1_handle_timeout")
        return bool(result)

    def shutdown(self) -> bool:
        """Send close_notify; True if the peer's close_notify came too."""
        self._lib.ERR_clear_error()
        result = self._lib.SSL_shutdown(self._ssl)
        if result < 0:
            self._raise_ssl_error(result, "SSL_shutdown")
            raise self._lib.fail("SSL_shutdown")
        self._lib.ERR_clear_error()
        return result > 0

    # -- datagrams in and out --------------------------------------------------------
    def bio_write(self, data: bytes) -> int:
        """Hand OpenSSL one datagram received from the peer."""
        data = bytes(data)
        if not data:
            return 0
        self._lib.ERR_clear_error()
        result = self._lib.BIO_write(self._into_ssl, data, len(data))
        if result <= 0:
            raise self._bio_error(self._into_ssl, "BIO_write")
        return int(result)

    def bio_read(self, bufsiz: int) -> bytes:
        """What OpenSSL wrote for the peer (up to ``bufsiz`` bytes); WantReadError if none."""
        buffer = ctypes.create_string_buffer(bufsiz)
        self._lib.ERR_clear_error()
        result = self._lib.BIO_read(self._from_ssl, buffer, bufsiz)
        if result <= 0:
            raise self._bio_error(self._from_ssl, "BIO_read")
        return buffer.raw[:result]

    def recv(self, bufsiz: int) -> bytes:
        """Application data from the records handed in by :meth:`bio_write`."""
        buffer = ctypes.create_string_buffer(bufsiz)
        self._lib.ERR_clear_error()
        result = self._lib.SSL_read(self._ssl, buffer, bufsiz)
        self._raise_ssl_error(result, "SSL_read")
        if result <= 0:
            raise self._lib.fail("SSL_read")
        return buffer.raw[:result]

    def send(self, data: bytes) -> int:
        data = bytes(data)
        self._lib.ERR_clear_error()
        result = self._lib.SSL_write(self._ssl, data, len(data))
        self._raise_ssl_error(result, "SSL_write")
        if result <= 0:
            raise self._lib.fail("SSL_write")
        return int(result)

    # -- after the handshake -----------------------------------------------------------
    def get_peer_certificate(self, *, as_cryptography: bool = False) -> x509.Certificate | None:
        """The peer's certificate (only ``as_cryptography=True`` is offered)."""
        if not as_cryptography:
            raise ValueError("only as_cryptography=True is offered")
        lib = self._lib
        certificate = lib.SSL_get1_peer_certificate(self._ssl)
        if not certificate:
            return None
        try:
            lib.ERR_clear_error()
            size = lib.i2d_X509(certificate, None)
            if size <= 0:
                raise lib.fail("i2d_X509")
            buffer = ctypes.create_string_buffer(size)
            cursor = ctypes.c_void_p(ctypes.addressof(buffer))
            if lib.i2d_X509(certificate, ctypes.byref(cursor)) != size:
                raise lib.fail("i2d_X509")
        finally:
            lib.X509_free(certificate)
        return x509.load_der_x509_certificate(buffer.raw)

    def get_selected_srtp_profile(self) -> bytes:
        """The negotiated SRTP profile's name (``b""`` if none)."""
        profile = self._lib.SSL_get_selected_srtp_profile(self._ssl)
        if not profile or not profile.contents.name:
            return b""
        return bytes(profile.contents.name)

    def export_keying_material(
        self, label: bytes, olen: int, context: bytes | None = None
    ) -> bytes:
        """RFC 5705 keying material (the SRTP keys for ``EXTRACTOR-dtls_srtp``)."""
        lib = self._lib
        out = ctypes.create_string_buffer(olen)
        lib.ERR_clear_error()
        ok = lib.SSL_export_keying_material(
            self._ssl,
            out,
            olen,
            label,
            len(label),
            context,
            len(context) if context is not None else 0,
            1 if context is not None else 0,
        )
        if ok != 1:
            raise lib.fail("SSL_export_keying_material")
        return out.raw[:olen]

    def get_protocol_version_name(self) -> str:
        """``DTLSv1.2`` once connected (pyOpenSSL's name for ``SSL_get_version``)."""
        version = self._lib.SSL_get_version(self._ssl)
        return version.decode("ascii") if version else ""
