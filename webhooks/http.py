"""Outbound HTTP for deliveries: address guard, pinned connection, total timeout, capped body."""

from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import ipaddress
import itertools
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from webhooks.models import AttemptResult

log = logging.getLogger(__name__)

USER_AGENT = "webhooks/0.1 (+https://www.standardwebhooks.com/)"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DEFAULT_PORT = {"http": 80, "https": 443}
# What a request line cannot carry (http.client refuses it).
_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")
# Answers whose Retry-After the schedule honours.
_ASKS_TO_WAIT = frozenset({429, 503})
# How a kept-alive connection that the other side closed fails when it is used again.
_CLOSED_ON_REUSE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)
# Headers that frame the request, or are the client's own: never taken from the caller.
_FRAMING = ("host", "content-length", "transfer-encoding", "connection", "expect", "te", "upgrade")

# What a tenant is told when a host's addresses are refused: the same words whatever the address
# and whether the name resolves at all, so that refusals cannot map internal DNS names. The
# address and the reason go to the server's log only.
NOT_PUBLIC = "the host does not resolve to public addresses only"
DEFAULT_DNS_TIMEOUT = 2.0

# IPv6 forms that carry an IPv4 address: judged by the IPv4 address they embed.
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")

# The IANA special-purpose address registries, every entry (iana.org/assignments/
# iana-ipv4-special-registry and iana-ipv6-special-registry, as of 2025), plus multicast and the
# deprecated site-local range. Entries marked "globally reachable" (AS112, AMT, anycast PCP and
# TURN) are refused too: none of them is a webhook receiver. Python's ipaddress tables are not
# enough on their own: 3.11 leaves out most of 192.0.0.0/24 (192.0.0.192 is a cloud metadata
# address), 192.88.99.0/24 and 3fff::/20. First match wins: more specific entries come first.
SPECIAL_PURPOSE_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", "a 'this network' address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.31.196.0/24", "an AS112 address"),
    ("192.52.193.0/24", "an AMT address"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private address"),
    ("192.175.48.0/24", "an AS112 address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)
SPECIAL_PURPOSE_V6: tuple[tuple[str, str], ...] = (
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    # Not in the registry: deprecated forms that embed an IPv4 address (RFC 4291 2.5.5.1, the
    # "IPv4-compatible" ::a.b.c.d; RFC 2765's "IPv4-translated" ::ffff:0:a.b.c.d). No public
    # host has one, and a stack or tunnel that still maps them could reach the IPv4 address.
    ("::/96", "a deprecated IPv4-compatible address"),
    ("::ffff:0:0:0/96", "a deprecated IPv4-translated address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("100:0:0:1::/64", "a dummy IPv6 prefix address"),
    ("2001::/32", "a Teredo address"),
    ("2001::/23", "an IETF protocol assignment address"),
    ("2001:db8::/32", "a documentation address"),
    ("2620:4f:8000::/48", "an AS112 address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "a segment routing (SRv6) address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_DENY_V4 = tuple((ipaddress.IPv4Network(n), why) for n, why in SPECIAL_PURPOSE_V4)
_DENY_V6 = tuple((ipaddress.IPv6Network(n), why) for n, why in SPECIAL_PURPOSE_V6)


class AddressRefused(ValueError):
    """The URL is not one we may send to; str() is for the tenant, `detail` for the log."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


def refusal_reason(ip: IPAddress) -> str | None:
    """Say why an address may not be a webhook target, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        if ip in _IPV4_MAPPED:
            embedded = ip.ipv4_mapped
        elif ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip in _6TO4:
            embedded = ip.sixtofour
        if embedded is not None:
            reason = refusal_reason(embedded)
            return f"an IPv6 form of {embedded} ({reason})" if reason else None
        table: tuple[tuple[Any, str], ...] = _DENY_V6
    else:
        table = _DENY_V4
    for network, why in table:
        if ip in network:
            return why
    # A backstop for whatever the registries gain after this list was written.
    if not ip.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


@functools.lru_cache(maxsize=1024)
def parse_url(url: str) -> Target:
    """Split a subscriber URL; raise AddressRefused if it cannot be a webhook target."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"the URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise AddressRefused("the URL must use http or https")
    if not parts.hostname:
        raise AddressRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("the URL may not carry credentials; use a custom header")
    if port == 0:
        # An HTTP client would quietly send to port 80 instead.
        raise AddressRefused("the URL's port must be between 1 and 65535")
    host = parts.hostname
    if not host.isascii():
        # The Host header and SNI take the ASCII (IDNA) form of an international name.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressRefused("the host is not a valid international domain name") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if _UNSENDABLE.search(path):
        # http.client refuses them at every attempt: refused now, not failed forever after.
        raise AddressRefused("the URL's path may not hold spaces or control characters")
    return Target(
        parts.scheme, host, port if port is not None else _DEFAULT_PORT[parts.scheme], path
    )


# Lookups run on a few threads of their own, so that a resolver that never answers holds the
# caller for the budget only. Made per process: a forked child would inherit a pool whose threads
# it does not have.
_DNS_THREADS = 16
_resolver: tuple[int, ThreadPoolExecutor] | None = None
_resolver_lock = threading.Lock()


def _resolver_pool() -> ThreadPoolExecutor:
    global _resolver
    with _resolver_lock:
        if _resolver is None or _resolver[0] != os.getpid():
            _resolver = (os.getpid(), ThreadPoolExecutor(_DNS_THREADS, thread_name_prefix="dns"))
        return _resolver[1]


def _lookup(host: str, port: int, timeout: float) -> list[Any]:
    future = _resolver_pool().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        return future.result(timeout=max(timeout, 0.0))
    except FutureTimeout:
        future.cancel()  # if it still waits for a thread, it never runs
        raise AddressRefused(
            f"the host did not resolve within {timeout:g} s",
            f"{host} did not resolve within {timeout:g} s",
        ) from None


@functools.lru_cache(maxsize=1024)
def _address(host: str) -> IPAddress | None:
    """The host as an IP address, if it is one (parsed once per host, not per attempt)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _addresses_of(host: str, port: int, timeout: float) -> list[IPAddress]:
    """The addresses a name resolves to within `timeout`; AddressRefused if it does not."""
    try:
        infos = _lookup(host, port, timeout)
    except AddressRefused as exc:
        log.warning("target refused: %s", exc.detail, extra={"host": host})
        raise
    except (OSError, UnicodeError) as exc:
        detail = f"{host} does not resolve: {exc}"
        log.warning("target refused: %s", detail, extra={"host": host})
        raise AddressRefused(NOT_PUBLIC, detail) from None
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def resolve(
    host: str, port: int, allow_private: bool, timeout: float = DEFAULT_DNS_TIMEOUT
) -> list[IPAddress]:
    """Resolve a host within `timeout` seconds and check every address; raise AddressRefused
    if any is refused."""
    literal = _address(host)
    # An address needs no lookup (nor the hand-off to a lookup thread, on every attempt).
    addresses = [literal] if literal is not None else _addresses_of(host, port, timeout)
    if not addresses:
        log.warning("target refused: %s has no address", host, extra={"host": host})
        raise AddressRefused(NOT_PUBLIC, f"{host} has no address")
    if not allow_private:
        for ip in addresses:
            reason = refusal_reason(ip)
            if reason:
                # Refuse the whole host: a name with one internal address is an internal name.
                detail = f"{host} resolves to {ip}, {reason}"
                log.warning("target refused: %s", detail, extra={"host": host})
                raise AddressRefused(NOT_PUBLIC, detail)
    return addresses


def check_url(url: str, allow_private: bool, dns_timeout: float = DEFAULT_DNS_TIMEOUT) -> Target:
    """Validate a subscriber URL and every address its host resolves to."""
    target = parse_url(url)
    resolve(target.host, target.port, allow_private, dns_timeout)
    return target


@dataclass
class Response:
    result: AttemptResult
    status_code: int | None = None
    error: str | None = None
    duration: float = 0.0
    body: str | None = None
    truncated: bool = False
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Turn a Retry-After header (seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Watch:
    """One attempt's deadline and the connections it uses, shut down when the deadline passes."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self.done = False
        self._lock = threading.Lock()
        self._connections: list[Any] = []

    def add(self, connection: Any) -> None:
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            if self.fired:
                _shut(connection)

    def fire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.fired = True
            for connection in self._connections:
                _shut(connection)

    def finish(self) -> bool:
        """Stop watching (the connection may go back to the pool); say whether it fired."""
        with self._lock:
            self.done = True
            return self.fired


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    # The plain socket's method, also for TLS: it wakes a read blocked in another thread without
    # touching the SSL object that thread is using. OSError: it is closed already.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Reaper:
    """A thread per process that ends attempts at their deadline, whatever the socket is doing.

    Socket timeouts bound each socket operation only: a subscriber that sends one header
    byte a second never trips them. Shutting the socket down makes the blocked read return.
    """

    def __init__(self) -> None:
        self._reinit()
        os.register_at_fork(after_in_child=self._reinit)

    def _reinit(self) -> None:
        # After a fork the parent's thread is gone and its lock may be held: start afresh.
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watch: _Watch) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-deadline", daemon=True)
                self._thread.start()
            # The thread sleeps until the earliest deadline it holds: wake it only if this one
            # comes sooner. Attempts share one timeout, so that is seldom (not once an attempt);
            # ended watches are dropped when the thread next wakes.
            sooner = not self._heap or watch.deadline < self._heap[0][0]
            heapq.heappush(self._heap, (watch.deadline, next(self._counter), watch))
            if sooner:
                self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while cond is self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    heapq.heappop(self._heap)[2].fire()
                wait = self._heap[0][0] - now if self._heap else None
                cond.wait(wait)


_REAPER = _Reaper()
_current = threading.local()


class _Response(http.client.HTTPResponse):
    """The standard library's response, which skips every informational (1xx) answer before
    the final one, as RFC 9110 (15.2) asks of a client; it skips only 100 Continue. A 103 Early
    Hints taken as the answer would fail a delivery that succeeded, and leave the real answer
    on the connection for the next attempt to read as its own."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 < status < 200 or status == 101:
                return version, status, reason
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]  # skip its headers


class _Connection(http.client.HTTPConnection):
    """A keep-alive connection to an address checked before, under the current attempt's
    deadline; for https, TLS with the URL's own host name (SNI and the certificate check),
    never a second lookup of that name (DNS rebinding).

    The standard library's client, not urllib3: its pool, retry and timeout objects around
    the same `http.client` cost more CPU than the request itself (docs/performance.md)."""

    response_class = _Response

    def __init__(self, ip: str, port: int, tls_host: str | None, tls: ssl.SSLContext | None):
        super().__init__(ip, port)
        self.tls_host = tls_host
        self.tls = tls

    def connect(self) -> None:
        watch: _Watch | None = getattr(_current, "watch", None)
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            # Wrapped first and shaken hands after, so that the deadline can shut the socket
            # the handshake reads from.
            sock = self.tls.wrap_socket(
                sock, server_hostname=self.tls_host, do_handshake_on_connect=False
            )
        self.sock = sock
        if watch is not None and watch.fired:
            self.close()
            raise TimeoutError("the attempt's deadline passed while connecting")
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()


def _dropped(connection: _Connection) -> bool:
    """Whether a kept-alive connection was closed by the subscriber while it sat idle (it is
    readable: an end of file, or bytes nobody asked for)."""
    sock = connection.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    if not isinstance(sock, ssl.SSLSocket):
        return True
    # TLS 1.3 servers send session tickets after the handshake: readable, yet no answer.
    sock.setblocking(False)  # `_send` sets the attempt's timeout again
    try:
        sock.recv(1)  # an end of file, or a byte nobody asked for
    except ssl.SSLWantReadError:
        return False  # only TLS's own records were waiting
    except OSError:
        pass
    return True


class Client:
    """Sends one POST at a time to an address checked just before, keeping connections alive.

    The whole attempt (lookup, connect, send, response headers and the capped body) ends within
    `timeout` seconds, and no error escapes `post`: each becomes a failed Response.
    """

    # Idle connections kept per (scheme, address, port, host).
    KEEP_PER_TARGET = 4

    def __init__(
        self,
        timeout: float,
        allow_private: bool,
        body_cap: int,
        max_pools: int = 128,
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
        tls: ssl.SSLContext | None = None,
    ):
        self.timeout = timeout
        self.allow_private = allow_private
        self.body_cap = body_cap
        self.max_pools = max_pools
        self.dns_timeout = dns_timeout
        self._tls = tls
        self._lock = threading.Lock()
        self._idle: OrderedDict[tuple[str, str, int, str], list[_Connection]] = OrderedDict()

    def _checkout(self, key: tuple[str, str, int, str], fresh: bool = False) -> _Connection:
        """A kept-alive connection to this target that is still open, or a new one (always a
        new one if `fresh`)."""
        while not fresh:
            with self._lock:
                idle = self._idle.get(key)
                connection = idle.pop() if idle else None
            if connection is None:
                break
            if not _dropped(connection):
                return connection
            connection.close()
        scheme, ip, port, host = key
        if scheme != "https":
            return _Connection(ip, port, None, None)
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return _Connection(ip, port, host, self._tls)

    def _checkin(self, key: tuple[str, str, int, str], connection: _Connection) -> None:
        closing: list[_Connection] = []
        with self._lock:
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) < self.KEEP_PER_TARGET:
                idle.append(connection)
            else:
                closing.append(connection)
            while len(self._idle) > self.max_pools:
                closing.extend(self._idle.popitem(last=False)[1])
        for old in closing:
            old.close()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST the body; never raise, report every kind of trouble in the Response."""
        started = time.monotonic()
        try:
            return self._post(url, body, headers, started)
        except Exception as exc:  # a bug or an odd input must still end as a recorded attempt
            log.exception("unexpected error in an attempt")
            return Response(
                AttemptResult.CONNECTION_ERROR, error=_describe(exc), duration=_since(started)
            )

    def _post(self, url: str, body: bytes, headers: dict[str, str], started: float) -> Response:
        deadline = started + self.timeout
        try:
            target = parse_url(url)
            addresses = resolve(
                target.host, target.port, self.allow_private, min(self.dns_timeout, self.timeout)
            )
        except AddressRefused as exc:
            return Response(AttemptResult.REFUSED, error=str(exc), duration=_since(started))
        key = (target.scheme, str(addresses[0]), target.port, target.host)
        for fresh in (False, True):
            connection = self._checkout(key, fresh)
            reused = connection.sock is not None
            watch = _Watch(deadline)
            watch.add(connection)
            _current.watch = watch
            _REAPER.add(watch)
            try:
                resp = self._send(connection, target, body, headers, deadline)
                raw, ending = self._read_capped(resp, deadline)
            except Exception as exc:
                cut = watch.finish()
                connection.close()
                if reused and not cut and isinstance(exc, _CLOSED_ON_REUSE):
                    # The subscriber closed the kept-alive connection as it was taken up again
                    # (its idle timeout), before any answer: once more on a new connection,
                    # within the same deadline. A request it did read is a duplicate at worst,
                    # which the same webhook-id lets it drop, as any retry would.
                    continue
                return self._failure(exc, cut, started)
            finally:
                _current.watch = None
            break
        cut = watch.finish()
        # Only after a whole final answer: a 101 switched protocols, anything else leaves bytes.
        if ending == "end" and not cut and not resp.will_close and resp.status >= 200:
            self._checkin(key, connection)
        else:
            connection.close()  # unread bytes make the connection unusable for the next request
        timed_out = cut or ending == "deadline" or _since(started) > self.timeout
        return self._classify(resp, raw, ending != "end", timed_out, started)

    def _send(
        self,
        connection: _Connection,
        target: Target,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
    ) -> http.client.HTTPResponse:
        """Connect (or reuse the connection), send, and read the response headers."""
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port != _DEFAULT_PORT[target.scheme]:
            host_header += f":{target.port}"
        # One of each name whatever its case (the last given wins), and none of the ones that
        # frame the request: a second Host, or a Content-Length or Transfer-Encoding beside the
        # ones http.client writes, would let a stored header change what the subscriber reads.
        send_headers = {name.lower(): (name, value) for name, value in headers.items()}
        for name in _FRAMING:
            send_headers.pop(name, None)
        send_headers["host"] = ("Host", host_header)
        send_headers["user-agent"] = ("User-Agent", USER_AGENT)
        # Each socket operation waits at most what is left; the deadline thread cuts the rest.
        remaining = max(deadline - time.monotonic(), 0.001)
        connection.timeout = remaining
        if connection.sock is not None:
            connection.sock.settimeout(remaining)
        connection.request("POST", target.path, body=body, headers=dict(send_headers.values()))
        return connection.getresponse()

    def _read_capped(self, resp: http.client.HTTPResponse, deadline: float) -> tuple[bytes, str]:
        """Read at most body_cap + 1 bytes of the body; say how reading ended: "end", "cap",
        "deadline" or "broken" (the connection failed mid-body)."""
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= self.body_cap:
                if time.monotonic() > deadline:
                    return b"".join(chunks), "deadline"
                chunk = resp.read(self.body_cap + 1 - size)
                if not chunk:
                    # http.client answers an early end of file with no bytes, not an error:
                    # a Content-Length not met is a body cut short.
                    return b"".join(chunks), "broken" if resp.length else "end"
                chunks.append(chunk)
                size += len(chunk)
        except (http.client.HTTPException, OSError, ValueError):
            return b"".join(chunks), "broken"
        return b"".join(chunks), "cap"  # the rest is never read

    def _failure(self, exc: Exception, cut: bool, started: float) -> Response:
        """Turn an error before the response headers arrived into a failed attempt."""
        duration = _since(started)
        if cut or duration >= self.timeout:
            error = f"no complete answer within {self.timeout:g} s"
            return Response(AttemptResult.TIMEOUT, error=error, duration=duration)
        if isinstance(exc, TimeoutError):
            return Response(AttemptResult.TIMEOUT, error=_describe(exc), duration=duration)
        if not isinstance(exc, http.client.HTTPException | OSError):
            log.exception("unexpected error in an attempt", exc_info=exc)
        return Response(AttemptResult.CONNECTION_ERROR, error=_describe(exc), duration=duration)

    def _classify(
        self,
        resp: http.client.HTTPResponse,
        raw: bytes,
        unfinished: bool,
        timed_out: bool,
        started: float,
    ) -> Response:
        """Turn an answer into the attempt's result."""
        duration = _since(started)
        status = resp.status
        truncated = unfinished or len(raw) > self.body_cap
        # PostgreSQL text cannot hold NUL: a binary answer must not make the attempt unrecordable.
        text = raw[: self.body_cap].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        if timed_out:
            return Response(
                AttemptResult.TIMEOUT,
                status_code=status,
                error=f"no complete answer within {self.timeout:g} s",
                duration=duration,
                body=text,
                truncated=True,
            )
        if 200 <= status < 300:
            return Response(
                AttemptResult.SUCCESS, status, duration=duration, body=text, truncated=truncated
            )
        error = f"HTTP {status}"
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return Response(
            AttemptResult.HTTP_ERROR,
            status,
            error=error,
            duration=duration,
            body=text,
            truncated=truncated,
            # RFC 9110: a wait asked with 429 (rate) and 503 (unavailable); a Retry-After on
            # any other failure (a 500, a redirect) is not a request to wait.
            retry_after=(
                parse_retry_after(resp.getheader("retry-after"))
                if status in _ASKS_TO_WAIT
                else None
            ),
        )


def _since(started: float) -> float:
    return time.monotonic() - started


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"[:500]
