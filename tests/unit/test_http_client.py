"""The delivery client against real sockets on loopback: the whole-attempt deadline, errors that
never escape, international host names."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scripts.harness import Receiver, Reply
from tests.support import Listener
from webhooks.http import Client, Response
from webhooks.models import AttemptResult


class Trickler(Listener):
    """A server that accepts, reads the request, then sends `prefix` and one byte of `drip`
    every `interval` seconds for `seconds`, and hangs up."""

    def __init__(self, prefix: bytes, drip: bytes, interval: float = 0.1, seconds: float = 6):
        self.prefix, self.drip, self.interval, self.seconds = prefix, drip, interval, seconds
        self.hung_up_by_client = threading.Event()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        until = time.monotonic() + self.seconds
        try:
            conn.recv(65536)
            conn.sendall(self.prefix)
            i = 0
            while time.monotonic() < until:
                conn.sendall(self.drip[i % len(self.drip) : i % len(self.drip) + 1])
                i += 1
                time.sleep(self.interval)
        except OSError:
            self.hung_up_by_client.set()
        finally:
            conn.close()

    def post(self, timeout: float) -> tuple[Response, float]:
        """Post to it with a client whose deadline is `timeout`; say how long that took."""
        started = time.monotonic()
        response = _client(timeout).post(f"http://127.0.0.1:{self.port}/t", b"{}", {})
        return response, time.monotonic() - started


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _client(timeout: float = 1.0, cafile: str | None = None) -> Client:
    """A client for loopback; with `cafile`, trusting that certificate instead of the system's."""
    tls = ssl.create_default_context(cafile=cafile) if cafile else None
    return Client(timeout=timeout, allow_private=True, body_cap=100, tls=tls)


def test_subscriber_trickling_its_headers_is_cut_at_the_deadline_as_a_timeout() -> None:
    # One header byte every 0.1 s: no single read ever waits 1 s, so per-read timeouts never fire.
    with Trickler(b"HTTP/1.1 200 OK\r\n", b"x-slow: 1\r\n") as server:
        response, elapsed = server.post(timeout=1.0)
    assert response.result is AttemptResult.TIMEOUT, response
    assert 1.0 <= elapsed < 1.8, elapsed
    assert response.error == "no complete answer within 1 s"
    assert server.hung_up_by_client.wait(2)


def test_subscriber_trickling_its_body_is_cut_at_the_deadline_as_a_timeout() -> None:
    with Trickler(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n", b"a") as server:
        response, elapsed = server.post(timeout=1.0)
    assert response.result is AttemptResult.TIMEOUT, response
    assert response.status_code == 200
    assert 1.0 <= elapsed < 1.8, elapsed


def test_kept_alive_connection_is_watched_on_its_next_attempt_too(receiver: Receiver) -> None:
    receiver.plan("/k", Reply(200), then=Reply(200, delay=3))
    client = _client(1.0)
    assert client.post(receiver.url("/k"), b"{}", {}).result is AttemptResult.SUCCESS
    started = time.monotonic()
    response = client.post(receiver.url("/k"), b"{}", {})
    assert response.result is AttemptResult.TIMEOUT, response
    assert time.monotonic() - started < 1.8
    # And the client still works afterwards, on a fresh connection.
    receiver.plan("/ok", Reply(200))
    assert client.post(receiver.url("/ok"), b"{}", {}).result is AttemptResult.SUCCESS


def test_many_attempts_each_end_at_their_own_deadline() -> None:
    results: list[tuple[AttemptResult, float]] = []

    def one(server: Trickler, timeout: float) -> None:
        response, elapsed = server.post(timeout)
        results.append((response.result, elapsed - timeout))

    with Trickler(b"HTTP/1.1 200 OK\r\n", b"x-slow: 1\r\n", seconds=8) as server:
        threads = [
            threading.Thread(target=one, args=(server, 0.5 + 0.25 * (i % 3))) for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert len(results) == 6
    assert all(result is AttemptResult.TIMEOUT for result, _ in results), results
    assert all(0 <= late < 0.6 for _, late in results), results


@pytest.mark.parametrize("value", ["\u2603", "\u20ac 5"])
def test_header_value_that_http_cannot_carry_is_a_failed_attempt_not_an_exception(
    receiver: Receiver, value: str
) -> None:
    # Such values are refused at the API now; rows stored before must still end as attempts.
    receiver.plan("/h", Reply(200))
    response = _client().post(receiver.url("/h"), b"{}", {"x-snow": value})
    assert response.result is AttemptResult.CONNECTION_ERROR, response
    assert response.error is not None and "UnicodeEncodeError" in response.error
    assert receiver.received == []


def test_any_unexpected_error_inside_post_becomes_a_failed_attempt(receiver: Receiver) -> None:
    receiver.plan("/x", Reply(200))
    client = _client()
    # A body that is not bytes: a programming error, still reported and never raised.
    response = client.post(receiver.url("/x"), object(), {})  # type: ignore[arg-type]
    assert response.result is AttemptResult.CONNECTION_ERROR, response
    assert response.error
    assert client.post(receiver.url("/x"), b"{}", {}).result is AttemptResult.SUCCESS


def test_international_host_name_is_sent_in_its_idna_form(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the name's lookup is scripted (either spelling to loopback); connecting, the Host
    # header and the request are real.
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("xn--e1afmkfd.xn--p1ai", "пример.рф"):
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    receiver.plan("/idn", Reply(200))
    response = _client().post(f"http://пример.рф:{receiver.port}/idn", b"{}", {})
    assert response.result is AttemptResult.SUCCESS, response
    (got,) = receiver.wait_for("/idn", 1)
    assert got.headers["host"] == f"xn--e1afmkfd.xn--p1ai:{receiver.port}"


def _certificate(tmp_path: Any, name: str) -> tuple[str, str]:
    """A self-signed certificate for `name` (its own CA): the PEM paths of the cert and key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class TLSServer(Listener):
    """Answers each request on a TLS connection with 204, and notes the SNI name it was asked
    for; with `handshake=False` it accepts connections and never answers the ClientHello."""

    def __init__(self, cert: str, key: str, handshake: bool = True) -> None:
        self.names: list[str | None] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = lambda sock, name, ctx: self.names.append(name)
        self.handshake = handshake
        self.held: list[socket.socket] = []
        # Where the client will dial "localhost": its first address (::1 on some hosts).
        super().__init__("localhost")

    def serve(self, conn: socket.socket) -> None:
        if not self.handshake:
            self.held.append(conn)
            return
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                reader = tls.makefile("rb")
                while line := reader.readline():
                    length = 0
                    while line not in (b"\r\n", b""):  # the request's headers
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                        line = reader.readline()
                    reader.read(length)
                    tls.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        super().close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def localhost_cert(tmp_path: Any) -> tuple[str, str]:
    return _certificate(tmp_path, "localhost")


def test_https_checks_the_certificate_for_the_urls_host_over_the_checked_address(
    localhost_cert: tuple[str, str],
) -> None:
    server = TLSServer(*localhost_cert)
    try:
        client = _client(2.0, cafile=localhost_cert[0])
        url = f"https://localhost:{server.port}/tls"
        for _ in range(2):  # the second one on the kept-alive connection
            response = client.post(url, b"{}", {})
            assert response.result is AttemptResult.SUCCESS, response
            assert response.status_code == 204
        assert server.names == ["localhost"]  # SNI: the URL's name, not the address dialled
        # A certificate nobody vouches for is refused: the system's roots do not know it.
        untrusted = _client(2.0).post(url, b"{}", {})
        assert untrusted.result is AttemptResult.CONNECTION_ERROR, untrusted
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or ""), untrusted
    finally:
        server.close()


def test_https_refuses_a_certificate_for_another_name(tmp_path: Any) -> None:
    cert, key = _certificate(tmp_path, "other.example")
    server = TLSServer(cert, key)
    try:
        response = _client(2.0, cafile=cert).post(f"https://localhost:{server.port}/tls", b"{}", {})
        assert response.result is AttemptResult.CONNECTION_ERROR, response
        assert "CERTIFICATE_VERIFY_FAILED" in (response.error or ""), response
    finally:
        server.close()


def test_a_tls_handshake_that_never_answers_is_cut_at_the_deadline(
    localhost_cert: tuple[str, str],
) -> None:
    server = TLSServer(*localhost_cert, handshake=False)
    try:
        started = time.monotonic()
        response = _client(0.5, cafile=localhost_cert[0]).post(
            f"https://localhost:{server.port}/tls", b"{}", {}
        )
        assert response.result is AttemptResult.TIMEOUT, response
        assert time.monotonic() - started < 1.5
    finally:
        server.close()
