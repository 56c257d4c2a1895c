"""The core pipeline end to end: API -> PostgreSQL -> Redis -> Celery worker -> receiver."""

from __future__ import annotations

import time

from standardwebhooks import Webhook

from tests.integration.conftest import publish, subscribe
from tests.support import Reply, wait_until


def _get(client, tenant, path):
    resp = client.get(path, headers=tenant["headers"])
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


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
        data = _get(client, tenant, f"/v1/events/{event['id']}")["deliveries"]
        return all(d["status"] == "delivered" for d in data) and data

    deliveries = wait_until(all_delivered, message="deliveries marked delivered")
    assert {d["subscription_id"] for d in deliveries} == {s["id"] for s in subs}
    time.sleep(1.0)  # a duplicate send would show up by now
    assert [len(receiver.at(f"/s{i}")) for i in range(3)] == [1, 1, 1]
