"""The rate limiter's counting script and limits, against fakeredis (its Lua runs for real)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from config import ConfigError
from webhooks import ratelimit
from webhooks.services.tenants import AUTH_VERSION_KEY, Credential, KeyCache


@pytest.fixture
def script() -> Any:
    client = fakeredis.FakeRedis()
    run = client.register_script(ratelimit._SCRIPT)

    def call(cost: int, limit: int, mode: str = "hit") -> list[Any]:
        return list(run(keys=["c", AUTH_VERSION_KEY], args=[cost, limit, 60_000, mode]))

    call.client = client  # type: ignore[attr-defined]
    return call


def test_counts_by_cost_and_refuses_without_counting_what_does_not_fit(script: Any) -> None:
    assert script(4, 10)[:2] == [1, 4]
    assert script(7, 10)[:2] == [0, 4]  # 4 + 7 > 10: refused, nothing added
    assert script(6, 10)[:2] == [1, 10]
    allowed, counted, ttl_ms, _ = script(1, 10)
    assert (allowed, counted) == (0, 10)
    assert 59_000 < ttl_ms <= 60_000  # the window's end, for Retry-After and X-RateLimit-Reset


def test_peek_tells_without_counting_and_force_counts_past_the_limit(script: Any) -> None:
    assert script(1, 2, "peek")[:2] == [1, 0]
    assert script.client.get("c") is None
    script(2, 2)
    assert script(1, 2, "peek")[:2] == [0, 2]
    assert script(5, 2, "force")[:2] == [1, 7]  # a replay's requeued deliveries, already sent


def test_the_auth_version_comes_back_and_is_set_once_when_missing(script: Any) -> None:
    first = script(1, 10)[3]
    assert first.startswith(b"since-")
    assert script(1, 10)[3] == first
    script.client.set(AUTH_VERSION_KEY, "revoked")
    assert script(1, 10)[3] == b"revoked"
    assert script(0, 0)[3] == b"revoked"  # no limit: only the version is read
    assert script.client.get("c") == b"3"
    script.client.flushall()  # versions announced before are lost: a new one, never "revoked"
    assert script(1, 10)[3] not in (first, b"revoked")


def test_the_window_expires(script: Any) -> None:
    script(3, 3)
    assert script.client.pttl("c") > 0
    script.client.delete("c")
    assert script(3, 3)[:2] == [1, 3]


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        ("6000/minute", ratelimit.Limit(6000, 60)),
        ("100 per second", ratelimit.Limit(100, 1)),
        ("10/5 minutes", ratelimit.Limit(10, 300)),
        ("3/Hour", ratelimit.Limit(3, 3600)),
        ("off", None),
        ("", None),
    ],
)
def test_limits_are_read_from_the_usual_notation(raw: str, limit: Any) -> None:
    assert ratelimit.parse_limit("X", raw) == limit


@pytest.mark.parametrize("raw", ["600", "0/minute", "-1/minute", "10/fortnight", "lots"])
def test_a_malformed_limit_stops_the_process(raw: str) -> None:
    with pytest.raises(ConfigError, match="X must look like"):
        ratelimit.parse_limit("X", raw)


def test_memory_fallback_counts_like_the_script() -> None:
    memory = ratelimit._Memory()
    limit = ratelimit.Limit(10, 60)
    assert memory.call("b", 4, limit, "hit")[:2] == (True, 4)
    assert memory.call("b", 7, limit, "hit")[:2] == (False, 4)
    assert memory.call("b", 1, limit, "peek")[:2] == (True, 4)
    assert memory.call("b", 9, limit, "force")[:2] == (True, 13)
    assert memory.call("other", 1, limit, "hit")[:2] == (True, 1)


def test_key_cache_expires_entries_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    now = [1000.0]
    monkeypatch.setattr("webhooks.services.tenants.time.monotonic", lambda: now[0])
    cache = KeyCache(size=2)
    cred = Credential(uuid.uuid4(), None)
    cache.put(b"a", cred, "v1", ttl=30)
    assert cache.get(b"a") == (cred, "v1")
    now[0] += 31
    assert cache.get(b"a") is None
    cache.put(b"a", cred, "v1", ttl=30)
    cache.put(b"b", cred, "v1", ttl=30)
    cache.put(b"c", cred, "v1", ttl=30)
    assert cache.get(b"a") is None and cache.get(b"c") is not None
    cache.put(b"d", cred, "v1", ttl=0)  # a cache of 0 seconds keeps nothing
    assert cache.get(b"d") is None


def test_limiter_keys_never_look_like_the_celery_queue() -> None:
    """Tools (the bench, operators) find the queue's lists by its name as a key prefix."""
    from config.celery import QUEUE

    assert not ratelimit.KEY_PREFIX.startswith(QUEUE)
    assert not AUTH_VERSION_KEY.startswith(QUEUE)
