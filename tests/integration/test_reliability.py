"""Crashes and outages with real processes: nothing accepted is lost, every webhook-id arrives.

Each test sends events through the API to a receiver on loopback and checks, by `webhook-id`
at the receiver and through the API, that every delivery arrived and ended `delivered`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.integration.conftest import publish, subscribe
from tests.support import Received, Receiver, Reply, wait_until

# A claim's lease: the HTTP timeout of FAST_ENV (3 s) plus this margin.
LEASE_MARGIN = 2.0
LEASE = 3.0 + LEASE_MARGIN


def _get(client: Any, tenant: dict[str, Any], path: str) -> Any:
    resp = client.get(path, headers=tenant["headers"])
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _deliveries(client: Any, tenant: dict[str, Any], **query: str) -> list[dict[str, Any]]:
    """Every delivery of the tenant through the API, following the cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "500", **query}
        if cursor:
            params["cursor"] = cursor
        qs = "&".join(f"{k}={v}" for k, v in params.items())
        page = _get(client, tenant, f"/v1/deliveries?{qs}")
        items.extend(page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


def _ok_ids(receipts: list[Received]) -> set[str]:
    """The webhook-ids the receiver answered with a 2xx."""
    return {r.webhook_id for r in receipts if 200 <= r.status < 300}


def _all_delivered(
    client: Any,
    tenant: dict[str, Any],
    receiver: Receiver,
    path: str,
    expected: set[str],
    timeout: float = 60,
) -> None:
    """Wait until every expected webhook-id got a 2xx at `path` and is `delivered` in the API."""
    wait_until(
        lambda: expected <= _ok_ids(receiver.at(path)),
        timeout=timeout,
        message=f"{len(expected - _ok_ids(receiver.at(path)))} webhook-ids at {path}",
    )

    def api_done() -> bool:
        statuses = {d["id"]: d["status"] for d in _deliveries(client, tenant)}
        return all(statuses.get(i) == "delivered" for i in expected)

    wait_until(api_done, timeout=30, interval=0.3, message="deliveries delivered in the API")


def _event_delivery_ids(
    client: Any, tenant: dict[str, Any], event_ids: list[str], subscription_id: str
) -> set[str]:
    ids = set()
    for event_id in event_ids:
        detail = _get(client, tenant, f"/v1/events/{event_id}")
        ids |= {d["id"] for d in detail["deliveries"] if d["subscription_id"] == subscription_id}
    assert len(ids) == len(event_ids)
    return ids


# 1 ---------------------------------------------------------------------------------------------


def test_killed_pool_child_delivery_is_resent_after_its_lease_with_same_webhook_id(
    client, tenant, receiver, start_worker, start_beat
):
    arrivals: list[float] = []

    def first_hangs(item: Received) -> Reply:
        arrivals.append(item.at)
        return Reply(204, delay=30) if len(arrivals) == 1 else Reply(204)

    receiver.plan("/slow", then=first_hangs)
    sub = subscribe(client, tenant, receiver.url("/slow"))
    worker = start_worker(concurrency=1, WEBHOOKS_LEASE_MARGIN_SECONDS=LEASE_MARGIN)
    start_beat(WEBHOOKS_LEASE_MARGIN_SECONDS=LEASE_MARGIN)
    (child,) = worker.children()

    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    wait_until(lambda: arrivals, timeout=30, message="the first request at the receiver")
    os.kill(child, 9)
    killed_at = time.time()

    (delivery_id,) = _event_delivery_ids(client, tenant, [event["id"]], sub["id"])
    _all_delivered(client, tenant, receiver, "/slow", {delivery_id}, timeout=60)
    assert child not in worker.children(), "the pool child survived its kill -9"

    # The hung first request is recorded when its reply delay ends; the resend is already in.
    ok = [r for r in receiver.at("/slow") if r.status == 204 and r.at > killed_at]
    assert [r.webhook_id for r in ok] == [delivery_id]
    assert ok[0].at >= arrivals[0] + LEASE - 0.5, "sent again before the lease ran out"
    assert len(arrivals) == 2
    detail = _get(client, tenant, f"/v1/deliveries/{delivery_id}")
    assert detail["status"] == "delivered"
    assert [a["result"] for a in detail["attempts"]] == ["lease_expired", "success"]


# 2 ---------------------------------------------------------------------------------------------


def _fail_first_receipt(receiver: Receiver, path: str) -> None:
    """Answer 500 to the first receipt of each webhook-id at `path`, 204 afterwards."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def reply(item: Received) -> Reply:
        with lock:
            seen[item.webhook_id] += 1
            return Reply(500) if seen[item.webhook_id] == 1 else Reply(204)

    receiver.plan(path, then=reply)


def test_whole_worker_killed_during_retry_countdowns_new_worker_delivers_all(
    client, tenant, receiver, start_worker, start_beat
):
    _fail_first_receipt(receiver, "/r")
    sub = subscribe(client, tenant, receiver.url("/r"))
    # Countdowns long enough that every retry still waits in the worker when it dies; a circuit
    # that stays closed, so no delivery parks instead.
    env = {"WEBHOOKS_RETRY_DELAYS": "4,4", "WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD": "50"}
    worker = start_worker(concurrency=2, **env)
    events = [publish(client, tenant, "order.created", {"n": i}).get_json() for i in range(8)]
    ids = _event_delivery_ids(client, tenant, [e["id"] for e in events], sub["id"])

    def all_waiting() -> bool:
        statuses = [d["status"] for d in _deliveries(client, tenant)]
        return statuses.count("retrying") == len(ids)

    wait_until(all_waiting, timeout=30, interval=0.2, message="every delivery in its countdown")
    worker.kill()  # kill -9 of the main process and its pool children together
    killed_at = time.time()
    assert _ok_ids(receiver.at("/r")) == set()

    start_worker(concurrency=2, name="replacement", **env)
    start_beat(**env)
    _all_delivered(client, tenant, receiver, "/r", ids, timeout=60)
    assert all(r.at > killed_at for r in receiver.at("/r") if r.status == 204)
    assert [d for d in _deliveries(client, tenant) if d["status"] == "failed"] == []


# 3 ---------------------------------------------------------------------------------------------


@pytest.fixture
def restartable_redis(servers, tmp_path):
    """The session's embedded Redis, or one of this test's own when TEST_REDIS_URL is in use."""
    from scripts.embedded import EmbeddedRedis
    from tests.conftest import reset_settings

    if servers.redis is not None:
        yield servers.redis
        return
    own = EmbeddedRedis(tmp_path / "redis")
    url = own.start()
    saved = os.environ["REDIS_URL"]
    os.environ["REDIS_URL"] = url
    reset_settings()
    try:
        yield own
    finally:
        own.stop()
        os.environ["REDIS_URL"] = saved
        reset_settings()


def test_redis_restarted_empty_loses_nothing_and_ingest_stays_accepted(
    client, tenant, receiver, start_worker, start_beat, restartable_redis
):
    redis_server = restartable_redis
    # The circuit never opens here: the resent backlog's first receipts at /b all fail at once.
    env = {
        "REDIS_URL": redis_server.url,
        "WEBHOOKS_LEASE_MARGIN_SECONDS": LEASE_MARGIN,
        "WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD": "100000",
    }
    receiver.plan("/a", then=Reply(204, delay=0.2))
    _fail_first_receipt(receiver, "/b")
    sub_a = subscribe(client, tenant, receiver.url("/a"))
    sub_b = subscribe(client, tenant, receiver.url("/b"))
    start_worker(concurrency=2, **env)
    start_beat(**env)

    answers: list[int] = []
    event_ids: list[str] = []

    def send(n: int) -> None:
        resp = publish(client, tenant, "order.created", {"n": n})
        answers.append(resp.status_code)
        if resp.status_code == 202:
            event_ids.append(resp.get_json()["id"])

    for n in range(10):
        send(n)
    # Some deliveries wait in the queue, some in retry countdowns, some are in flight.
    redis_server.stop()
    down_until = time.monotonic() + 4
    n = 10
    while time.monotonic() < down_until:
        send(n)
        n += 1
        time.sleep(0.2)
    redis_server.start()  # empty: no queue, no unacknowledged messages, no circuit state
    for extra in range(10):
        send(n + extra)
        time.sleep(0.1)

    assert answers == [202] * len(answers), Counter(answers)
    for path, sub in (("/a", sub_a), ("/b", sub_b)):
        ids = _event_delivery_ids(client, tenant, event_ids, sub["id"])
        _all_delivered(client, tenant, receiver, path, ids, timeout=60)
    assert [d for d in _deliveries(client, tenant) if d["status"] == "failed"] == []
