"""Ingest and routing against what a careful client may send: numbers spelled differently,
arrays nested in arrays, non-ASCII text in a batch, a schema whose check is quadratic. From an
outside review; each test failed before its fix."""

from __future__ import annotations

import json

from tests.integration.conftest import publish, subscribe
from webhooks.services.event_types import CHECK_BUDGET_SECONDS


def test_idempotent_repeat_spelling_a_number_differently_is_a_replay_not_409(client, tenant):
    # README: "Idempotency compares the event's type and payload, not the bytes of the request,
    # so the same event spelled differently is still a replay." 100, 100.0 and 1e2 are the same
    # JSON number (jsonb and the filters treat them as equal), but the hash keeps int vs float.
    subscribe(client, tenant, "http://127.0.0.1:9/x", ["order.paid"], filter={"total": 100})
    h = tenant["headers"] | {"Idempotency-Key": "order-1", "Content-Type": "application/json"}
    first = client.post(
        "/v1/events", data='{"event_type":"order.paid","payload":{"total":100}}', headers=h
    )
    assert first.status_code == 202 and first.get_json()["deliveries"] == 1
    for spelling in ("100.0", "1e2", "1.00E+2"):
        again = client.post(
            "/v1/events",
            data='{"event_type":"order.paid","payload":{"total":' + spelling + "}}",
            headers=h,
        )
        assert again.status_code == 202, (spelling, again.status_code, again.get_json())
        assert again.get_json()["id"] == first.get_json()["id"]


def test_a_comparison_on_an_array_field_does_not_look_inside_nested_arrays(client, tenant):
    # README: "Where a field holds an array, a comparison holds if it holds for one element (as in
    # MongoDB)". The elements of [[1, 2], [3, 4]] are two arrays; none of them equals 3, is > 3,
    # is in [3], or starts with "x"; and "$nin": ["x"] should hold. Lax jsonpath unwraps twice.
    subs = {
        "eq": subscribe(client, tenant, "http://127.0.0.1:9/eq", ["m"], filter={"v": 3}),
        "gt": subscribe(client, tenant, "http://127.0.0.1:9/gt", ["m"], filter={"v": {"$gt": 3}}),
        "in": subscribe(client, tenant, "http://127.0.0.1:9/in", ["m"], filter={"v": {"$in": [3]}}),
        "sw": subscribe(
            client, tenant, "http://127.0.0.1:9/sw", ["m"], filter={"s": {"$startsWith": "x"}}
        ),
        "nin": subscribe(
            client, tenant, "http://127.0.0.1:9/nin", ["m"], filter={"s": {"$nin": ["xy"]}}
        ),
    }
    resp = publish(client, tenant, "m", {"v": [[1, 2], [3, 4]], "s": [["xy"]]})
    assert resp.status_code == 202
    event_id = resp.get_json()["id"]
    got = client.get(f"/v1/events/{event_id}", headers=tenant["headers"]).get_json()
    routed = {d["subscription_id"] for d in got["deliveries"]}
    names = {name for name, sub in subs.items() if sub["id"] in routed}
    assert names == {"nin"}


def test_a_batch_event_accepted_alone_is_not_refused_as_too_large_for_non_ascii_text(
    client, tenant
):
    # A payload of 80,000 'é' is 160 kB of UTF-8: as a single event (limit 256 KiB) it is
    # accepted. In a batch whose body passes 256 KiB, each event is measured with json.dumps'
    # default ensure_ascii=True, where 'é' costs 6 bytes: 480 kB, so a 413 names it.
    event = {"event_type": "note", "payload": {"text": "é" * 80_000}}
    alone = client.post(
        "/v1/events",
        data=json.dumps(event, ensure_ascii=False).encode(),
        headers=tenant["headers"] | {"Content-Type": "application/json"},
    )
    assert alone.status_code == 202
    filler = {"event_type": "note", "payload": {"text": "a" * 120_000}}
    body = json.dumps({"events": [filler, event]}, ensure_ascii=False).encode()
    assert 262_144 < len(body) < 1 << 20
    resp = client.post(
        "/v1/events/batch",
        data=body,
        headers=tenant["headers"] | {"Content-Type": "application/json"},
    )
    assert resp.status_code == 202, resp.get_json()


def test_a_schema_check_stays_within_its_budget_for_unique_items(client, tenant):
    # services/event_types.py: CHECK_BUDGET_SECONDS = 0.5 bounds "checking one event against its
    # type's schema" so that a tenant's schema cannot hold a shared request thread. The budget is
    # checked only as each keyword starts; `uniqueItems` over objects is one keyword call that
    # compares every pair (jsonschema's uniq falls back to O(n^2) when items do not sort).
    import time

    h = tenant["headers"]
    resp = client.post(
        "/v1/event-types",
        json={"name": "bulk", "schema": {"type": "array", "uniqueItems": True}},
        headers=h,
    )
    assert resp.status_code == 201, resp.get_json()
    payload = [{"k": i} for i in range(4000)]  # ~40 kB, far under the 256 KiB limit
    started = time.monotonic()
    resp = publish(client, tenant, "bulk", payload)
    took = time.monotonic() - started
    assert resp.status_code in (202, 422)
    assert took < CHECK_BUDGET_SECONDS + 5, f"one schema check held the thread for {took:.1f} s"


def test_unique_items_compares_as_json_does(client, tenant):
    h = tenant["headers"]
    schema = {"type": "array", "uniqueItems": True}
    assert (
        client.post(
            "/v1/event-types", json={"name": "set", "schema": schema}, headers=h
        ).status_code
        == 201
    )
    assert publish(client, tenant, "set", [1, True, "1", [1], {"a": 1}]).status_code == 202
    for repeated in ([1, 1.0], [{"a": 1, "b": 2}, {"b": 2.0, "a": 1}], [[1, 2], [1, 2]]):
        resp = publish(client, tenant, "set", repeated)
        assert resp.status_code == 422, (repeated, resp.get_json())
        assert "non-unique" in resp.get_json()["error"]["message"]
