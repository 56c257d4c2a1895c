"""The event-type catalogue: its API, schema validation at ingest, strict types, isolation."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import reset_settings
from tests.integration.conftest import subscribe
from tests.support import counts

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id", "customer"],
    "properties": {
        "order_id": {"type": "integer"},
        "customer": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}
GOOD = {"order_id": 1, "customer": {"id": "c1"}}


def _type(client: Any, tenant: dict[str, Any], name: str, **extra: Any) -> Any:
    return client.post("/v1/event-types", json={"name": name, **extra}, headers=tenant["headers"])


def _event(client: Any, tenant: dict[str, Any], event_type: str, payload: Any) -> Any:
    return client.post(
        "/v1/events", json={"event_type": event_type, "payload": payload}, headers=tenant["headers"]
    )


def test_catalogue_crud(client, tenant):
    h = tenant["headers"]
    resp = _type(client, tenant, "order.paid", description="An order was paid", schema=ORDER_SCHEMA)
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    assert created["name"] == "order.paid" and created["archived"] is False
    assert created["schema"] == ORDER_SCHEMA
    assert _type(client, tenant, "order.paid").status_code == 409
    assert _type(client, tenant, "order.refunded").status_code == 201
    assert client.get("/v1/event-types/order.paid", headers=h).get_json() == created
    listed = client.get("/v1/event-types", headers=h).get_json()
    assert [t["name"] for t in listed["data"]] == ["order.refunded", "order.paid"]
    assert listed["next_cursor"] is None

    resp = client.patch("/v1/event-types/order.paid", json={"archived": True}, headers=h)
    assert resp.status_code == 200
    assert resp.get_json()["archived"] is True and resp.get_json()["schema"] == ORDER_SCHEMA
    resp = client.patch("/v1/event-types/order.paid", json={"schema": None}, headers=h)
    assert resp.get_json()["schema"] is None
    assert client.get("/v1/event-types/nope", headers=h).status_code == 404
    assert client.patch("/v1/event-types/nope", json={}, headers=h).status_code == 404


def test_invalid_catalogue_entries_are_422_naming_where(client, tenant, subtests):
    cases = [
        ({"name": "webhook.mine"}, "name", "emitted by the service"),
        ({"name": "bad name"}, "name", "dot-separated"),
        ({"name": "a.b", "schema": {"type": "integr"}}, "schema", "/type: "),
        (
            {"name": "a.b", "schema": {"properties": {"x": {"minimum": "1"}}}},
            "schema",
            "/properties/x/minimum",
        ),
        (
            {"name": "a.b", "schema": {"$ref": "https://example.com/s.json"}},
            "schema",
            "/$ref: only",
        ),
        ({"name": "a.b", "schema": "x"}, "schema", "must be a JSON Schema"),
        ({"name": "a.b", "archived": "yes"}, "archived", ""),
        ({"name": "a.b", "archived": 1}, "archived", ""),
    ]
    for body, field, text in cases:
        with subtests.test(body=body):
            resp = client.post("/v1/event-types", json=body, headers=tenant["headers"])
            assert resp.status_code == 422, resp.get_json()
            messages = resp.get_json()["error"]["details"]["fields"][field]
            assert any(text in m for m in messages), messages


def test_events_are_checked_against_their_types_schema_and_nothing_invalid_is_stored(
    client, tenant
):
    subscribe(client, tenant, "http://127.0.0.1:9/x", ["*"])
    _type(client, tenant, "order.paid", schema=ORDER_SCHEMA)
    assert _event(client, tenant, "order.paid", GOOD).status_code == 202
    assert counts("events", "deliveries") == (1, 1)

    bad = {"order_id": 1, "customer": {"id": "c1", "tags": ["ok", 7]}}
    resp = _event(client, tenant, "order.paid", bad)
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["details"]["pointer"] == "/customer/tags/1"
    assert error["details"]["fields"] == {
        "payload": ["/customer/tags/1: 7 is not of type 'string'"]
    }
    resp = _event(client, tenant, "order.paid", {"order_id": 1})
    assert resp.get_json()["error"]["details"]["fields"] == {
        "payload": ["/: 'customer' is a required property"]
    }
    # Types without a schema, and types of no catalogue entry, are not checked.
    assert _event(client, tenant, "order.other", {"anything": True}).status_code == 202
    assert counts("events", "deliveries") == (2, 2)

    resp = client.post(
        "/v1/events/batch",
        json={
            "events": [
                {"event_type": "order.paid", "payload": GOOD},
                {"event_type": "order.other", "payload": {}},
                {"event_type": "order.paid", "payload": {"order_id": "1", "customer": {"id": "c"}}},
            ]
        },
        headers=tenant["headers"],
    )
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["details"]["index"] == 2 and error["details"]["pointer"] == "/order_id"
    assert list(error["details"]["fields"]["events"]) == ["2"]
    assert counts("events", "deliveries") == (2, 2)

    # A changed schema applies to the next event.
    client.patch(
        "/v1/event-types/order.paid", json={"schema": {"type": "array"}}, headers=tenant["headers"]
    )
    assert _event(client, tenant, "order.paid", GOOD).status_code == 422
    assert _event(client, tenant, "order.paid", []).status_code == 202


def test_a_schema_that_cannot_be_applied_answers_422_not_500(client, tenant):
    _type(client, tenant, "a.b", schema={"$ref": "#/$defs/missing"})
    resp = _event(client, tenant, "a.b", {})
    assert resp.status_code == 422
    assert "cannot be applied" in resp.get_json()["error"]["message"]


def test_strict_event_types_require_known_unarchived_types(client, tenant, monkeypatch):
    monkeypatch.setenv("WEBHOOKS_STRICT_EVENT_TYPES", "true")
    reset_settings()
    _type(client, tenant, "order.paid")
    _type(client, tenant, "order.old", archived=True)
    assert _event(client, tenant, "order.paid", {}).status_code == 202
    for name, state in (("order.unknown", "unknown"), ("order.old", "archived")):
        resp = _event(client, tenant, name, {})
        assert resp.status_code == 422
        assert resp.get_json()["error"]["details"]["fields"] == {
            "event_type": [f"{state} event type (strict event types are on)"]
        }
    resp = client.post(
        "/v1/subscriptions",
        json={
            "url": "http://127.0.0.1:9/x",
            "event_types": ["order.paid", "order.unknown", "order.old"],
        },
        headers=tenant["headers"],
    )
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"]["fields"] == {
        "event_types": ["order.old: archived event type", "order.unknown: unknown event type"]
    }
    sub = subscribe(
        client, tenant, "http://127.0.0.1:9/x", ["order.paid", "*", "webhook.delivery.failed"]
    )
    resp = client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"event_types": ["nope"]}, headers=tenant["headers"]
    )
    assert resp.status_code == 422

    monkeypatch.setenv("WEBHOOKS_STRICT_EVENT_TYPES", "false")
    reset_settings()
    assert _event(client, tenant, "order.unknown", {}).status_code == 202


def test_tenants_cannot_publish_the_services_own_types(client, tenant):
    resp = _event(client, tenant, "webhook.delivery.failed", {})
    assert resp.status_code == 422
    assert "event_type" in resp.get_json()["error"]["details"]["fields"]
    resp = client.post(
        "/v1/events/batch",
        json={"events": [{"event_type": "webhook.circuit.opened", "payload": {}}]},
        headers=tenant["headers"],
    )
    assert resp.status_code == 422
    assert counts("events", "deliveries") == (0, 0)


def test_another_tenants_catalogue_is_invisible_and_never_applies(client, tenant, other_tenant):
    _type(client, other_tenant, "order.paid", schema={"type": "array"})
    h = tenant["headers"]
    assert client.get("/v1/event-types/order.paid", headers=h).status_code == 404
    assert client.patch("/v1/event-types/order.paid", json={}, headers=h).status_code == 404
    assert client.get("/v1/event-types", headers=h).get_json()["data"] == []
    assert _event(client, tenant, "order.paid", {"not": "an array"}).status_code == 202
    # The same name in this tenant is its own entry.
    assert _type(client, tenant, "order.paid").status_code == 201


def test_the_openapi_description_shows_the_callers_catalogue_as_examples(client, tenant):
    _type(
        client,
        tenant,
        "order.paid",
        description="An order was paid",
        schema={**ORDER_SCHEMA, "examples": [GOOD]},
    )
    _type(client, tenant, "order.old", archived=True)
    spec = client.get("/openapi.json", headers=tenant["headers"]).get_json()
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"] == {
        "order.paid": {
            "summary": "An order was paid",
            "value": {"event_type": "order.paid", "payload": GOOD},
        }
    }
    # Without a key (or with another tenant's) the description is the generic one.
    assert (
        "examples"
        not in client.get("/openapi.json").get_json()["paths"]["/v1/events"]["post"]["requestBody"][
            "content"
        ]["application/json"]
    )


def test_a_schema_that_would_check_an_event_for_hours_is_cut_at_its_budget(client, tenant):
    """A tenant's schema runs in the API's request threads, which every tenant shares."""
    from webhooks.services.event_types import CHECK_BUDGET_SECONDS

    # A pattern that backtracks without end on 60 characters, and references that fan out at
    # each of 40 levels (2^40 checks): each would take hours without the budget.
    backtracking = {"properties": {"s": {"type": "string", "pattern": "^(a|aa)+$"}}}
    defs: dict[str, Any] = {"a0": {"type": "integer"}}
    for i in range(1, 41):
        defs[f"a{i}"] = {"anyOf": [{"$ref": f"#/$defs/a{i - 1}"}] * 2}
    fan_out = {"$defs": defs, "$ref": "#/$defs/a40"}
    for name, schema, payload in (
        ("a.pattern", backtracking, {"s": "a" * 60 + "!"}),
        ("a.refs", fan_out, "x"),
    ):
        assert _type(client, tenant, name, schema=schema).status_code == 201
        started = time.monotonic()
        resp = _event(client, tenant, name, payload)
        assert resp.status_code == 422, resp.get_json()
        assert "took more than" in resp.get_json()["error"]["message"]
        assert time.monotonic() - started < CHECK_BUDGET_SECONDS + 5
        assert (
            _event(client, tenant, name, {"s": "aaaa"} if name == "a.pattern" else 1).status_code
            == 202
        )
    assert counts("events") == (2,)


def test_schemas_and_numbers_beyond_what_a_check_can_take_answer_422(client, tenant):
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(200):
        deep = {"not": deep}
    resp = _type(client, tenant, "a.deep", schema=deep)
    assert resp.status_code == 422 and "nested more than" in str(resp.get_json())
    # multipleOf with a number too large for a float, in the payload or in the schema.
    assert _type(client, tenant, "a.half", schema={"multipleOf": 0.5}).status_code == 201
    assert (
        _type(client, tenant, "a.huge", schema={"multipleOf": int("1" + "0" * 400)}).status_code
        == 201
    )
    body = b'{"event_type": "a.half", "payload": 1' + b"0" * 400 + b"}"
    resp = client.post(
        "/v1/events", data=body, content_type="application/json", headers=tenant["headers"]
    )
    assert resp.status_code == 422 and "cannot be applied" in resp.get_json()["error"]["message"]
    resp = _event(client, tenant, "a.huge", 0.5)
    assert resp.status_code == 422 and "cannot be applied" in resp.get_json()["error"]["message"]
    assert counts("events") == (0,)
