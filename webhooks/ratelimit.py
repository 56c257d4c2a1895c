"""Rate limits of the API, per API key (Flask-Limiter, counters in Redis).

One limit (WEBHOOKS_RATE_LIMIT, e.g. "600/minute"; "off" disables it) is shared by every /v1
route and counted per API key. The counter is keyed on the SHA-256 of the key, never on the key
itself, so Redis holds nothing that authenticates. Requests without a bearer key are counted per
client address. Health, metrics and the API description are never limited.

Redis holds only soft state here: when it is unreachable the limiter logs, keeps counting in
process memory, and checks now and then whether Redis is back. A Redis outage never fails a
request, least of all an ingest.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flask import Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many

from config import ConfigError, get_settings
from webhooks.api.common import error_response
from webhooks.services.tenants import hash_key

log = logging.getLogger(__name__)

DISABLED = {"", "0", "off", "none", "false"}
# Short timeouts: a dead Redis must cost a request little before the fallback takes over.
STORAGE_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
LIMITED_PREFIX = "/v1/"


def rate_limit_key() -> str:
    """Return the bucket of this request: the API key's hash, or the client address."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() == "bearer" and key:
        return "key:" + hash_key(key).hex()
    return "addr:" + (request.remote_addr or "unknown")


def init_rate_limiting(app: Flask) -> Limiter | None:
    """Attach the limiter to the app; return it, or None when limits are off."""
    raw = get_settings().rate_limit.strip()
    if raw.lower() in DISABLED:
        return None
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(
            f"WEBHOOKS_RATE_LIMIT must look like '600/minute' or 'off', got {raw!r}"
        ) from None

    limiter = Limiter(
        rate_limit_key,
        app=app,
        application_limits=[raw],
        storage_uri=get_settings().redis_url,
        storage_options=STORAGE_OPTIONS,
        strategy="fixed-window",
        key_prefix="webhooks",
        # Ours below: the limiter's own would put Retry-After on every answer, and rewrite the
        # Retry-After of a 503 to the end of the rate-limit window.
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        current = limiter.current_limit  # None where no limit applies
        if current is not None:
            try:
                response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
                response.headers["X-RateLimit-Remaining"] = str(max(0, current.remaining))
                response.headers["X-RateLimit-Reset"] = str(current.reset_at)
            except Exception:  # the storage went away mid-request: the headers are optional
                log.warning("rate limit storage unreachable while writing headers")
        return response

    @limiter.request_filter
    def _exempt() -> bool:
        return not request.path.startswith(LIMITED_PREFIX)

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> Response:
        limit = exc.limit.limit
        wait = limit.get_expiry()
        current = limiter.current_limit
        if current is not None:
            try:
                wait = math.ceil(current.window.reset_time - time.time())
            except Exception:  # storage gone since the check: the window length is an upper bound
                log.warning("rate limit storage unreachable while answering 429")
        wait = max(1, wait)
        response = error_response(
            429,
            "rate_limited",
            f"too many requests for this API key (limit {limit}); retry in {wait} s",
            {"limit": str(limit), "retry_after": wait},
        )
        response.headers["Retry-After"] = str(wait)
        return response

    return limiter
