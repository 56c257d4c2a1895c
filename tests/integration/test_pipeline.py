"""The core pipeline end to end: API -> PostgreSQL -> Redis -> Celery worker -> receiver."""

from __future__ import annotations

import itertools
import json

import pytest
from standardwebhooks import Webhook

from scripts.harness import Reply, wait_until
from tests.integration.conftest import publish, subscribe
from tests.support import assert_error, counts, delivery, get, sql


def test_event_fans_out_to_three_subscriptions_each_signed_once(
    client, tenant, receiver, start_worker
):
    subs = [subscribe(client, tenant, receiver.url(f"/s{i}"), ["order.created"]) for i in range(3)]
    start_worker()
    resp = publish(client, tenant, "order.created", {"order": 42})
    assert resp.status_code == 202
    event = resp.get_json()
    assert event["deliveries"] == 3

    for i, sub in enumerate(subs):
        (got,) = receiver.wait_for(f"/s{i}", 1)
        Webhook(sub["secret"]).verify(got.body, got.headers)
        assert got.json["id"] == event["id"]
        assert got.json["type"] == "order.created"
        assert got.json["data"] == {"order": 42}
        assert got.headers["content-type"] == "application/json"

    def all_delivered():
        data = get(client, tenant, f"/v1/events/{event['id']}")["deliveries"]
        return all(d["status"] == "delivered" for d in data) and data

    deliveries = wait_until(all_delivered, message="deliveries marked delivered")
    assert {d["subscription_id"] for d in deliveries} == {s["id"] for s in subs}
    # Each was claimed once (every send follows a claim, which counts it) and is delivered,
    # which no claim takes again: so no other send happened, nor can one happen later.
    assert sql("SELECT status, attempt_count FROM deliveries") == [("delivered", 1)] * 3
    assert [len(receiver.at(f"/s{i}")) for i in range(3)] == [1, 1, 1]


def _settled(client, tenant, event_id, status):
    def check():
        detail = delivery(client, tenant, event_id)
        return detail if detail["status"] == status else None

    return wait_until(check, timeout=40, message=f"delivery {status}")


@pytest.mark.timing
def test_receiver_failing_twice_gets_the_delivery_on_attempt_3_after_the_scheduled_waits(
    client, tenant, receiver, start_worker
):
    delays = (0.5, 1.0)
    sub = subscribe(client, tenant, receiver.url("/flaky"), ["order.created"])
    receiver.plan("/flaky", Reply(500), Reply(500), then=Reply(204))
    start_worker(WEBHOOKS_RETRY_DELAYS="0.5,1", WEBHOOKS_RETRY_JITTER="0")
    event = publish(client, tenant, "order.created", {"order": 7}).get_json()

    got = receiver.wait_for("/flaky", 3, timeout=40)
    detail = _settled(client, tenant, event["id"], "delivered")
    assert detail["attempt_count"] == 3
    assert [(a["number"], a["status_code"], a["result"]) for a in detail["attempts"]] == [
        (1, 500, "http_error"),
        (2, 500, "http_error"),
        (3, 204, "success"),
    ]
    # The waits of the schedule, measured at the receiver (generous slack for a busy machine).
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay <= gap < delay + 3.0, (gap, delay)
    # Every attempt carries the same message: same webhook-id, same body, each validly signed.
    assert {r.webhook_id for r in got} == {detail["id"]}
    assert len({r.body for r in got}) == 1
    for r in got:
        Webhook(sub["secret"]).verify(r.body, r.headers)
    # Delivered after three claims: no fourth send happened, and none can.
    assert sql("SELECT status, attempt_count FROM deliveries") == [("delivered", 3)]
    assert len(receiver.at("/flaky")) == 3


def _deliveries_to(client, tenant, event_id):
    data = get(client, tenant, f"/v1/events/{event_id}")["deliveries"]
    return {d["subscription_id"] for d in data}


def test_event_type_nobody_subscribed_to_creates_no_delivery(client, tenant):

    subscribe(client, tenant, "http://127.0.0.1:9/a", ["order.created", "order.updated"])
    before = counts("events", "deliveries")
    for event_type in ("user.deleted", "order", "order.created.v2", "Order.Created", "order.*"):
        resp = publish(client, tenant, event_type, {})
        if event_type == "order.*":
            assert resp.status_code == 422
            continue
        assert resp.status_code == 202, resp.get_json()
        event = resp.get_json()
        assert event["deliveries"] == 0
        assert _deliveries_to(client, tenant, event["id"]) == set()
    assert counts("events", "deliveries") == (before[0] + 4, before[1])


def test_subscriptions_match_an_exact_event_type_or_star_and_only_when_live(
    client, tenant, other_tenant
):
    url = "http://127.0.0.1:9/"
    exact = subscribe(client, tenant, url + "exact", ["order.created"])["id"]
    star = subscribe(client, tenant, url + "star", ["*"])["id"]
    several = subscribe(client, tenant, url + "several", ["invoice.paid", "order.created"])["id"]
    disabled = subscribe(client, tenant, url + "disabled", ["*"])["id"]
    deleted = subscribe(client, tenant, url + "deleted", ["order.created"])["id"]
    resp = client.patch(
        f"/v1/subscriptions/{disabled}", json={"status": "disabled"}, headers=tenant["headers"]
    )
    assert resp.status_code == 200
    assert client.delete(f"/v1/subscriptions/{deleted}", headers=tenant["headers"]).status_code == (
        204
    )
    subscribe(client, other_tenant, url + "other", ["*"])

    cases = {
        "order.created": {exact, star, several},
        "invoice.paid": {star, several},
        "order.updated": {star},
        "order": {star},
        "order.created.v2": {star},
    }
    for event_type, expected in cases.items():
        event = publish(client, tenant, event_type, {}).get_json()
        assert event["deliveries"] == len(expected), event_type
        assert _deliveries_to(client, tenant, event["id"]) == expected, event_type

    # Changing the filter changes what matches from then on.
    resp = client.patch(
        f"/v1/subscriptions/{exact}",
        json={"event_types": ["order.updated"]},
        headers=tenant["headers"],
    )
    assert resp.status_code == 200
    event = publish(client, tenant, "order.updated", {}).get_json()
    assert _deliveries_to(client, tenant, event["id"]) == {exact, star}


def test_idempotency_key_returns_the_same_event_and_refuses_another_body(
    client, tenant, other_tenant
):

    subscribe(client, tenant, "http://127.0.0.1:9/a", ["order.created"])
    key = {"Idempotency-Key": "order-42-created"}
    first = publish(client, tenant, "order.created", {"order": 42}, **key)
    assert first.status_code == 202
    assert first.get_json()["deliveries"] == 1
    before = counts()

    again = publish(client, tenant, "order.created", {"order": 42}, **key)
    assert again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["deliveries"] == 1
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert counts() == before

    for event_type, payload in (("order.created", {"order": 43}), ("order.updated", {"order": 42})):
        error = assert_error(publish(client, tenant, event_type, payload, **key), 409, "conflict")
        assert error["details"]["event_id"] == first.get_json()["id"]
    assert counts() == before

    # Keys belong to their tenant: the same key elsewhere is a new event.
    theirs = publish(client, other_tenant, "order.created", {"order": 42}, **key)
    assert theirs.status_code == 202
    assert theirs.get_json()["id"] != first.get_json()["id"]
    # Without a key, the same body is a new event every time.
    plain = [publish(client, tenant, "order.created", {"order": 42}).get_json() for _ in range(2)]
    assert len({p["id"] for p in plain} | {first.get_json()["id"]}) == 3


def test_the_circuit_seen_at_the_pick_reaches_the_task_which_then_skips_the_breaker(
    client, tenant, receiver, servers, start_worker
):
    """The picking script marks a task whose subscription's circuit it saw closed and clean
    (a Celery header); the worker's task reads it and does not ask the breaker again. Shown
    with a circuit opened behind the scheduler's back: the unmarked task asks and parks, the
    marked one is sent all the same."""
    import time

    import redis

    from webhooks import dispatch
    from webhooks.circuit import KEY_PREFIX

    sub = subscribe(client, tenant, receiver.url("/marked"), ["order.created"])
    for n in range(2):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    first, second = (str(r.id) for r in sql("SELECT id FROM deliveries ORDER BY id"))
    broker = redis.Redis.from_url(servers.redis_url)
    template = dispatch.template(dispatch.DELIVER_TASK)
    queued = [json.loads(m) for m in broker.lrange(template.queue, 0, -1)]
    assert {m["headers"][dispatch.CIRCUIT_HEADER] for m in queued} == {"closed"}

    broker.hset(KEY_PREFIX + sub["id"], mapping={"state": "open", "opened_at": time.time()})
    broker.delete(template.queue)
    # One at a time, the unmarked one first (the first value of an LPUSH is the first taken).
    broker.lpush(template.queue, template.render(second), template.render(first, circuit="closed"))
    start_worker(concurrency=1)

    # The unmarked one, taken first, asked the breaker and parked; the marked one was sent,
    # its success closed the circuit, and that released the parked one.
    got = receiver.wait_for("/marked", 2)
    assert [r.headers["webhook-id"] for r in got] == [first, second]
    # (the receiver has the second a moment before its attempt is recorded)
    wait_until(lambda: sql("SELECT count(*) AS n FROM attempts")[0].n == 2, 10)
