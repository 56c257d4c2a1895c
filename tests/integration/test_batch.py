"""POST /v1/events/batch: fan-out, all-or-nothing, idempotency per event, and its limits."""

from __future__ import annotations

import os
from typing import Any

from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import counts


def _batch(client: Any, tenant: dict[str, Any], events: list[dict[str, Any]], **kw: Any) -> Any:
    return client.post("/v1/events/batch", json={"events": events}, headers=tenant["headers"], **kw)


def test_batch_fans_out_each_event_and_every_delivery_arrives_once(
    client, tenant, receiver, start_worker
):
    subscribe(client, tenant, receiver.url("/orders"), ["order.created"])
    subscribe(client, tenant, receiver.url("/all"), ["*"])
    start_worker()
    resp = _batch(
        client,
        tenant,
        [
            {"event_type": "order.created", "payload": {"n": 1}},
            {"event_type": "user.deleted", "payload": {"n": 2}},
            {"event_type": "order.created", "payload": {"n": 3}},
        ],
    )
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert [item["deliveries"] for item in body["data"]] == [2, 1, 2]
    assert [item["event_type"] for item in body["data"]] == [
        "order.created",
        "user.deleted",
        "order.created",
    ]
    assert body["created"] == 3 and body["replayed"] == 0 and body["deliveries"] == 5
    ids = [item["id"] for item in body["data"]]

    orders = receiver.wait_for("/orders", 2)
    everything = receiver.wait_for("/all", 3)
    assert sorted(r.json["id"] for r in orders) == sorted([ids[0], ids[2]])
    assert sorted(r.json["id"] for r in everything) == sorted(ids)
    assert {r.json["data"]["n"] for r in everything} == {1, 2, 3}
    detail = client.get(f"/v1/events/{ids[1]}", headers=tenant["headers"]).get_json()
    assert detail["payload"] == {"n": 2} and len(detail["deliveries"]) == 1


def test_one_invalid_event_rejects_the_batch_naming_its_index_and_field(client, tenant, receiver):
    subscribe(client, tenant, receiver.url("/all"))
    resp = _batch(
        client,
        tenant,
        [
            {"event_type": "ok.one", "payload": {}},
            {"event_type": "bad type!", "payload": {}},
            {"event_type": "ok.two"},
        ],
    )
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error"
    fields = error["details"]["fields"]["events"]
    assert set(fields) == {"1", "2"}
    assert "event_type" in fields["1"] and "payload" in fields["2"]
    assert counts("events", "deliveries") == (0, 0)


def test_key_reused_with_another_event_rejects_the_whole_batch(client, tenant, receiver):
    subscribe(client, tenant, receiver.url("/all"))
    first = _batch(client, tenant, [{"event_type": "a", "payload": 1, "idempotency_key": "k1"}])
    assert first.status_code == 202
    before = counts("events", "deliveries")
    resp = _batch(
        client,
        tenant,
        [
            {"event_type": "a", "payload": 10, "idempotency_key": "fresh"},
            {"event_type": "b", "payload": 20},
            {"event_type": "a", "payload": 2, "idempotency_key": "k1"},
        ],
    )
    assert resp.status_code == 409
    error = resp.get_json()["error"]
    assert error["details"]["index"] == 2
    assert error["details"]["idempotency_key"] == "k1"
    assert error["details"]["event_id"] == first.get_json()["data"][0]["id"]
    assert counts("events", "deliveries") == before  # the two valid events were not written either
    retry = _batch(client, tenant, [{"event_type": "a", "payload": 10, "idempotency_key": "fresh"}])
    assert retry.get_json()["data"][0]["replayed"] is False


def test_replayed_batch_returns_the_same_events_and_creates_nothing(client, tenant, receiver):
    subscribe(client, tenant, receiver.url("/all"))
    events = [
        {"event_type": "a", "payload": {"i": i, "x": [1, 2]}, "idempotency_key": f"k{i}"}
        for i in range(3)
    ] + [{"event_type": "a", "payload": "no key"}]
    first = _batch(client, tenant, events).get_json()
    assert counts("events", "deliveries") == (4, 4)
    # The same events spelled differently (key order) are the same events.
    respelled = [dict(reversed(list(e.items()))) for e in events[:3]]
    respelled[0]["payload"] = {"x": [1, 2], "i": 0}
    second = _batch(client, tenant, [*respelled, {"event_type": "a", "payload": "new"}])
    assert second.status_code == 202
    body = second.get_json()
    assert [d["id"] for d in body["data"][:3]] == [d["id"] for d in first["data"][:3]]
    assert [d["replayed"] for d in body["data"]] == [True, True, True, False]
    assert [d["deliveries"] for d in body["data"]] == [1, 1, 1, 1]
    assert body["created"] == 1 and body["replayed"] == 3 and body["deliveries"] == 1
    assert counts("events", "deliveries") == (5, 5)


def test_batch_and_single_endpoint_share_idempotency_keys(client, tenant, receiver):
    subscribe(client, tenant, receiver.url("/all"))
    single = publish(client, tenant, "a.b", {"v": 1}, **{"Idempotency-Key": "shared"})
    assert single.status_code == 202
    same = _batch(
        client, tenant, [{"event_type": "a.b", "payload": {"v": 1}, "idempotency_key": "shared"}]
    )
    assert same.get_json()["data"][0]["id"] == single.get_json()["id"]
    assert same.get_json()["data"][0]["replayed"] is True
    other = _batch(
        client, tenant, [{"event_type": "a.b", "payload": {"v": 2}, "idempotency_key": "shared"}]
    )
    assert other.status_code == 409
    assert counts("events", "deliveries") == (1, 1)


def test_repeated_key_within_a_batch_is_refused(client, tenant):
    resp = _batch(
        client,
        tenant,
        [
            {"event_type": "a", "payload": 1, "idempotency_key": "dup"},
            {"event_type": "a", "payload": 1, "idempotency_key": "dup"},
        ],
    )
    assert resp.status_code == 422
    assert "idempotency_key" in resp.get_json()["error"]["details"]["fields"]["events"]["1"]
    assert counts("events", "deliveries") == (0, 0)


def test_batch_limits_count_body_and_event_size(client, tenant):
    too_many = _batch(client, tenant, [{"event_type": "a", "payload": i} for i in range(501)])
    assert too_many.status_code == 422
    assert "events" in too_many.get_json()["error"]["details"]["fields"]
    assert _batch(client, tenant, []).status_code == 422
    assert (
        client.post(
            "/v1/events/batch", json=[{"event_type": "a", "payload": 1}], headers=tenant["headers"]
        ).status_code
        == 422
    )
    assert (
        client.post(
            "/v1/events/batch", data="{}", headers=tenant["headers"], content_type="text/plain"
        ).status_code
        == 415
    )
    bad_key = _batch(client, tenant, [{"event_type": "a", "payload": 1, "idempotency_key": ""}])
    assert bad_key.status_code == 422

    big = "x" * (600 << 10)
    over_body = _batch(client, tenant, [{"event_type": "a", "payload": big} for _ in range(2)])
    assert over_body.status_code == 413
    assert over_body.get_json()["error"]["details"]["limit"] == 1 << 20

    os.environ["WEBHOOKS_MAX_PAYLOAD_BYTES"] = "1000"
    reset_settings()
    try:
        small = [{"event_type": "a", "payload": "y" * 600} for _ in range(3)]
        small[1]["payload"] = "y" * 1200
        over_event = _batch(client, tenant, small)
        assert over_event.status_code == 413
        assert over_event.get_json()["error"]["details"] == {"index": 1, "limit": 1000}
        small[1]["payload"] = "y" * 600
        assert _batch(client, tenant, small).status_code == 202  # 1800 bytes: batch is fine
    finally:
        os.environ.pop("WEBHOOKS_MAX_PAYLOAD_BYTES")
        reset_settings()
    assert counts("events", "deliveries") == (3, 0)


def test_batch_needs_an_api_key(client):
    resp = client.post("/v1/events/batch", json={"events": [{"event_type": "a", "payload": 1}]})
    assert resp.status_code == 401


def test_full_batch_is_delivered_once_each_in_publish_order(client, tenant, receiver, start_worker):
    subscribe(client, tenant, receiver.url("/seq"), ["seq"])
    resp = _batch(client, tenant, [{"event_type": "seq", "payload": {"n": n}} for n in range(500)])
    assert resp.status_code == 202
    start_worker(concurrency=1)  # one process takes the messages in queue order
    got = receiver.wait_for("/seq", 500, timeout=60)
    assert [r.json["data"]["n"] for r in got] == list(range(500))
    assert len({r.webhook_id for r in got}) == 500


def test_task_messages_match_what_celery_itself_sends(servers):
    """dispatch writes the broker messages itself (one LPUSH per batch); they must be the
    messages Celery's send_task writes, but for their unique IDs."""
    import json

    import redis

    from webhooks import dispatch

    broker = redis.Redis.from_url(servers.redis_url)
    dispatch._producer_app().send_task(dispatch.DELIVER_TASK, args=["d-1"], retry=False)
    celery_message = json.loads(broker.rpop("webhooks"))
    assert dispatch.send(dispatch.DELIVER_TASK, ["d-1"])
    ours = json.loads(broker.rpop("webhooks"))
    # A header of our own, which Celery's message lacks: empty, nobody looked at the circuit.
    assert ours["headers"].pop(dispatch.CIRCUIT_HEADER) == ""

    unique = {"id", "root_id", "correlation_id", "delivery_tag"}

    def shape(message: dict[str, Any]) -> dict[str, Any]:
        headers = {k: v for k, v in message["headers"].items() if k not in unique}
        properties = {k: v for k, v in message["properties"].items() if k not in unique}
        return {**message, "headers": headers, "properties": properties}

    assert shape(ours) == shape(celery_message)
    assert (
        ours["headers"]["id"] == ours["properties"]["correlation_id"] == ours["headers"]["root_id"]
    )
