"""Fair, throttled delivery with two worker processes, as on two hosts.

Each test starts two Celery workers (different `-n` names) against one Redis and PostgreSQL;
limits and shares must hold across both.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from scripts.harness import WORKER_READY, Receiver, Reply, wait_until
from tests.integration.conftest import make_tenant, publish, subscribe

TWO = 2  # pool processes per worker: four slots in all


def two_workers(start_worker: Any, **env: Any) -> None:
    """Start both at once, then wait until both consume."""
    hosts = [start_worker(concurrency=TWO, name=n, wait=False, **env) for n in ("host-a", "host-b")]
    for host in hosts:
        host.wait_for_log(WORKER_READY)


def batch(client: Any, tenant: dict[str, Any], event_type: str, n: int) -> None:
    events = [{"event_type": event_type, "payload": {"i": i}} for i in range(n)]
    resp = client.post("/v1/events/batch", json={"events": events}, headers=tenant["headers"])
    assert resp.status_code == 202, resp.get_json()


def health(client: Any, tenant: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any]:
    resp = client.get(f"/v1/subscriptions/{sub['id']}/health", headers=tenant["headers"])
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def windows(times: list[float], width: float = 1.0) -> int:
    """The most receipts in any window of `width` seconds."""
    times = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


@pytest.mark.timing
def test_burst_of_one_tenant_does_not_delay_another_tenants_deliveries(
    client, receiver: Receiver, start_worker
):
    a, b = make_tenant("bursty"), make_tenant("steady")
    subscribe(client, a, receiver.url("/a"), ["bulk.created"])
    subscribe(client, b, receiver.url("/b"), ["order.paid"])
    two_workers(start_worker)
    for _ in range(10):
        batch(client, a, "bulk.created", 500)
    sent: dict[int, float] = {}
    for i in range(12):
        sent[i] = time.time()
        assert publish(client, b, "order.paid", {"n": i}).status_code == 202
        time.sleep(0.25)
    # The burst was still draining when B sent its last event: B really went past it.
    assert len(receiver.at("/a")) < 4000, "the burst drained too fast to prove anything"
    got = receiver.wait_for("/b", 12, timeout=30)
    latency = {r.json["data"]["n"]: r.at - sent[r.json["data"]["n"]] for r in got}
    assert max(latency.values()) < 2.0, latency
    # ... while the burst kept draining (its full drain is the benchmarks' business).
    before = len(receiver.at("/a"))
    wait_until(lambda: len(receiver.at("/a")) > before + 50, timeout=30, message="A draining")


@pytest.mark.timing
def test_rate_limit_holds_in_every_second_across_both_workers(
    client, tenant, receiver: Receiver, start_worker
):
    subscribe(client, tenant, receiver.url("/r"), ["tick"], rate_limit=20, max_in_flight=50)
    two_workers(start_worker)
    batch(client, tenant, "tick", 100)  # five seconds' worth
    got = receiver.wait_for("/r", 100, timeout=60)
    times = [r.at for r in got]
    assert windows(times) <= 20
    # ... and not by sending far slower than asked
    assert (100 - 1) / (max(times) - min(times)) > 15


def test_max_in_flight_is_never_exceeded_across_both_workers(
    client, tenant, receiver: Receiver, start_worker
):
    receiver.plan("/slow", then=Reply(204, delay=0.3))
    sub = subscribe(client, tenant, receiver.url("/slow"), ["job"], max_in_flight=2)
    two_workers(start_worker)
    batch(client, tenant, "job", 16)
    receiver.wait_for("/slow", 16, timeout=60)
    assert receiver.max_active["/slow"] == 2
    assert health(client, tenant, sub)["scheduling"]["max_in_flight"] == 2


@pytest.mark.timing
def test_slow_subscriptions_of_one_tenant_leave_another_tenant_flowing(
    client, receiver: Receiver, start_worker
):
    a, b = make_tenant("slow"), make_tenant("quick")
    for i in range(10):
        receiver.plan(f"/slow{i}", then=Reply(204, delay=5))
        subscribe(client, a, receiver.url(f"/slow{i}"), ["report.ready"])
    subscribe(client, b, receiver.url("/quick"), ["order.paid"])
    two_workers(start_worker, WEBHOOKS_HTTP_TIMEOUT_SECONDS="8")
    batch(client, a, "report.ready", 3)  # 30 attempts of 5 s each
    slow_paths = [f"/slow{i}" for i in range(10)]
    wait_until(lambda: receiver.active(*slow_paths) >= 3, timeout=10, message="slow attempts")
    sent: dict[int, float] = {}
    slow_active: list[int] = []  # the slow tenant's attempts under way, sampled
    for i in range(10):
        sent[i] = time.time()
        assert publish(client, b, "order.paid", {"n": i}).status_code == 202
        for _ in range(4):
            slow_active.append(receiver.active(*slow_paths))
            time.sleep(0.1)
    got = receiver.wait_for("/quick", 10, timeout=30)
    latency = {r.json["data"]["n"]: r.at - sent[r.json["data"]["n"]] for r in got}
    assert max(latency.values()) < 2.0, latency
    # All the while, the slow tenant held the slots it may have (3 of 4), and no more.
    assert max(slow_active) == 3, slow_active


@pytest.mark.long
def test_flaky_subscriber_drains_and_dead_one_parks(client, tenant, receiver, start_worker):
    rng = random.Random(7)
    lock = threading.Lock()

    def flaky(_: Any) -> Reply:
        with lock:
            return Reply(500 if rng.random() < 1 / 3 else 204)

    receiver.plan("/flaky", then=flaky)
    receiver.plan("/dead", then=Reply(500))
    flaky_sub = subscribe(client, tenant, receiver.url("/flaky"), ["f"], max_in_flight=20)
    dead_sub = subscribe(client, tenant, receiver.url("/dead"), ["d"])
    # A run of 30 events a second with retries of 1 s to 8 s, at half the time scale: ten
    # retries of 0.5 s to 4 s (doubling every second one) among 450 events, 30 every half
    # second. The cooldown is far longer than the test.
    two_workers(
        start_worker,
        WEBHOOKS_RETRY_DELAYS="0.5,0.5,1,1,2,2,4,4,4,4",
        WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS="60",
    )
    batch(client, tenant, "d", 20)
    for tick in range(15):
        started = time.time()
        n = 30
        events = [{"event_type": "f", "payload": {"s": tick, "i": i}} for i in range(n)]
        resp = client.post("/v1/events/batch", json={"events": events}, headers=tenant["headers"])
        assert resp.status_code == 202
        time.sleep(max(0.0, 0.5 - (time.time() - started)))
    last_send = time.time()

    def delivered() -> int:
        return len(
            {
                (r.json["data"]["s"], r.json["data"]["i"])
                for r in receiver.at("/flaky")
                if r.status == 204
            }
        )

    wait_until(lambda: delivered() == 450, timeout=60, message="all flaky events delivered")
    assert time.time() - last_send < 60
    assert health(client, tenant, flaky_sub)["circuit"]["state"] == "closed"
    dead = health(client, tenant, dead_sub)
    assert dead["circuit"]["state"] == "open"
    assert dead["parked"] > 0
    # Parked deliveries spend no attempts: the dead endpoint saw a handful, not 20 x 11.
    assert len(receiver.at("/dead")) <= 10


def test_429_lowers_the_effective_rate_and_successes_bring_it_back(
    client, tenant, receiver: Receiver, start_worker
):
    receiver.plan("/busy", *[Reply(429)] * 3, then=Reply(204))
    sub = subscribe(client, tenant, receiver.url("/busy"), ["e"], max_in_flight=4)
    two_workers(start_worker)
    batch(client, tenant, "e", 6)
    lowered = wait_until(
        lambda: health(client, tenant, sub)["scheduling"]["effective_rate_limit"],
        timeout=20,
        interval=0.05,
        message="a lowered rate",
    )
    assert lowered >= 1
    assert health(client, tenant, sub)["scheduling"]["effective_max_in_flight"] < 4
    receiver.wait_for("/busy", 9, timeout=30)
    for _ in range(4):
        batch(client, tenant, "e", 25)
    receiver.wait_for("/busy", 109, timeout=60)
    state = wait_until(
        lambda: (
            (s := health(client, tenant, sub)["scheduling"])["effective_rate_limit"] is None and s
        ),
        timeout=20,
        message="the rate restored",
    )
    assert state["effective_max_in_flight"] == 4
