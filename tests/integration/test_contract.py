"""The outside as documented: every documented operation's real answer validated against
/openapi.json, the contract's 404s, pagination and error statuses, the metric label values,
and settings bounds. From an outside review of the contract; the failing ones were fixed."""

from __future__ import annotations

import copy
import datetime as dt
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.conftest import publish, subscribe
from tests.support import add_attempt, set_status

NOWHERE = "http://127.0.0.1:9/hook"


def _openapi30_to_jsonschema(node: Any, components: dict[str, Any]) -> Any:
    """Inline $refs and turn OpenAPI 3.0's `nullable` into JSON Schema."""
    if isinstance(node, list):
        return [_openapi30_to_jsonschema(n, components) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return _openapi30_to_jsonschema(components[name], components)
    out = {k: _openapi30_to_jsonschema(v, components) for k, v in node.items()}
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def check(spec: dict[str, Any], method: str, path: str, resp: Any) -> list[str]:
    """Problems of one real answer against the operation's description."""
    operation = spec["paths"][path][method]
    status = str(resp.status_code)
    if status not in operation["responses"]:
        return [
            f"{method.upper()} {path}: status {status} not documented ({resp.get_data()[:200]!r})"
        ]
    described = operation["responses"][status]
    if "$ref" in described:
        described = spec["components"]["responses"][described["$ref"].rsplit("/", 1)[-1]]
    content = described.get("content")
    if not content:
        return [] if not resp.get_data() else [f"{method.upper()} {path}: body undocumented"]
    if resp.mimetype not in content:
        return [f"{method.upper()} {path}: media type {resp.mimetype} not in {list(content)}"]
    schema = content[resp.mimetype].get("schema")
    if resp.mimetype != "application/json" or schema is None:
        return []
    schema = _openapi30_to_jsonschema(copy.deepcopy(schema), spec["components"]["schemas"])
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    return [
        f"{method.upper()} {path} {status}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(resp.get_json())
    ]


def test_every_documented_operation_answers_as_its_openapi_schema(client, tenant) -> None:
    spec = client.get("/openapi.json").get_json()
    h = tenant["headers"]
    problems: list[str] = []
    calls: list[tuple[str, str, Any]] = []

    def call(method: str, template: str, url: str, **kw: Any) -> Any:
        resp = client.open(url, method=method.upper(), headers=h | kw.pop("headers", {}), **kw)
        assert resp.status_code < 500, (method, url, resp.get_data())
        problems.extend(check(spec, method, template, resp))
        calls.append((method, template, resp.status_code))
        return resp

    # Consumers and event types.
    call("post", "/v1/consumers", "/v1/consumers", json={"uid": "cus_1", "name": "Acme"})
    call("get", "/v1/consumers", "/v1/consumers")
    call("get", "/v1/consumers/{uid}", "/v1/consumers/cus_1")
    call("patch", "/v1/consumers/{uid}", "/v1/consumers/cus_1", json={"name": "Acme 2"})
    call("post", "/v1/consumers/{uid}/portal-links", "/v1/consumers/cus_1/portal-links")
    call(
        "post",
        "/v1/event-types",
        "/v1/event-types",
        json={"name": "order.created", "schema": {"type": "object"}},
    )
    call("get", "/v1/event-types", "/v1/event-types")
    call("get", "/v1/event-types/{name}", "/v1/event-types/order.created")
    call(
        "patch",
        "/v1/event-types/{name}",
        "/v1/event-types/order.created",
        json={"description": "x"},
    )

    # Subscriptions, both schemes.
    sub = call(
        "post",
        "/v1/subscriptions",
        "/v1/subscriptions",
        json={"url": NOWHERE, "event_types": ["*"], "headers": {"X-A": "1"}},
    ).get_json()
    call(
        "post",
        "/v1/subscriptions",
        "/v1/subscriptions",
        json={
            "url": NOWHERE,
            "event_types": ["*"],
            "signature_scheme": "ed25519",
            "consumer": "cus_1",
        },
    )
    sid = sub["id"]
    item = "/v1/subscriptions/{subscription_id}"
    call("get", "/v1/subscriptions", "/v1/subscriptions")
    call("get", "/v1/subscriptions", "/v1/subscriptions?consumer=cus_1")
    call("get", item, f"/v1/subscriptions/{sid}")
    call("patch", item, f"/v1/subscriptions/{sid}", json={"description": "d"})
    call("patch", item, f"/v1/subscriptions/{sid}", json={"signature_scheme": "ed25519"})
    call("post", item + "/rotate-secret", f"/v1/subscriptions/{sid}/rotate-secret")
    call("get", item + "/health", f"/v1/subscriptions/{sid}/health")

    # Events, deliveries, attempts.
    ev = call(
        "post",
        "/v1/events",
        "/v1/events",
        json={"event_type": "order.created", "payload": {"n": 1}},
        headers={"Idempotency-Key": "k1"},
    ).get_json()
    call(
        "post",
        "/v1/events",
        "/v1/events",
        json={"event_type": "order.created", "payload": {"n": 1}},
        headers={"Idempotency-Key": "k1"},
    )
    call(
        "post",
        "/v1/events/batch",
        "/v1/events/batch",
        json={"events": [{"event_type": "order.created", "payload": {}, "idempotency_key": "b1"}]},
    )
    detail = call("get", "/v1/events/{event_id}", f"/v1/events/{ev['id']}").get_json()
    did = detail["deliveries"][0]["id"]
    add_attempt(did, result="http_error", status_code=500, body="oops")
    call("get", "/v1/deliveries", "/v1/deliveries")
    call("get", "/v1/deliveries", f"/v1/deliveries?status=pending&subscription_id={sid}&limit=1")
    call("get", "/v1/deliveries/{delivery_id}", f"/v1/deliveries/{did}")
    call("get", "/v1/deliveries/{delivery_id}/attempts", f"/v1/deliveries/{did}/attempts")
    call("get", item + "/stats", f"/v1/subscriptions/{sid}/stats?window=1h")
    set_status("failed")
    call("post", "/v1/deliveries/{delivery_id}/retry", f"/v1/deliveries/{did}/retry")
    set_status("failed")
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    call("post", item + "/replay", f"/v1/subscriptions/{sid}/replay", json={"since": since})

    # Operations.
    call("get", "/healthz", "/healthz")
    call("get", "/readyz", "/readyz")
    call("get", "/openapi.json", "/openapi.json")
    call("get", "/metrics", "/metrics")
    call("get", "/docs", "/docs")

    call("delete", item, f"/v1/subscriptions/{sid}")
    call("delete", "/v1/consumers/{uid}", "/v1/consumers/cus_1")

    documented = {(m, p) for p, it in spec["paths"].items() for m in it if m != "parameters"}
    missed = documented - {(m, p) for m, p, _ in calls}
    assert not missed, missed
    assert not problems, "\n".join(problems)


def _ids(client, tenant):
    h = tenant["headers"]
    client.post("/v1/consumers", json={"uid": "cus_9", "name": "C"}, headers=h)
    client.post("/v1/event-types", json={"name": "order.x"}, headers=h)
    sub = subscribe(client, tenant, NOWHERE, ["*"])
    ev = publish(client, tenant, "order.x", {"n": 1}).get_json()
    did = client.get(f"/v1/events/{ev['id']}", headers=h).get_json()["deliveries"][0]["id"]
    return sub["id"], ev["id"], did


def test_another_tenants_resources_are_404_everywhere(client, tenant, other_tenant) -> None:
    sid, eid, did = _ids(client, tenant)
    set_status("failed")
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    calls = [
        ("GET", f"/v1/subscriptions/{sid}", None),
        ("PATCH", f"/v1/subscriptions/{sid}", {"description": "x"}),
        ("POST", f"/v1/subscriptions/{sid}/rotate-secret", None),
        ("GET", f"/v1/subscriptions/{sid}/health", None),
        ("GET", f"/v1/subscriptions/{sid}/stats", None),
        ("POST", f"/v1/subscriptions/{sid}/replay", {"since": since}),
        ("DELETE", f"/v1/subscriptions/{sid}", None),
        ("GET", f"/v1/events/{eid}", None),
        ("GET", f"/v1/deliveries/{did}", None),
        ("GET", f"/v1/deliveries/{did}/attempts", None),
        ("POST", f"/v1/deliveries/{did}/retry", None),
        ("GET", "/v1/consumers/cus_9", None),
        ("PATCH", "/v1/consumers/cus_9", {"name": "x"}),
        ("POST", "/v1/consumers/cus_9/portal-links", None),
        ("DELETE", "/v1/consumers/cus_9", None),
        ("GET", "/v1/event-types/order.x", None),
        ("PATCH", "/v1/event-types/order.x", {"description": "x"}),
    ]
    bad = []
    for method, url, body in calls:
        resp = client.open(url, method=method, json=body, headers=other_tenant["headers"])
        if resp.status_code != 404 or resp.get_json()["error"]["code"] != "not_found":
            bad.append((method, url, resp.status_code, resp.get_json()))
    for url in (
        f"/v1/deliveries?subscription_id={sid}",
        f"/v1/deliveries?event_id={eid}",
        "/v1/deliveries?consumer=cus_9",
        "/v1/subscriptions?consumer=cus_9",
    ):
        resp = client.get(url, headers=other_tenant["headers"])
        if resp.status_code != 200 or resp.get_json()["data"]:
            bad.append(("GET", url, resp.status_code, resp.get_json()))
    assert not bad, bad


def test_pagination_as_the_contract_says(client, tenant) -> None:
    h = tenant["headers"]
    from tests.support import sql

    for i in range(3):
        client.post("/v1/consumers", json={"uid": f"c{i}", "name": "C"}, headers=h)
        client.post("/v1/event-types", json={"name": f"t.{i}"}, headers=h)
        subscribe(client, tenant, NOWHERE, ["*"])
    ev = publish(client, tenant, "t.0", {}).get_json()
    did = client.get(f"/v1/events/{ev['id']}", headers=h).get_json()["deliveries"][0]["id"]
    for n in range(1, 4):
        add_attempt(did, number=n)
    bad = []
    for url in (
        "/v1/consumers",
        "/v1/event-types",
        "/v1/subscriptions",
        "/v1/deliveries",
        f"/v1/deliveries/{did}/attempts",
    ):
        sep = "&" if "?" in url else "?"
        full = client.get(url, headers=h).get_json()
        total = len(full["data"])
        if full["next_cursor"] is not None:
            bad.append((url, "next_cursor not null at the end", full["next_cursor"]))
        exact = client.get(f"{url}{sep}limit={total}", headers=h).get_json()
        if exact["next_cursor"] is not None:
            bad.append((url, "next_cursor not null with exactly limit items"))
        first = client.get(f"{url}{sep}limit=1", headers=h).get_json()
        rest = client.get(
            f"{url}{sep}limit=500&cursor={first['next_cursor']}", headers=h
        ).get_json()
        if len(first["data"]) + len(rest["data"]) != total or rest["next_cursor"] is not None:
            bad.append((url, "cursor paging", len(first["data"]), len(rest["data"]), total))
        for limit in (0, 501):
            r = client.get(f"{url}{sep}limit={limit}", headers=h)
            if r.status_code != 422:
                bad.append((url, limit, r.status_code))
    assert not bad, bad
    del sql


def test_error_statuses_of_the_contract(client, tenant, make_client) -> None:
    h = tenant["headers"]
    subscribe(client, tenant, NOWHERE, ["*"])
    body = {"event_type": "a.b", "payload": {"n": 1}}
    assert publish(client, tenant, "a.b", {"n": 1}, **{"Idempotency-Key": "k"}).status_code == 202
    r = publish(client, tenant, "a.b", {"n": 2}, **{"Idempotency-Key": "k"})
    assert r.status_code == 409, r.get_json()
    r = client.post("/v1/events", data="x", headers=h | {"Content-Type": "text/plain"})
    assert r.status_code == 415
    small = make_client(WEBHOOKS_MAX_PAYLOAD_BYTES="100")
    r = small.post("/v1/events", json={**body, "payload": {"s": "x" * 200}}, headers=h)
    assert r.status_code == 413, r.get_json()
    r = client.post("/v1/events", json={"event_type": "a.b"}, headers=h)
    assert r.status_code == 422


def test_patch_with_new_signature_scheme_answers_as_documented(client, tenant) -> None:
    """README/OpenAPI: PATCH /v1/subscriptions/{id} answers `Subscription`
    (additionalProperties: false); a new signature_scheme answers a `secret` besides."""
    spec = client.get("/openapi.json").get_json()
    sub = subscribe(client, tenant, NOWHERE, ["*"])  # hmac-sha256
    resp = client.patch(
        f"/v1/subscriptions/{sub['id']}",
        json={"signature_scheme": "ed25519"},
        headers=tenant["headers"],
    )
    assert resp.status_code == 200
    assert check(spec, "patch", "/v1/subscriptions/{subscription_id}", resp) == []


def _label_values(text: str, metric: str, label: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.labels[label]
        for family in text_string_to_metric_families(text)
        if family.name == metric
        for s in family.samples
        if label in s.labels
    }


def test_metric_label_values_are_those_documented(client) -> None:
    """Every label value /metrics shows is in docs/operations.md's table of metrics."""
    text = client.get("/metrics").get_data(as_text=True)
    table = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for metric, label in (
        ("webhooks_delivery_attempts", "result"),
        ("webhooks_watchdog_requeued", "reason"),
        ("webhooks_circuit_transitions", "to"),
        ("webhooks_deliveries", "outcome"),
        ("webhooks_scheduler_throttled", "reason"),
    ):
        (row,) = [line for line in table.splitlines() if line.startswith(f"| `{metric}_total`")]
        documented = set(re.findall(r"`([a-z_]+)`", row.split("|")[3]))
        exported = _label_values(text, metric, label)
        assert exported and exported <= documented, (metric, exported - documented)


def test_out_of_range_port_stops_the_process_at_start(monkeypatch) -> None:
    """README: a malformed value stops the process at start."""
    from config import ConfigError, get_settings
    from tests.conftest import reset_settings

    monkeypatch.setenv("WEBHOOKS_WORKER_METRICS_PORT", "70000")
    reset_settings()
    with pytest.raises(ConfigError):
        get_settings()


def test_rate_limit_headers_are_described_where_they_are_sent(client, tenant) -> None:
    spec = client.get("/openapi.json").get_json()
    resp = client.get("/v1/subscriptions", headers=tenant["headers"])
    described = spec["paths"]["/v1/subscriptions"]["get"]["responses"]["200"]["headers"]
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert name in resp.headers and name in described
    too_many = spec["components"]["responses"]["TOO_MANY_REQUESTS"]["headers"]
    assert {"Retry-After", "X-RateLimit-Limit"} <= set(too_many)
    assert "headers" not in spec["paths"]["/healthz"]["get"]["responses"]["200"]
