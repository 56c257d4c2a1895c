"""This process's shared clients, built once from the settings: one place to reset them."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from config import Settings, get_settings
from webhooks import dispatch
from webhooks.circuit import CircuitBreaker, failing_for
from webhooks.http import Client
from webhooks.redis_client import get_redis
from webhooks.scheduler import Scheduler

T = TypeVar("T")

# Every getter made by per_process, so that reset() forgets them all.
_getters: list[Any] = []


def per_process(build: Callable[[Settings], T]) -> Callable[[], T]:
    """Turn `build(settings)` into a getter that builds once per process, until reset()."""

    @lru_cache(maxsize=1)
    def get() -> T:
        return build(get_settings())

    _getters.append(get)
    return get


@per_process
def get_breaker(settings: Settings) -> CircuitBreaker:
    return CircuitBreaker(
        get_redis(),
        threshold=settings.circuit_failure_threshold,
        cooldown=settings.circuit_cooldown,
        probe_ttl=settings.lease_seconds,
        failing_for=failing_for(settings.retry_delays, settings.circuit_failure_threshold),
    )


@per_process
def get_client(settings: Settings) -> Client:
    return Client(
        timeout=settings.http_timeout,
        allow_private=settings.allow_private_targets,
        body_cap=settings.max_response_body,
        dns_timeout=settings.dns_timeout,
    )


@per_process
def get_scheduler(settings: Settings) -> Scheduler:
    return Scheduler(
        get_redis(),
        # A little past the PostgreSQL lease, on which the watchdog acts first.
        lease=settings.lease_seconds + 10,
        tenant_cap=settings.tenant_max_in_flight,
        # Picks send their tasks themselves (the broker is this same Redis).
        tasks=dispatch.template(dispatch.DELIVER_TASK),
    )


def reset() -> None:
    """Forget every client built from the settings (after the environment changed)."""
    from webhooks import ratelimit
    from webhooks.services import tenants

    get_settings.cache_clear()
    get_redis.cache_clear()
    for get in _getters:
        get.cache_clear()
    dispatch.reset()
    ratelimit._redis_down_until = 0.0
    tenants.key_cache.clear()
