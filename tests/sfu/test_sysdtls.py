"""conference.sfu.sysdtls: DTLS 1.2 on the system's OpenSSL 3, by ctypes.

Handshakes run over the memory BIOs (what aiortc does with pyOpenSSL), datagram
by datagram, between the shim and pyOpenSSL (the OpenSSL bundled in
``cryptography``, aiortc's own DTLS) and between two shims.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import random
import struct
import time
from collections import Counter

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from conference.sfu import sysdtls
from conference.sfu.bridge import DTLS_CIPHERS

LIBRARY = sysdtls.load()
pytestmark = pytest.mark.skipif(
    LIBRARY is None, reason=f"no usable libssl.so.3: {sysdtls.unavailable_reason()}"
)

SRTP_PROFILES = b"SRTP_AEAD_AES_256_GCM:SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"
EXTRACTOR = b"EXTRACTOR-dtls_srtp"


def certificate(curve: ec.EllipticCurve) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed certificate as WebRTC endpoints make them (P-224: FFmpeg's)."""
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert


P256 = certificate(ec.SECP256R1())
P256_OTHER = certificate(ec.SECP256R1())
P224 = certificate(ec.SECP224R1())


def shim(identity=P256, groups: bytes | None = sysdtls.GROUPS) -> sysdtls.Connection:
    """A shim connection set up as bridge.SystemDtlsCertificate sets it up."""
    key, cert = identity
    ctx = sysdtls.Context(sysdtls.DTLS_METHOD)
    ctx.set_options(sysdtls.OP_NO_TICKET)
    ctx.set_verify(sysdtls.VERIFY_PEER | sysdtls.VERIFY_FAIL_IF_NO_PEER_CERT)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_cipher_list(DTLS_CIPHERS)
    ctx.set_tlsext_use_srtp(SRTP_PROFILES)
    if groups is not None:
        ctx.set_groups(groups)
    return sysdtls.Connection(ctx)


def stock(identity=P256) -> SSL.Connection:
    """pyOpenSSL on the bundled OpenSSL, as aiortc's RTCCertificate sets it up."""
    key, cert = identity
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_cipher_list(DTLS_CIPHERS)
    ctx.set_tlsext_use_srtp(SRTP_PROFILES)
    return SSL.Connection(ctx)


def drain(source) -> list[bytes]:
    """What ``source`` wrote for its peer, 1500 bytes a datagram (as aiortc reads it)."""
    datagrams = []
    while True:
        try:
            datagrams.append(source.bio_read(1500))
        except SSL.WantReadError:
            return datagrams


def flush(source, target) -> None:
    for datagram in drain(source):
        target.bio_write(datagram)


def handshake(client, server) -> None:
    client.set_connect_state()
    server.set_accept_state()
    done = {id(client): False, id(server): False}
    for _ in range(20):
        for me, peer in ((client, server), (server, client)):
            if not done[id(me)]:
                try:
                    me.do_handshake()
                    done[id(me)] = True
                except SSL.WantReadError:
                    pass
            flush(me, peer)
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def queue_is_empty() -> bool:
    """OpenSSL's error queue of this thread (shared with Python's ssl module)."""
    return LIBRARY.ERR_peek_error() == 0


@pytest.mark.parametrize("shim_role", ["client", "server"])
def test_handshake_with_pyopenssl_both_ways_gives_equal_srtp_keys(shim_role):
    ours, theirs = shim(P256), stock(P256_OTHER)
    client, server = (ours, theirs) if shim_role == "client" else (theirs, ours)
    handshake(client, server)
    assert ours.get_protocol_version_name() == "DTLSv1.2"
    assert ours.get_selected_srtp_profile() == theirs.get_selected_srtp_profile()
    assert ours.get_selected_srtp_profile() == b"SRTP_AEAD_AES_256_GCM"
    # the keys aiortc's _setup_srtp derives: both sides the same bytes
    length = 2 * (32 + 12)
    keys = ours.export_keying_material(EXTRACTOR, length)
    assert len(keys) == length and keys == theirs.export_keying_material(EXTRACTOR, length)
    assert keys != ours.export_keying_material(b"EXTRACTOR-other", length)
    # each sees the other's certificate (the fingerprint aiortc checks)
    assert ours.get_peer_certificate(as_cryptography=True) == P256_OTHER[1]
    assert theirs.get_peer_certificate(as_cryptography=True) == P256[1]
    # application data (a data channel's SCTP) both ways, and the close
    ours.send(b"from the shim")
    flush(ours, theirs)
    assert theirs.recv(1500) == b"from the shim"
    theirs.send(b"from pyOpenSSL")
    flush(theirs, ours)
    assert ours.recv(1500) == b"from pyOpenSSL"
    with pytest.raises(SSL.WantReadError):
        ours.recv(1500)
    assert ours.DTLSv1_get_timeout() is None  # no flight waits for an answer
    theirs.shutdown()
    flush(theirs, ours)
    with pytest.raises(SSL.ZeroReturnError):
        ours.recv(1500)
    assert ours.shutdown() is True  # both close_notify alerts: sent and received
    assert queue_is_empty()


@pytest.mark.parametrize("p224_role", ["client", "server"])
def test_a_p224_peer_is_accepted(p224_role):
    """FFmpeg's default certificate: P-224.  As the DTLS server (FFmpeg's default,
    ``a=setup:passive``) its ServerKeyExchange is checked against our groups.  As the
    client, its CertificateVerify is checked against our groups *and* the groups the
    client offered: this peer (OpenSSL) offers P-224, FFmpeg's GnuTLS does not, so
    FFmpeg with ``whip_flags=dtls_active`` is still refused (tests/test_ffmpeg_whip.py)."""
    ours, p224_peer = shim(P256), shim(P224)
    client, server = (p224_peer, ours) if p224_role == "client" else (ours, p224_peer)
    handshake(client, server)
    assert ours.get_peer_certificate(as_cryptography=True) == P224[1]
    length = 2 * (32 + 12)
    assert ours.export_keying_material(EXTRACTOR, length) == p224_peer.export_keying_material(
        EXTRACTOR, length
    )


def test_without_p224_in_the_groups_the_peer_is_refused():
    """What the groups list does, and why the bundled OpenSSL cannot be used: both
    refuse a P-224 client's key with 'wrong curve' (if pyOpenSSL starts accepting it,
    this module may no longer be needed: see tests/test_ffmpeg_whip.py)."""
    for refusing in (shim(P256, groups=b"X25519:P-256:P-384"), stock(P256)):
        with pytest.raises(SSL.Error) as info:
            handshake(shim(P224), refusing)
        assert "wrong curve" in str(info.value), info.value
        assert queue_is_empty()


def test_garbage_datagrams_give_ssl_errors_and_the_handshake_still_completes():
    rng = random.Random(15)

    def junk() -> bytes:
        kind = rng.random()
        if kind < 0.4:  # a well-formed record and handshake header around a random body
            body = rng.randbytes(rng.randrange(0, 300))
            msg_type = rng.choice([1, 1, 1, 2, 11, 12, 16, 20, rng.randrange(256)])
            size = len(body).to_bytes(3, "big")
            message = bytes([msg_type]) + size + b"\0\0" + b"\0\0\0" + size + body
            sequence = rng.randrange(2**48).to_bytes(6, "big")
            header = bytes([22]) + b"\xfe\xfd\0\0" + sequence + struct.pack("!H", len(message))
            return header + message
        data = bytearray(rng.randbytes(rng.choice([1, 2, 13, 14, 25, 100, 600, 1500])))
        if kind < 0.8:  # looks like a DTLS 1.2 record (what aiortc hands to DTLS)
            data[0] = rng.choice([20, 21, 22, 23, 25, rng.randrange(20, 64)])
            data[1:3] = b"\xfe\xfd"[: len(data) - 1]
        return bytes(data)

    outcomes: Counter[str] = Counter()
    server = shim(P256_OTHER)
    server.set_accept_state()
    for _ in range(300):  # junk before the handshake: dropped, or the handshake fails
        server.bio_write(junk())
        try:
            server.do_handshake()
        except SSL.WantReadError:
            outcomes["dropped"] += 1
        except SSL.Error as exc:
            assert exc.args[0][0] == "SSL_do_handshake" and exc.args[0][1:], exc  # says why
            outcomes["refused"] += 1
            server = shim(P256_OTHER)  # a failed handshake is over: a new one
            server.set_accept_state()
        drain(server)  # an alert it sent
        assert queue_is_empty()
    assert outcomes["dropped"] > 50 and outcomes["refused"] > 50, outcomes
    client = shim(P256)
    handshake(client, server)

    for _ in range(300):  # junk after it: dropped (aiortc's recv() catches SSL.Error)
        client.bio_write(junk())
        with pytest.raises(SSL.WantReadError):
            client.recv(1500)
        assert queue_is_empty()
    server.send(b"still there")
    flush(server, client)
    assert client.recv(1500) == b"still there"
    assert client.bio_write(b"") == 0


def test_misuse_is_refused_not_crashed():
    with pytest.raises(ValueError):
        sysdtls.Context(1)  # not DTLS
    ctx = sysdtls.Context(sysdtls.DTLS_METHOD)
    with pytest.raises(SSL.Error):
        ctx.set_groups(b"P-999")
    with pytest.raises(SSL.Error):
        ctx.set_cipher_list(b"NO-SUCH-CIPHER")
    with pytest.raises(SSL.Error):
        ctx.set_tlsext_use_srtp(b"SRTP_NONE")
    ctx.use_certificate(P256[1])
    with pytest.raises(SSL.Error):  # the key of another certificate
        ctx.use_privatekey(P224[0])
    assert queue_is_empty()
    connection = sysdtls.Connection(ctx)
    with pytest.raises(ValueError):  # its settings were copied into the connection
        ctx.set_options(sysdtls.OP_NO_TICKET)
    with pytest.raises(TypeError):
        sysdtls.Connection(SSL.Context(SSL.DTLS_METHOD))
    with pytest.raises(ValueError):
        connection.get_peer_certificate()
    assert connection.get_peer_certificate(as_cryptography=True) is None
    assert connection.get_selected_srtp_profile() == b""
    with pytest.raises(SSL.Error):  # no handshake, no keys
        connection.export_keying_material(EXTRACTOR, 16)
    with pytest.raises(SSL.WantReadError):
        connection.bio_read(1500)
    assert queue_is_empty()


def test_retransmission_timer():
    """A lost flight is sent again after DTLSv1_get_timeout (what aiortc waits)."""
    client = shim(P256)
    client.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        client.do_handshake()
    hello = client.bio_read(1500)
    timeout = client.DTLSv1_get_timeout()
    assert timeout is not None and 0 < timeout <= 1.0
    assert client.DTLSv1_handle_timeout() is False  # not yet due
    time.sleep(timeout + 0.05)  # the timer is due (OpenSSL reads the clock)
    assert client.DTLSv1_handle_timeout() is True
    assert client.bio_read(1500)[13:] == hello[13:]  # the same ClientHello, next record number
    with pytest.raises(SSL.Error):  # aiortc's stop() catches it
        client.shutdown()
    assert queue_is_empty()


def _heap_bytes() -> int | None:
    """Bytes allocated by malloc (glibc's mallinfo2), where OpenSSL's objects live."""

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
            ).split()
        ]

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    gc.collect()
    return int(libc.mallinfo2().uordblks)


def test_many_handshakes_do_not_grow_memory():
    """Every SSL, SSL_CTX, BIO, X509 and EVP_PKEY is freed: 200 handshakes (with
    what aiortc calls after each) leave the heap as it was.  A leaked peer
    certificate alone would be ~4 KB a handshake, a leaked connection ~130 KB."""

    def session() -> None:
        client, server = shim(P224), shim(P256)
        handshake(client, server)
        assert server.get_peer_certificate(as_cryptography=True) is not None
        client.export_keying_material(EXTRACTOR, 88)
        client.shutdown()
        flush(client, server)

    if _heap_bytes() is None:
        pytest.skip("no mallinfo2 (not glibc)")
    for _ in range(30):  # caches of the first handshakes
        session()
    before = _heap_bytes()
    for _ in range(200):
        session()
    after = _heap_bytes()
    assert before is not None and after is not None
    assert (after - before) / 200 < 500, f"{(after - before) / 200:.0f} bytes a handshake"
