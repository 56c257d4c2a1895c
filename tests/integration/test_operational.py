"""Operational webhooks: each fires once per cause, to the tenant's subscribers of its type,
with IDs and reasons only; none is emitted about the delivery of an operational event."""

from __future__ import annotations

from typing import Any

from scripts.harness import Reply, wait_until
from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import sql
from webhooks.runtime import get_scheduler

OPS = [
    "webhook.subscription.disabled",
    "webhook.delivery.failed",
    "webhook.circuit.opened",
    "webhook.circuit.closed",
]


def _operational_events() -> list[tuple[str, dict[str, Any]]]:
    rows = sql(
        "SELECT event_type, payload FROM events WHERE event_type LIKE 'webhook.%' ORDER BY id"
    )
    return [(r.event_type, r.payload) for r in rows]


def _by_type(receiver: Any, path: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in receiver.at(path):
        out.setdefault(r.json["type"], []).append(r.json["data"])
    return out


def test_spent_attempts_emit_one_delivery_failed_and_its_own_failure_emits_none(
    client, tenant, receiver, start_worker
):
    receiver.plan("/down", then=Reply(500))
    receiver.plan("/ops-down", then=Reply(500))
    ops = subscribe(client, tenant, receiver.url("/ops"), ["webhook.delivery.failed"])
    subscribe(client, tenant, receiver.url("/ops-down"), ["webhook.delivery.failed"])
    everything = subscribe(client, tenant, receiver.url("/all"), ["*"])
    down = subscribe(client, tenant, receiver.url("/down"), ["order.paid"])
    start_worker()
    event = publish(client, tenant, "order.paid", {"card": "4242", "secret": "s3"}).get_json()

    (got,) = receiver.wait_for("/ops", 1, timeout=40)
    assert got.json["type"] == "webhook.delivery.failed"
    data = got.json["data"]
    assert data == {
        "delivery_id": data["delivery_id"],
        "event_id": event["id"],
        "event_type": "order.paid",
        "subscription_id": down["id"],
        "consumer": None,
        "attempts": 3,
        "reason": "HTTP 500",
    }
    detail = client.get(f"/v1/deliveries/{data['delivery_id']}", headers=tenant["headers"])
    assert detail.get_json()["status"] == "failed"
    # /ops-down failed to receive it too, three times: that emits nothing more.
    receiver.wait_for("/ops-down", 3, timeout=40)

    def failed() -> list[Any]:
        resp = client.get("/v1/deliveries?status=failed", headers=tenant["headers"])
        return resp.get_json()["data"]

    wait_until(lambda: len(failed()) == 2, timeout=30, message="both failures recorded")
    # A known point: no attempt in flight. An attempt writes its operational event before it
    # returns, and leaves the scheduler's in-flight set after, so every event the two
    # failures could emit is in the table now (and nothing is sent without its row).
    wait_until(lambda: get_scheduler().totals()["in_flight"] == 0, message="attempts finished")
    assert [t for t, _ in _operational_events()] == ["webhook.delivery.failed"]
    assert len(receiver.at("/ops")) == 1
    # `*` does not include the service's own types.
    assert [r.json["type"] for r in receiver.at("/all")] == ["order.paid"]
    assert ops["id"] != everything["id"]


def test_circuit_opening_and_closing_are_each_told_once(
    client, tenant, receiver, start_worker, start_beat, monkeypatch
):
    env = {
        "WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD": "2",
        "WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS": "1",
        "WEBHOOKS_RETRY_DELAYS": "0.5,1,1,1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    receiver.plan("/flaky", Reply(503), Reply(503), Reply(503), then=Reply(204))
    subscribe(
        client, tenant, receiver.url("/ops"), ["webhook.circuit.opened", "webhook.circuit.closed"]
    )
    flaky = subscribe(client, tenant, receiver.url("/flaky"), ["order.paid"])
    start_worker(**env)
    start_beat(**env)
    publish(client, tenant, "order.paid", {"n": 1})

    got = receiver.wait_for("/ops", 2, timeout=40)
    assert [r.json["type"] for r in got] == ["webhook.circuit.opened", "webhook.circuit.closed"]
    assert got[0].json["data"] == {
        "subscription_id": flaky["id"],
        "consumer": None,
        "reason": "HTTP 503",
    }
    assert got[1].json["data"] == {"subscription_id": flaky["id"], "consumer": None}
    wait_until(
        lambda: any(r.status == 204 for r in receiver.at("/flaky")), timeout=30, message="recovery"
    )
    # The probe that failed kept the circuit open: no second "opened". With no attempt in
    # flight (each writes its event before it leaves the in-flight set), the table holds
    # whatever the attempts emitted.
    wait_until(lambda: get_scheduler().totals()["in_flight"] == 0, message="attempts finished")
    assert [t for t, _ in _operational_events()] == [
        "webhook.circuit.opened",
        "webhook.circuit.closed",
    ]


def test_disabling_a_subscription_is_told_with_its_reason_and_deleting_is_not(
    client, tenant, receiver, start_worker
):
    receiver.plan("/gone", then=Reply(410))
    subscribe(client, tenant, receiver.url("/ops"), ["webhook.subscription.disabled"])
    gone = subscribe(client, tenant, receiver.url("/gone"), ["order.paid"])
    paused = subscribe(client, tenant, receiver.url("/paused"), ["x.y"])
    deleted = subscribe(client, tenant, receiver.url("/deleted"), ["x.y"])
    start_worker()
    h = tenant["headers"]
    publish(client, tenant, "order.paid", {})
    assert (
        client.patch(
            f"/v1/subscriptions/{paused['id']}", json={"status": "disabled"}, headers=h
        ).status_code
        == 200
    )
    assert client.delete(f"/v1/subscriptions/{deleted['id']}", headers=h).status_code == 204

    got = receiver.wait_for("/ops", 2, timeout=30)
    reasons = {r.json["data"]["subscription_id"]: r.json["data"]["reason"] for r in got}
    assert reasons == {
        gone["id"]: "the endpoint answered 410 Gone",
        paused["id"]: "disabled through the API",
    }
    assert all(set(r.json["data"]) == {"subscription_id", "consumer", "reason"} for r in got)
    # Disabling an already disabled subscription changes nothing and tells nothing.
    client.patch(f"/v1/subscriptions/{paused['id']}", json={"status": "disabled"}, headers=h)
    # The event would be written by the PATCH itself: the table shows at once that none was.
    assert len(_operational_events()) == 2
    assert len(receiver.at("/ops")) == 2


def test_a_lease_that_expires_on_the_last_attempt_emits_delivery_failed(client, tenant):
    from webhooks.services import watchdog

    subscribe(client, tenant, "http://127.0.0.1:9/ops", ["webhook.delivery.failed"])
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x", ["order.paid"])
    event = publish(client, tenant, "order.paid", {}).get_json()
    ((delivery_id,),) = sql(
        "UPDATE deliveries SET status = 'in_flight', attempt_count = 6, failures = 5,"
        " lease_expires_at = now() - interval '1 minute' WHERE event_id = :id RETURNING id",
        id=event["id"],
    )
    watchdog.run()
    events = _operational_events()
    assert events == [
        (
            "webhook.delivery.failed",
            {
                "delivery_id": str(delivery_id),
                "event_id": event["id"],
                "event_type": "order.paid",
                "subscription_id": sub["id"],
                "consumer": None,
                "attempts": 6,
                "reason": "the worker was lost or hung past its lease",
            },
        )
    ]
    watchdog.run()
    assert len(_operational_events()) == 1


def test_nothing_is_stored_for_a_tenant_that_does_not_listen(client, tenant, other_tenant):
    from webhooks.services import watchdog

    # The other tenant listens; this one does not, so its failure stores no operational event.
    subscribe(client, other_tenant, "http://127.0.0.1:9/ops", OPS)
    subscribe(client, tenant, "http://127.0.0.1:9/x", ["*"])
    event = publish(client, tenant, "order.paid", {}).get_json()
    sql(
        "UPDATE deliveries SET status = 'in_flight', attempt_count = 6, failures = 5,"
        " lease_expires_at = now() - interval '1 minute' WHERE event_id = :id",
        id=event["id"],
    )
    assert watchdog.run().failed_after_expiry == 1
    assert _operational_events() == []


def test_subscriptions_name_only_the_types_the_service_emits(client, tenant):
    for name in OPS:
        subscribe(client, tenant, "http://127.0.0.1:9/ops", [name])
    resp = client.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/ops", "event_types": ["webhook.endpoint.created"]},
        headers=tenant["headers"],
    )
    assert resp.status_code == 422
    (message,) = resp.get_json()["error"]["details"]["fields"]["event_types"]["0"]
    assert message.startswith("the service emits only webhook.subscription.disabled")


def test_a_circuit_opened_by_lost_attempts_is_told_too(client, tenant, receiver, monkeypatch):
    """The watchdog's lease expiries count for the breaker; the circuit they open is told."""
    from webhooks.services import watchdog

    monkeypatch.setenv("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", "1")
    reset_settings()
    subscribe(client, tenant, receiver.url("/ops"), ["webhook.circuit.opened"])
    hung = subscribe(client, tenant, receiver.url("/hung"), ["order.paid"])
    publish(client, tenant, "order.paid", {})
    sql(  # as a worker that died mid-attempt leaves it
        "UPDATE deliveries SET status = 'in_flight', attempt_count = 1,"
        " lease_expires_at = now() - interval '1 second' WHERE subscription_id = :s",
        s=hung["id"],
    )
    assert watchdog.run().expired == 1
    events = _operational_events()
    assert [t for t, _ in events] == ["webhook.circuit.opened"]
    assert events[0][1]["subscription_id"] == hung["id"]
    assert "lost" in events[0][1]["reason"]
    monkeypatch.undo()
    reset_settings()
