"""Outbound HTTP for deliveries: address guard, pinned connection, total timeout, capped body."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from webhooks.models import AttemptResult

USER_AGENT = "webhooks/0.1 (+https://www.standardwebhooks.com/)"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215 local-use translation: it reaches whatever IPv4 network the local translator serves,
# and the IPv4 address sits in different bits per prefix length, so refuse the whole range.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class AddressRefused(ValueError):
    """The URL is not one we may send to."""


def refusal_reason(ip: IPAddress) -> str | None:
    """Say why an address may not be a webhook target, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if ip.is_site_local:
            return "a site-local address"
        embedded: ipaddress.IPv4Address | None = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip.teredo is not None:
            return "a Teredo address"
        if embedded is not None:
            reason = refusal_reason(embedded)
            return f"an IPv6 form of {embedded} ({reason})" if reason else None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_reserved:  # before is_private, which also holds for 240.0.0.0/4
        return "a reserved address"
    if ip.is_private:
        return "a private address"
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
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default_port, path)


def resolve(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """Resolve a host and check every address; raise AddressRefused if any is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"the host {host!r} does not resolve: {exc}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise AddressRefused(f"the host {host!r} has no address")
    if not allow_private:
        for ip in addresses:
            reason = refusal_reason(ip)
            if reason:
                # Refuse the whole host: a name with one internal address is an internal name.
                raise AddressRefused(f"{host} resolves to {ip}, {reason}")
    return addresses


def check_url(url: str, allow_private: bool) -> Target:
    """Validate a subscriber URL and every address its host resolves to."""
    target = parse_url(url)
    resolve(target.host, target.port, allow_private)
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


class Client:
    """Sends one POST at a time to an address checked just before, keeping connections alive."""

    def __init__(self, timeout: float, allow_private: bool, body_cap: int, max_pools: int = 128):
        self.timeout = timeout
        self.allow_private = allow_private
        self.body_cap = body_cap
        self.max_pools = max_pools
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
            pool = urllib3.HTTPSConnectionPool(
                **common, server_hostname=target.host, assert_hostname=target.host
            )
        else:
            pool = urllib3.HTTPConnectionPool(**common)
        self._pools[key] = pool
        while len(self._pools) > self.max_pools:
            _, old = self._pools.popitem(last=False)
            old.close()
        return pool

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST the body; never raise for network trouble, report it in the Response."""
        started = time.monotonic()
        deadline = started + self.timeout
        try:
            target = parse_url(url)
            addresses = resolve(target.host, target.port, self.allow_private)
        except AddressRefused as exc:
            return Response(AttemptResult.REFUSED, error=str(exc), duration=0.0)
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port not in (80, 443):
            host_header += f":{target.port}"
        send_headers = {**headers, "host": host_header, "user-agent": USER_AGENT}
        ip = addresses[0]
        try:
            pool = self._pool(target, ip)
            resp = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers=send_headers,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                preload_content=False,
                assert_same_host=False,
            )
        except NewConnectionError as exc:
            # Caught first: urllib3 2 makes a refused connection a ConnectTimeoutError subclass.
            return Response(
                AttemptResult.CONNECTION_ERROR, error=_describe(exc), duration=_since(started)
            )
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            return Response(AttemptResult.TIMEOUT, error=_describe(exc), duration=_since(started))
        except (ProtocolError, SSLError, HTTPError, OSError) as exc:
            return Response(
                AttemptResult.CONNECTION_ERROR, error=_describe(exc), duration=_since(started)
            )
        chunks: list[bytes] = []
        size = 0
        truncated = False
        timed_out = False
        try:
            while size <= self.body_cap:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                chunk = resp.read(1024, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (ReadTimeoutError, ProtocolError, HTTPError, OSError):
            truncated = True
        raw = b"".join(chunks)
        if len(raw) > self.body_cap or timed_out:
            truncated = True
        if truncated:
            resp.close()  # unread bytes make the connection unusable for the next request
        else:
            resp.release_conn()
        duration = _since(started)
        status = resp.status
        # PostgreSQL text cannot hold NUL: a binary answer must not make the attempt unrecordable.
        text = raw[: self.body_cap].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        if duration > self.timeout:
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
