"""Rate limits and authentication of the /v1 API: one Redis round trip per request.

Every /v1 request is authenticated and counted before its view runs (`_gate`):

- A request with a valid API key counts against its tenant: the tenant's own
  `rate_limit_per_minute`, or WEBHOOKS_RATE_LIMIT (default 6000/minute). Costs: a request 1;
  a batch its number of events (`charge`); a replay the number of deliveries it requeues, and it
  requeues no more than the budget left (`budget`); a retry 1, the one delivery it requeues.
- A request without a valid key counts against its client address,
  WEBHOOKS_RATE_LIMIT_UNAUTHENTICATED (default 60/minute). Made-up keys share that one
  counter, and an address over it is refused before its key is looked up in PostgreSQL.

Keys found valid are cached per process (services/tenants.py); the Lua script that counts also
returns the auth version, so the cache is checked in the same round trip and a revoked key is
refused from the next request on. Windows are fixed (Redis keys that expire); the
X-RateLimit-* headers come from the counting call itself.

Redis holds only soft state here: when it is unreachable the limiter logs, counts in process
memory, authenticates against PostgreSQL on every request, and tries Redis again a second
later. A Redis outage never fails a request, least of all an ingest.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import redis
from flask import Flask, Response, g, request

from config import ConfigError, get_settings
from webhooks.api.common import db, error_response
from webhooks.services import tenants

log = logging.getLogger(__name__)

DISABLED = {"", "0", "off", "none", "false"}
LIMITED_PREFIX = "/v1/"
# Short timeouts: a dead Redis must cost a request little before the fallback takes over.
SOCKET_TIMEOUT = 0.5
RETRY_REDIS_AFTER = 1.0
TENANT_WINDOW = 60
# Like the circuit's keys ("wh:circuit:"): nothing of ours may start with "webhooks", the name
# of the Celery queue, whose keys tools list by that prefix.
KEY_PREFIX = "wh:ratelimit:"
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*(second|minute|hour|day)s?\s*$", re.I)

# KEYS[1]: the counter; KEYS[2]: the auth version. ARGV: cost, limit (0: count nothing),
# window in ms, mode ("hit": add if it fits; "peek": only tell whether it would fit; "force":
# add even past the limit). A missing version (Redis new or flushed) is set to the time, so
# caches filled before are not trusted. Returns {allowed, count, ms until reset, version}.
# A refused request adds nothing: a flood of refused requests does not push the window on.
_SCRIPT = """
local version = redis.call('GET', KEYS[2])
if not version then
  local now = redis.call('TIME')
  version = 'since-' .. now[1] .. '.' .. now[2]
  redis.call('SET', KEYS[2], version)
end
local cost, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if limit <= 0 then
  return {1, 0, 0, version}
end
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
local allowed = 1
if ARGV[4] ~= 'force' and count + cost > limit then
  allowed = 0
elseif ARGV[4] ~= 'peek' and cost > 0 then
  count = redis.call('INCRBY', KEYS[1], cost)
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
    ttl = window
  end
end
if ttl < 0 then
  ttl = window
end
return {allowed, count, ttl, version}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    amount: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.amount} per {self.seconds} s"


@dataclass(slots=True)
class State:
    """A counter after a call: what the X-RateLimit headers and a 429 say."""

    bucket: str
    limit: Limit
    allowed: bool
    count: int
    reset_in: float  # seconds
    version: str | None  # None: Redis unreachable, the count is this process's own
    per_tenant: bool

    @property
    def remaining(self) -> int:
        return max(0, self.limit.amount - self.count)


class RateLimited(Exception):
    def __init__(self, state: State, cost: int):
        super().__init__(state.bucket)
        self.state, self.cost = state, cost


def parse_limit(name: str, raw: str) -> Limit | None:
    """Read '6000/minute', '100 per second', '10/5 minutes'; None for 'off'."""
    if raw.strip().lower() in DISABLED:
        return None
    match = _LIMIT.match(raw)
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"{name} must look like '6000/minute' or 'off', got {raw!r}")
    count = int(match.group(2) or 1)
    return Limit(int(match.group(1)), count * _UNITS[match.group(3).lower()])


# -- counting ----------------------------------------------------------------------------------
class _Memory:
    """Fixed windows in this process: the fallback while Redis is unreachable."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def call(self, bucket: str, cost: int, limit: Limit, mode: str) -> tuple[bool, int, float]:
        now = time.monotonic()
        with self._lock:
            ends, count = self._windows.get(bucket, (0.0, 0))
            if ends <= now:
                ends, count = now + limit.seconds, 0
                if len(self._windows) > 100_000:  # many addresses: forget the expired ones
                    self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
            allowed = mode == "force" or count + cost <= limit.amount
            if allowed and mode != "peek":
                count += cost
            self._windows[bucket] = (ends, count)
        return allowed, count, ends - now


_memory = _Memory()
_redis_down_until = 0.0


@lru_cache(maxsize=2)
def _script(url: str) -> Any:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
    )
    return client.register_script(_SCRIPT)


def count(bucket: str, cost: int, limit: Limit | None, mode: str = "hit") -> State:
    """Count `cost` against a bucket and read the auth version, in one round trip.

    With no limit, only the version is read (None when Redis is unreachable).
    """
    global _redis_down_until
    amount = limit.amount if limit else 0
    seconds = limit.seconds if limit else 1
    if time.monotonic() >= _redis_down_until:
        try:
            allowed, counted, ttl_ms, version = _script(get_settings().redis_url)(
                keys=[KEY_PREFIX + bucket, tenants.AUTH_VERSION_KEY],
                args=[cost, amount, seconds * 1000, mode],
            )
        except redis.RedisError as exc:
            _redis_down_until = time.monotonic() + RETRY_REDIS_AFTER
            log.warning("rate limit storage unreachable, counting in memory: %s", exc)
        else:
            if limit is None:
                return State(bucket, Limit(0, 1), True, 0, 0, version.decode(), False)
            return State(
                bucket,
                limit,
                bool(allowed),
                int(counted),
                int(ttl_ms) / 1000,
                version.decode(),
                bucket.startswith("t:"),
            )
    if limit is None:
        return State(bucket, Limit(0, 1), True, 0, 0, None, False)
    allowed, counted, reset_in = _memory.call(bucket, cost, limit, mode)
    return State(bucket, limit, allowed, counted, reset_in, None, bucket.startswith("t:"))


# -- the request gate --------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    default: Limit | None
    unauthenticated: Limit | None
    cache_seconds: float

    def for_tenant(self, credential: tenants.Credential) -> Limit | None:
        return _tenant_limit(self.default, credential.rate_limit_per_minute)


def _tenant_limit(default: Limit | None, per_minute: int | None) -> Limit | None:
    """A tenant's limit: its own per minute, or the default; none at all if limits are off."""
    if per_minute is not None and default is not None:
        return Limit(per_minute, TENANT_WINDOW)
    return default


def _tenant_bucket(credential: tenants.Credential, limit: Limit | None) -> str:
    return _bucket_of(credential.tenant_id, limit)


def _bucket_of(tenant_id: uuid.UUID, limit: Limit | None) -> str:
    return f"t:{tenant_id}:{limit.seconds if limit else 0}"


def _default_limit() -> Limit | None:
    return parse_limit("WEBHOOKS_RATE_LIMIT", get_settings().rate_limit)


def spend(tenant_id: uuid.UUID, per_minute: int | None, cost: int, force: bool = False) -> State:
    """Count `cost` against a tenant's API budget outside an API request (the console's and
    the portal's actions that make events or send deliveries again); `per_minute` is the
    tenant's own limit, if it has one."""
    limit = _tenant_limit(_default_limit(), per_minute)
    return count(_bucket_of(tenant_id, limit), cost, limit, "force" if force else "hit")


def remaining(tenant_id: uuid.UUID, per_minute: int | None) -> int | None:
    """What a tenant may still spend in this window, or None for no limit."""
    limit = _tenant_limit(_default_limit(), per_minute)
    if limit is None:
        return None
    return count(_bucket_of(tenant_id, limit), 0, limit, "peek").remaining


def _address_bucket(limit: Limit | None) -> str:
    return f"a:{request.remote_addr or 'unknown'}:{limit.seconds if limit else 0}"


def _bearer() -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def _gate(limits: Limits) -> None:
    """Authenticate this request (cache first) and count it; raise RateLimited if over."""
    g.auth = None
    key = _bearer()
    if key is None or not tenants.well_formed(key):
        _admit(count(_address_bucket(limits.unauthenticated), 1, limits.unauthenticated), 1)
        return
    digest = tenants.hash_key(key)
    cached = tenants.key_cache.get(digest)
    state: State | None = None
    if cached is not None:
        credential, version = cached
        limit = limits.for_tenant(credential)
        state = count(_tenant_bucket(credential, limit), 1, limit)
        if state.version == version:
            g.auth = credential
            _admit(state, 1)
            return
        tenants.key_cache.drop(digest)  # revoked, or a limit changed, or Redis unreachable
    # Not cached: look the key up, unless this address has used up its budget of failures.
    address_limit = limits.unauthenticated
    peek = count(_address_bucket(address_limit), 1, address_limit, "peek")
    _admit(peek, 1)
    found = tenants.lookup(db(), digest)
    if found is None:
        _admit(count(_address_bucket(address_limit), 1, address_limit), 1)
        return
    if peek.version is not None:
        tenants.key_cache.put(digest, found, peek.version, limits.cache_seconds)
    g.auth = found
    limit = limits.for_tenant(found)
    bucket = _tenant_bucket(found, limit)
    if state is not None and state.bucket == bucket and state.allowed and limit is not None:
        # Counted above already, under the limit cached before: judge it by the one just read.
        state = replace(state, limit=limit, allowed=state.count <= limit.amount)
    else:
        state = count(bucket, 1, limit)
    _admit(state, 1)


def _admit(state: State, cost: int) -> None:
    """Remember the counter for the headers; raise RateLimited if it refused."""
    if state.limit.amount == 0:
        return
    g.rate_state = state
    if not state.allowed:
        raise RateLimited(state, cost)


def charge(cost: int, force: bool = False) -> None:
    """Count `cost` more against this request's tenant (a batch's further events, a replay's
    further deliveries); raise RateLimited, counting nothing, if it does not fit."""
    state: State | None = g.get("rate_state")
    if cost <= 0 or state is None or not state.per_tenant:
        return
    after = count(state.bucket, cost, state.limit, "force" if force else "hit")
    _admit(after, cost + 1)


def budget() -> int | None:
    """Return how much this request's tenant may still spend in this window, or None for no
    limit."""
    state: State | None = g.get("rate_state")
    if state is None or not state.per_tenant:
        return None
    return state.remaining


def init_rate_limiting(app: Flask) -> Limits:
    """Authenticate and count every /v1 request before its view; return the limits."""
    settings = get_settings()
    limits = Limits(
        _default_limit(),
        parse_limit("WEBHOOKS_RATE_LIMIT_UNAUTHENTICATED", settings.rate_limit_unauthenticated),
        settings.api_key_cache_seconds,
    )

    @app.before_request
    def _check() -> None:
        if request.path.startswith(LIMITED_PREFIX):
            _gate(limits)

    @app.after_request
    def _headers(response: Response) -> Response:
        state: State | None = g.get("rate_state")
        if state is not None:
            response.headers["X-RateLimit-Limit"] = str(state.limit.amount)
            response.headers["X-RateLimit-Remaining"] = str(state.remaining)
            response.headers["X-RateLimit-Reset"] = str(math.ceil(time.time() + state.reset_in))
        return response

    @app.errorhandler(RateLimited)
    def _too_many(exc: RateLimited) -> Response:
        state = exc.state
        wait = max(1, math.ceil(state.reset_in))
        who = "this tenant" if state.per_tenant else "this client address without a valid API key"
        details: dict[str, Any] = {"limit": str(state.limit), "retry_after": wait}
        if exc.cost > state.limit.amount:
            message = (
                f"this request costs {exc.cost}, more than the whole limit of {who} "
                f"({state.limit}); send fewer events per request"
            )
            details["cost"] = exc.cost
        else:
            message = f"too many requests for {who} (limit {state.limit}); retry in {wait} s"
            if exc.cost > 1:
                details["cost"] = exc.cost
        response = error_response(429, "rate_limited", message, details)
        response.headers["Retry-After"] = str(wait)
        return response

    return limits
