"""The Redis client of this process (circuit state, rate limits)."""

from __future__ import annotations

from functools import lru_cache

import redis

from config import get_settings


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    """Return a client with short timeouts: Redis holds only soft state, never worth a hang."""
    # redis-py makes a fresh connection pool in a forked child, so one client per process is safe.
    return redis.Redis.from_url(
        get_settings().redis_url,
        socket_connect_timeout=1,
        socket_timeout=2,
        health_check_interval=10,
    )
