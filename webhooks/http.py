"""Outbound HTTP for deliveries: address guard, pinned connection, total timeout, capped body."""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
import urllib3.connection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from webhooks.models import AttemptResult

log = logging.getLogger(__name__)

USER_AGENT = "webhooks/0.1 (+https://www.standardwebhooks.com/)"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
        # urllib3 would quietly send to port 80 instead.
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
    default_port = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, host, port if port is not None else default_port, path)


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


def resolve(
    host: str, port: int, allow_private: bool, timeout: float = DEFAULT_DNS_TIMEOUT
) -> list[IPAddress]:
    """Resolve a host within `timeout` seconds and check every address; raise AddressRefused
    if any is refused."""
    try:
        # An address needs no lookup (nor the hand-off to a lookup thread, on every attempt).
        infos = [(0, 0, 0, "", (str(ipaddress.ip_address(host)), port))]
    except ValueError:
        infos = []
    try:
        infos = infos or _lookup(host, port, timeout)
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

    urllib3's timeouts bound each socket operation only: a subscriber that sends one header
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


def _watch(connection: Any) -> _Watch | None:
    watch: _Watch | None = getattr(_current, "watch", None)
    if watch is not None:
        watch.add(connection)
    return watch


class _Watched:
    """Puts each connection an attempt uses, new or kept alive, under the attempt's deadline
    (mixed into urllib3's connection classes; for TLS, the handshake is under it too)."""

    def _new_conn(self) -> socket.socket:
        watch = _watch(self)
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        if watch is not None and watch.fired:
            sock.close()
            raise ConnectTimeoutError(self, "the attempt's deadline passed while connecting")
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class Client:
    """Sends one POST at a time to an address checked just before, keeping connections alive.

    The whole attempt (lookup, connect, send, response headers and the capped body) ends within
    `timeout` seconds, and no error escapes `post`: each becomes a failed Response.
    """

    def __init__(
        self,
        timeout: float,
        allow_private: bool,
        body_cap: int,
        max_pools: int = 128,
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
    ):
        self.timeout = timeout
        self.allow_private = allow_private
        self.body_cap = body_cap
        self.max_pools = max_pools
        self.dns_timeout = dns_timeout
        self._pools: OrderedDict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = (
            OrderedDict()
        )

    def _pool(self, target: Target, ip: IPAddress) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, str(ip), target.port, target.host)
        pool = self._pools.get(key)
        if pool is not None:
            self._pools.move_to_end(key)
            return pool
        # Connect to the address we checked, never to a second lookup of the name (DNS rebinding).
        common: dict[str, Any] = {
            "host": str(ip),
            "port": target.port,
            "maxsize": 4,
            "retries": False,
        }
        if target.scheme == "https":
            pool = _HTTPSPool(**common, server_hostname=target.host, assert_hostname=target.host)
        else:
            pool = _HTTPPool(**common)
        self._pools[key] = pool
        while len(self._pools) > self.max_pools:
            _, old = self._pools.popitem(last=False)
            old.close()
        return pool

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
        watch = _Watch(deadline)
        _current.watch = watch
        _REAPER.add(watch)
        try:
            resp = self._send(target, addresses[0], body, headers, deadline)
            raw, ending = self._read_capped(resp, deadline)
        except Exception as exc:
            cut = watch.finish()
            return self._failure(exc, cut, started)
        finally:
            _current.watch = None
        cut = watch.finish()
        if ending == "end" and not cut:
            resp.release_conn()
        else:
            resp.close()  # unread bytes make the connection unusable for the next request
        timed_out = cut or ending == "deadline" or _since(started) > self.timeout
        return self._classify(resp, raw, ending != "end", timed_out, started)

    def _send(
        self,
        target: Target,
        ip: IPAddress,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
    ) -> urllib3.BaseHTTPResponse:
        """Connect (or reuse a connection), send, and read the response headers."""
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port not in (80, 443):
            host_header += f":{target.port}"
        send_headers = {**headers, "host": host_header, "user-agent": USER_AGENT}
        remaining = max(deadline - time.monotonic(), 0.001)
        return self._pool(target, ip).urlopen(
            "POST",
            target.path,
            body=body,
            headers=send_headers,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(connect=remaining, read=remaining),
            preload_content=False,
            assert_same_host=False,
        )

    def _read_capped(self, resp: urllib3.BaseHTTPResponse, deadline: float) -> tuple[bytes, str]:
        """Read at most body_cap + 1 bytes of the body; say how reading ended: "end", "cap",
        "deadline" or "broken" (the connection failed mid-body)."""
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= self.body_cap:
                if time.monotonic() > deadline:
                    return b"".join(chunks), "deadline"
                chunk = resp.read(1024, decode_content=True)
                if not chunk:
                    return b"".join(chunks), "end"
                chunks.append(chunk)
                size += len(chunk)
        except (ReadTimeoutError, ProtocolError, HTTPError, OSError):
            return b"".join(chunks), "broken"
        return b"".join(chunks), "cap"  # the rest is never read

    def _failure(self, exc: Exception, cut: bool, started: float) -> Response:
        """Turn an error before the response headers arrived into a failed attempt."""
        duration = _since(started)
        if cut or duration >= self.timeout:
            error = f"no complete answer within {self.timeout:g} s"
            return Response(AttemptResult.TIMEOUT, error=error, duration=duration)
        if isinstance(exc, NewConnectionError):
            # Before the timeouts: urllib3 2 makes a refused connection a ConnectTimeoutError.
            return Response(AttemptResult.CONNECTION_ERROR, error=_describe(exc), duration=duration)
        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            return Response(AttemptResult.TIMEOUT, error=_describe(exc), duration=duration)
        if not isinstance(exc, ProtocolError | SSLError | HTTPError | OSError):
            log.exception("unexpected error in an attempt", exc_info=exc)
        return Response(AttemptResult.CONNECTION_ERROR, error=_describe(exc), duration=duration)

    def _classify(
        self,
        resp: urllib3.BaseHTTPResponse,
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
            retry_after=parse_retry_after(resp.headers.get("retry-after")),
        )


def _since(started: float) -> float:
    return time.monotonic() - started


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"[:500]
