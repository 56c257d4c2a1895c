"""The scheduler's and the breaker's state in a real Redis (the suite's): nothing left behind
for good, no rounding of rate spacing, no long script, no lease stuck behind a lost entry, and
no deleted subscription counted as an open circuit. From an outside review of that state; each
test failed before its fix."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis as redis_lib

from scripts.harness import Reply, wait_until
from tests.conftest import reset_settings
from tests.integration.conftest import FAST_ENV, publish, subscribe
from tests.support import sql
from webhooks import circuit as circuit_module
from webhooks.circuit import KEY_PREFIX, OPEN_SET, CircuitBreaker
from webhooks.runtime import get_breaker
from webhooks.scheduler import DRAIN_CHUNK, IDLE_TTL_SECONDS, Item, Scheduler
from webhooks.services import delivery, watchdog

NOW = 1_700_000_000.0  # a unix time of today's size: rounding shows at this magnitude


@pytest.fixture
def r(servers: Any) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(servers.redis_url)


def make(client: redis_lib.Redis, **kwargs: Any) -> Scheduler:
    kwargs.setdefault("lease", 30.0)
    kwargs.setdefault("tenant_cap", "100%")
    kwargs.setdefault("default_slots", 4)
    kwargs.setdefault("window_factor", 1.0)
    return Scheduler(client, **kwargs)


def finish(s: Scheduler, *args: Any, **kwargs: Any) -> Any:
    return s.finish_call(*args, **kwargs).run()


def test_subscriptions_that_come_and_go_leave_nothing_for_good(r: redis_lib.Redis) -> None:
    """Each subscription's and tenant's hash expires once idle for IDLE_TTL_SECONDS."""
    s = make(r, default_slots=1000)
    for i in range(500):
        sub, tenant = f"sub-{i:04d}", f"tenant-{i % 10}"
        s.enqueue([Item(f"d-{i}", sub, tenant)], now=NOW + i)
        finish(s, f"d-{i}", sub, tenant, "ok", now=NOW + i + 0.5)
    assert s.totals() == {"ready": 0, "delayed": 0, "in_flight": 0}
    assert r.scard("wh:q:known") == 0
    hashes = [*r.scan_iter("wh:q:s:*", count=1000), *r.scan_iter("wh:q:t:*", count=1000)]
    assert len(hashes) == 510
    assert all(0 < r.ttl(key) <= IDLE_TTL_SECONDS for key in hashes)


def test_an_open_circuit_whose_hash_expired_is_not_counted_open(
    r: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(circuit_module, "TTL_SECONDS", 1)
    breaker = CircuitBreaker(r, threshold=3, cooldown=60, probe_ttl=30)
    for _ in range(3):
        breaker.record_failure("sub-1")
    assert breaker.state("sub-1")["state"] == "open"
    assert breaker.open_circuits() == ["sub-1"]
    # The hash's TTL (a week in production) runs out: gone in 2.1 s at most, polled meanwhile.
    wait_until(lambda: r.exists(KEY_PREFIX + "sub-1") == 0, timeout=2.1, message="the hash gone")
    assert breaker.state("sub-1")["state"] == "closed" and r.exists(KEY_PREFIX + "sub-1") == 0
    assert breaker.open_circuits() == []
    assert r.scard(OPEN_SET) == 0


def test_rate_limit_spacing_is_not_rounded(r: redis_lib.Redis) -> None:
    s = make(r, default_slots=100_000)
    rate = 7000
    s.enqueue([Item("a-0", "a", "A", max_in_flight=1000, rate_limit=rate)], now=NOW)
    next_at = float(r.hget("wh:q:s:a", "next_at"))  # type: ignore[arg-type]
    assert next_at - NOW == pytest.approx(1.04 / rate, rel=0.01)
    # Driven as the pump thread drives it (to each wake-up), a second holds at most `rate`.
    s.enqueue(
        [Item(f"a-{i}", "a", "A", max_in_flight=1000, rate_limit=rate) for i in range(1, 9000)],
        now=NOW,
        max_picks=0,
    )
    picked, t = 1, NOW
    while t < NOW + 1.0:
        got = s.pump(now=t)
        picked += len(got.ids)
        for d in got.ids:
            finish(s, d, "a", "A", "none", now=t)
        t = max(t, got.wake_at or t + 0.001)
    assert picked <= rate


def test_draining_a_long_backlog_never_holds_redis_long(r: redis_lib.Redis, servers: Any) -> None:
    s = make(r, default_slots=1)
    sub = "slow-sub"
    ids = [f"0192f6b1-aaaa-7bbb-8ccc-{i:012d}" for i in range(100_000)]
    for start in range(0, len(ids), 5000):
        s.enqueue([Item(i, sub, "A") for i in ids[start : start + 5000]], now=NOW, max_picks=0)
    other = redis_lib.Redis.from_url(servers.redis_url)
    worst, stop = [0.0], threading.Event()

    def ping() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            other.ping()
            worst[0] = max(worst[0], time.perf_counter() - started)
            time.sleep(0.001)

    pinger = threading.Thread(target=ping)
    pinger.start()
    drained: list[str] = []
    try:
        while True:
            chunk = s.drain(sub)
            assert len(chunk) <= DRAIN_CHUNK
            drained += chunk
            if len(chunk) < DRAIN_CHUNK:
                break
    finally:
        stop.set()
        pinger.join()
    assert drained == ids  # oldest first, none picked (max_picks=0)
    assert r.llen(f"wh:q:r:{sub}") == 0
    # Each script takes a thousand: a few ms even on a loaded machine, not a second.
    assert worst[0] < 0.25, f"Redis held {worst[0] * 1000:.0f} ms by one drain script"


def test_a_lease_whose_entry_was_lost_is_never_read_again(r: redis_lib.Redis) -> None:
    """After part of Redis's state is lost, a lease without its in-flight entry must go with
    the first look, or every later look reads it again, newer leases behind it never end, and
    the next wake-up stays in the past (every worker's pump spinning)."""
    s = make(r, default_slots=1000, lease=10)
    s.enqueue([Item(f"o-{i}", "o", "A", max_in_flight=1000) for i in range(200)], now=NOW)
    r.delete("wh:q:if")  # the partial loss
    assert s.enqueue([Item("x-0", "x", "B", max_in_flight=1)], now=NOW + 1).ids == ["x-0"]
    s.enqueue([Item("x-1", "x", "B", max_in_flight=1)], now=NOW + 1)
    for k in range(50):
        later = s.pump(now=NOW + 100 + k)
    # Nothing due in the past: no wake-up at all, or one ahead.
    assert later.wake_at is None or later.wake_at > NOW + 149
    assert s.known(["x-0"]) == [False]  # its lease ended: the watchdog may send it again
    assert later.ids == ["x-1"] or s.totals()["in_flight"] == 0


def test_a_deleted_subscription_is_not_counted_as_an_open_circuit(
    client: Any, tenant: Any, receiver: Any, r: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting resets the circuit; attempts already under way end after it and open it again.
    The watchdog's next pass forgets it (nothing else would: nothing of it is ever parked)."""
    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", "3")
    reset_settings()
    receiver.plan("/dead", then=Reply(500))
    sub = subscribe(client, tenant, receiver.url("/dead"))
    for n in range(3):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    rows = sql("SELECT id FROM deliveries WHERE subscription_id = :s ORDER BY id", s=sub["id"])
    ids = [str(row.id) for row in rows]
    steps = [delivery.attempt(i) for i in ids]  # three attempts under way: all fail
    deleted = client.delete(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"])
    assert deleted.status_code == 204
    for i, step in zip(ids, steps, strict=True):  # ... and end after the delete
        delivery.conclude(i, step)
    assert r.sismember(OPEN_SET, sub["id"])  # opened again by them
    watchdog.run()
    assert not r.sismember(OPEN_SET, sub["id"])
    assert get_breaker().state(sub["id"])["state"] == "closed"


def test_a_finish_after_its_entry_was_lost_leaves_no_hash_for_good(r: redis_lib.Redis) -> None:
    s = make(r)
    s.enqueue([Item("d-1", "sub-x", "t-x")], now=NOW)
    r.flushdb()  # Redis lost everything, the attempt still ends
    finish(s, "d-1", "sub-x", "t-x", "ok", now=NOW + 1)
    assert r.exists("wh:q:s:sub-x")  # its adaptive state, written again...
    assert 0 < r.ttl("wh:q:s:sub-x") <= IDLE_TTL_SECONDS  # ...with its expiry
