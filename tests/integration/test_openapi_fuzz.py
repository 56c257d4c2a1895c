"""Schemathesis fuzzes every operation of /openapi.json against the app (in process, real
PostgreSQL and Redis): no answer is a 5xx, and each one is described (status, media type, headers
and body schema). Invalid input must be refused with a 4xx."""

from __future__ import annotations

import re
import uuid
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from webhooks.db import get_engine
from webhooks.openapi import build_spec, undocumented_rules

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Real IDs of the tenant's resources, so that operations on a path ID reach their 2xx answers
# and not only 404. Filled by the fixture before any case is generated.
KNOWN: dict[str, str] = {}
# A loopback port nothing listens on: no worker runs here, nothing is sent.
TARGET = "http://127.0.0.1:9/fuzz"
# Fixed, because the fuzzer builds some cases at collection time, before any fixture runs.
FUZZ_KEY = "whk_" + "fuzz" * 11


# Loaded from the builder that serves /openapi.json (a test below checks they are the same), so
# that pytest can make one test per operation at collection time.
schema = schemathesis.openapi.from_dict(build_spec())


@schema.auth(refresh_interval=None)
class ApiKey:
    """Send the fuzz tenant's key, except where the fuzzer negates the credential itself."""

    def get(self, case: Any, context: Any) -> str:
        return f"Bearer {FUZZ_KEY}"

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": data}


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    """Use the tenant's real IDs for half of the well-formed path IDs."""
    values = path_parameters or {}
    known = {k: KNOWN[k] for k in values if k in KNOWN}
    # Well-formed: IDs are UUIDs; consumer uids and event-type names are checked by the API.
    ids = [v for k, v in values.items() if k not in ("uid", "name")]
    if not known or not all(_is_uuid(v) for v in ids):
        return st.just(path_parameters)
    return st.sampled_from([{**values, **known}, path_parameters])


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """Point half of the subscription bodies with a well-formed URL at an address that resolves,
    so that creating and changing subscriptions reach their 2xx answers too."""
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not 1 <= len(url) <= 2048:
        return st.just(body)
    return st.sampled_from([body, {**body, "url": TARGET}])


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@pytest.fixture
def fuzz_app(servers: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app with a tenant that has a subscription, an event and a delivery."""
    # The fuzzer sends hundreds of requests a minute with one key: lift the limit for it.
    monkeypatch.setenv("WEBHOOKS_RATE_LIMIT", "100000/minute")
    reset_settings()
    from webhooks import create_app

    app = create_app({"TESTING": True})
    client = app.test_client()
    tenant = _tenant_with_key(FUZZ_KEY)
    consumer = client.post(
        "/v1/consumers", json={"uid": "fuzz-consumer", "name": "Fuzz"}, headers=tenant["headers"]
    ).get_json()
    client.post(
        "/v1/event-types",
        json={"name": "order.created", "schema": {"type": "object"}},
        headers=tenant["headers"],
    )
    subscribe(client, tenant, TARGET, ["*"], consumer=consumer["uid"], filter={"n": {"$gte": 0}})
    sub = subscribe(client, tenant, TARGET, ["*"])
    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    detail = client.get(f"/v1/events/{event['id']}", headers=tenant["headers"]).get_json()
    with get_engine().begin() as conn:
        # A finished delivery, so that retry and replay have something to send again.
        conn.execute(text("UPDATE deliveries SET status = 'failed'"))
    KNOWN.update(
        uid=consumer["uid"],
        name="order.created",
        subscription_id=sub["id"],
        event_id=event["id"],
        delivery_id=detail["deliveries"][0]["id"],
    )
    return app


def _tenant_with_key(key: str) -> dict[str, Any]:
    from webhooks.db import session_scope
    from webhooks.models import ApiKey, Tenant
    from webhooks.services.tenants import hash_key

    with session_scope() as session:
        tenant = Tenant(name="fuzz")
        session.add(tenant)
        session.flush()
        session.add(ApiKey(tenant_id=tenant.id, prefix=key[:12], key_hash=hash_key(key)))
    return {"headers": {"Authorization": f"Bearer {key}"}}


def test_every_route_of_the_app_is_described(app: Any) -> None:
    """Every URL rule of the app, but the pages and Swagger UI's files, is in /openapi.json:
    a view documents itself with `@bp.arguments` / `@bp.response` on an API blueprint."""
    assert undocumented_rules(app) == []


def test_every_operation_documents_its_answers_and_errors() -> None:
    spec = build_spec()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            statuses = set(operation["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            if operation.get("security") != []:
                assert {"401", "429"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= statuses, (method, path)
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                assert body["$ref"].startswith("#/components/schemas/"), (method, path)
    for name, response in spec["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }, name


def test_docs_page_is_swagger_ui_served_by_the_app_itself(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # no CDN: nothing from elsewhere
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert len(answer.get_data()) > 0, asset
    bundle = client.get(next(a for a in assets if a.endswith("swagger-ui-bundle.js")))
    assert b"SwaggerUIBundle" in bundle.get_data()
    spec_url = re.search(r'data-url="([^"]+)"', html)
    assert spec_url is not None and client.get(spec_url.group(1)).get_json() == build_spec()


def test_fuzzed_description_is_the_one_served(client: Any) -> None:
    assert client.get("/openapi.json").get_json() == build_spec()


@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_operation_answers_as_described_and_never_5xx(case: Any, fuzz_app: Any) -> None:
    case.call_and_validate(app=fuzz_app, checks=CHECKS)
