"""Routing: consumers, channels and payload filters decide which subscriptions get an event."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import deliver_here, subscribe
from tests.support import counts


def _consumer(client: Any, tenant: dict[str, Any], uid: str, **extra: Any) -> dict[str, Any]:
    resp = client.post(
        "/v1/consumers",
        json={"uid": uid, "name": f"Customer {uid}", **extra},
        headers=tenant["headers"],
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _event(client: Any, tenant: dict[str, Any], event_type: str, payload: Any, **extra: Any) -> Any:
    return client.post(
        "/v1/events",
        json={"event_type": event_type, "payload": payload, **extra},
        headers=tenant["headers"],
    )


def _targets(client: Any, tenant: dict[str, Any], event_id: str) -> set[str]:
    detail = client.get(f"/v1/events/{event_id}", headers=tenant["headers"]).get_json()
    return {d["subscription_id"] for d in detail["deliveries"]}


# --- consumers -------------------------------------------------------------------------------


def test_consumer_crud_answers_as_the_contract_says(client, tenant):
    created = _consumer(client, tenant, "cus_42", metadata={"plan": "gold"})
    assert created["uid"] == "cus_42" and created["name"] == "Customer cus_42"
    assert created["metadata"] == {"plan": "gold"}
    h = tenant["headers"]
    assert client.get("/v1/consumers/cus_42", headers=h).get_json() == created

    changed = client.patch("/v1/consumers/cus_42", json={"name": "Renamed"}, headers=h)
    assert changed.status_code == 200
    assert changed.get_json()["name"] == "Renamed"
    assert changed.get_json()["metadata"] == {"plan": "gold"}

    again = client.post("/v1/consumers", json={"uid": "cus_42", "name": "x"}, headers=h)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "conflict"

    assert client.delete("/v1/consumers/cus_42", headers=h).status_code == 204
    gone = client.get("/v1/consumers/cus_42", headers=h)
    assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "not_found"
    assert client.delete("/v1/consumers/cus_42", headers=h).status_code == 404
    # A deleted consumer's uid may name a new one.
    assert _consumer(client, tenant, "cus_42")["id"] != created["id"]


def test_consumer_list_pages_through_every_consumer_once(client, tenant):
    uids = {f"c{i}" for i in range(7)}
    for uid in uids:
        _consumer(client, tenant, uid)
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get("/v1/consumers" + query, headers=tenant["headers"]).get_json()
        seen += [c["uid"] for c in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(uids)


def test_invalid_consumer_bodies_are_422_naming_the_field(client, tenant, subtests):
    h = tenant["headers"]
    cases = [
        ({"name": "x"}, "uid"),
        ({"uid": "", "name": "x"}, "uid"),
        ({"uid": "a/b", "name": "x"}, "uid"),
        ({"uid": ".hidden", "name": "x"}, "uid"),
        ({"uid": "u" * 201, "name": "x"}, "uid"),
        ({"uid": "ok"}, "name"),
        ({"uid": "ok", "name": "x", "metadata": {"n": 1}}, "metadata"),
        ({"uid": "ok", "name": "x", "metadata": []}, "metadata"),
        ({"uid": "ok", "name": "x", "other": 1}, "other"),
    ]
    for body, field in cases:
        with subtests.test(body=body):
            resp = client.post("/v1/consumers", json=body, headers=h)
            assert resp.status_code == 422, resp.get_json()
            assert field in resp.get_json()["error"]["details"]["fields"]
    _consumer(client, tenant, "ok")
    resp = client.patch("/v1/consumers/ok", json={"uid": "renamed"}, headers=h)
    assert resp.status_code == 422


def test_another_tenants_consumer_is_404_and_never_matches(client, tenant, other_tenant):
    _consumer(client, other_tenant, "shared")
    theirs = subscribe(client, other_tenant, "http://127.0.0.1:9/theirs", consumer="shared")
    h = tenant["headers"]
    for method in ("get", "patch", "delete"):
        resp = getattr(client, method)("/v1/consumers/shared", json={"name": "x"}, headers=h)
        assert resp.status_code == 404, method
    assert client.get("/v1/consumers", headers=h).get_json()["data"] == []

    # Naming it in a subscription or an event is naming an unknown consumer.
    resp = client.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/x", "event_types": ["*"], "consumer": "shared"},
        headers=h,
    )
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"]["fields"] == {"consumer": ["no such consumer"]}
    before = counts("events", "deliveries")
    resp = _event(client, tenant, "order.paid", {}, consumer="shared")
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"]["fields"] == {"consumer": ["no such consumer"]}
    assert counts("events", "deliveries") == before

    # The same uid in this tenant is another consumer: the other tenant's subscription stays
    # out of it.
    _consumer(client, tenant, "shared")
    mine = subscribe(client, tenant, "http://127.0.0.1:9/mine", consumer="shared")
    event = _event(client, tenant, "order.paid", {}, consumer="shared").get_json()
    assert _targets(client, tenant, event["id"]) == {mine["id"]}
    assert theirs["id"] not in _targets(client, tenant, event["id"])


def test_events_go_to_their_consumers_subscriptions_only(client, tenant, receiver):
    a, b = _consumer(client, tenant, "cus_a"), _consumer(client, tenant, "cus_b")
    own = subscribe(client, tenant, receiver.url("/own"), ["*"])
    sub_a = subscribe(client, tenant, receiver.url("/a"), ["order.paid"], consumer=a["uid"])
    subscribe(client, tenant, receiver.url("/b"), ["*"], consumer=b["uid"])
    assert sub_a["consumer"] == "cus_a" and own["consumer"] is None

    to_a = _event(client, tenant, "order.paid", {"n": 1}, consumer="cus_a").get_json()
    to_b = _event(client, tenant, "order.paid", {"n": 2}, consumer="cus_b").get_json()
    to_own = _event(client, tenant, "order.paid", {"n": 3}).get_json()
    assert (to_a["deliveries"], to_b["deliveries"], to_own["deliveries"]) == (1, 1, 1)
    assert to_a["consumer"] == "cus_a" and to_own["consumer"] is None

    deliver_here()
    assert [r.json["id"] for r in receiver.at("/a")] == [to_a["id"]]
    assert [r.json["id"] for r in receiver.at("/b")] == [to_b["id"]]
    assert [r.json["id"] for r in receiver.at("/own")] == [to_own["id"]]
    detail = client.get(f"/v1/events/{to_a['id']}", headers=tenant["headers"]).get_json()
    assert detail["consumer"] == "cus_a"

    # The same rules in a batch.
    resp = client.post(
        "/v1/events/batch",
        json={
            "events": [
                {"event_type": "order.paid", "payload": {"n": 4}, "consumer": "cus_b"},
                {"event_type": "order.paid", "payload": {"n": 5}},
                {"event_type": "order.paid", "payload": {"n": 6}, "consumer": "cus_a"},
            ]
        },
        headers=tenant["headers"],
    )
    assert resp.status_code == 202, resp.get_json()
    batch = resp.get_json()["data"]
    assert [item["consumer"] for item in batch] == ["cus_b", None, "cus_a"]
    deliver_here()  # the batch's (the first three are delivered: no longer due)
    assert {r.json["data"]["n"] for r in receiver.at("/a")} == {1, 6}
    assert {r.json["data"]["n"] for r in receiver.at("/b")} == {2, 4}
    assert {r.json["data"]["n"] for r in receiver.at("/own")} == {3, 5}
    listed = client.get("/v1/deliveries?limit=50", headers=tenant["headers"]).get_json()
    assert {d["status"] for d in listed["data"]} == {"delivered"}
    assert [len(receiver.at(p)) for p in ("/a", "/b", "/own")] == [2, 2, 2]


def test_a_batch_naming_an_unknown_consumer_stores_nothing(client, tenant):
    _consumer(client, tenant, "known")
    subscribe(client, tenant, "http://127.0.0.1:9/x", consumer="known")
    resp = client.post(
        "/v1/events/batch",
        json={
            "events": [
                {"event_type": "a.b", "payload": {}, "consumer": "known"},
                {"event_type": "a.b", "payload": {}, "consumer": "unknown"},
            ]
        },
        headers=tenant["headers"],
    )
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["details"]["index"] == 1
    assert error["details"]["fields"] == {"events": {"1": {"consumer": ["no such consumer"]}}}
    assert counts("events", "deliveries") == (0, 0)


def test_lists_filter_by_consumer(client, tenant):
    _consumer(client, tenant, "a")
    _consumer(client, tenant, "b")
    sub_a = subscribe(client, tenant, "http://127.0.0.1:9/a", consumer="a")
    sub_b = subscribe(client, tenant, "http://127.0.0.1:9/b", consumer="b")
    own = subscribe(client, tenant, "http://127.0.0.1:9/own")
    _event(client, tenant, "x.y", {}, consumer="a")
    _event(client, tenant, "x.y", {}, consumer="b")
    _event(client, tenant, "x.y", {})
    h = tenant["headers"]

    def ids(path: str) -> list[str]:
        resp = client.get(path, headers=h)
        assert resp.status_code == 200, resp.get_json()
        return [item["id"] for item in resp.get_json()["data"]]

    assert ids("/v1/subscriptions?consumer=a") == [sub_a["id"]]
    assert sorted(ids("/v1/subscriptions")) == sorted([sub_a["id"], sub_b["id"], own["id"]])
    deliveries = client.get("/v1/deliveries?consumer=b", headers=h).get_json()["data"]
    assert [d["subscription_id"] for d in deliveries] == [sub_b["id"]]
    assert ids("/v1/subscriptions?consumer=nobody") == []
    assert ids("/v1/deliveries?consumer=nobody") == []
    assert client.get("/v1/deliveries?consumer=a/b", headers=h).status_code == 422


def test_deleting_a_consumer_deletes_its_subscriptions_and_fails_their_pending_work(client, tenant):
    _consumer(client, tenant, "leaving")
    _consumer(client, tenant, "staying")
    leaving = subscribe(client, tenant, "http://127.0.0.1:9/l", consumer="leaving")
    staying = subscribe(client, tenant, "http://127.0.0.1:9/s", consumer="staying")
    event = _event(client, tenant, "x.y", {}, consumer="leaving").get_json()  # no worker: pending
    h = tenant["headers"]

    assert client.delete("/v1/consumers/leaving", headers=h).status_code == 204
    assert client.get(f"/v1/subscriptions/{leaving['id']}", headers=h).status_code == 404
    assert client.get(f"/v1/subscriptions/{staying['id']}", headers=h).status_code == 200
    (delivery,) = client.get(f"/v1/events/{event['id']}", headers=h).get_json()["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["last_error"] == "subscription disabled: subscription deleted"
    # Its events are refused now, as for any unknown consumer.
    assert _event(client, tenant, "x.y", {}, consumer="leaving").status_code == 422


def test_moving_a_subscription_to_a_consumer_changes_what_it_gets(client, tenant):
    _consumer(client, tenant, "a")
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x")
    h = tenant["headers"]
    resp = client.patch(f"/v1/subscriptions/{sub['id']}", json={"consumer": "a"}, headers=h)
    assert resp.status_code == 200 and resp.get_json()["consumer"] == "a"
    assert _event(client, tenant, "x.y", {}).get_json()["deliveries"] == 0
    assert _event(client, tenant, "x.y", {}, consumer="a").get_json()["deliveries"] == 1
    resp = client.patch(f"/v1/subscriptions/{sub['id']}", json={"consumer": None}, headers=h)
    assert resp.get_json()["consumer"] is None
    assert _event(client, tenant, "x.y", {}).get_json()["deliveries"] == 1
