"""Bad input: each answered with the JSON error envelope, nothing written, never a 5xx."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import assert_error, counts, resource_calls

# No worker runs in these tests, so nothing is ever sent to this address.
NOWHERE = "http://127.0.0.1:9/hook"
UNKNOWN = "01900000-0000-7000-8000-000000000000"


@pytest.fixture
def seeded(client, tenant) -> dict[str, Any]:
    """A subscription, an event and its delivery, so refusals can be seen to write nothing."""
    sub = subscribe(client, tenant, NOWHERE, ["order.created"])
    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    detail = client.get(f"/v1/events/{event['id']}", headers=tenant["headers"]).get_json()
    return {"subscription": sub, "event": event, "delivery": detail["deliveries"][0]}


def send(client, headers, method, path, data=None, content_type="application/json"):
    """Send raw bytes (or a value as JSON) with a content type."""
    if data is not None and not isinstance(data, bytes):
        data = json.dumps(data).encode()
    return client.open(
        path, method=method, data=data, headers=headers | {"Content-Type": content_type}
    )


def all_calls(seeded: dict[str, Any]) -> list[tuple[str, str, Any]]:
    ids = (seeded["subscription"]["id"], seeded["event"]["id"], seeded["delivery"]["id"])
    return [
        ("GET", "/v1/subscriptions", None),
        ("POST", "/v1/subscriptions", {"url": NOWHERE, "event_types": ["*"]}),
        ("GET", "/v1/deliveries", None),
        ("POST", "/v1/events", {"event_type": "order.created", "payload": {}}),
        *resource_calls(*ids),
    ]


# 400: malformed JSON

MALFORMED = [b"{", b'{"event_type": "a",}', b"nope", b"", b'{"a": 1} x', b"\xff\xfe{", b"'x'"]


def test_malformed_json_is_400(client, tenant, seeded, subtests):
    sub_id = seeded["subscription"]["id"]
    targets = [
        ("POST", "/v1/events"),
        ("POST", "/v1/subscriptions"),
        ("PATCH", f"/v1/subscriptions/{sub_id}"),
        ("POST", f"/v1/subscriptions/{sub_id}/replay"),
    ]
    before = counts()
    for method, path in targets:
        for body in MALFORMED:
            with subtests.test(path=path, body=body):
                resp = send(client, tenant["headers"], method, path, body)
                assert_error(resp, 400, "malformed_json")
    assert counts() == before


def test_json_postgres_cannot_store_is_400(client, tenant, seeded, subtests):
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than the parser's stack
        b'{"event_type": "a", "payload": {"x": NaN}}',
        b'{"event_type": "a", "payload": {"x": Infinity}}',
        b'{"event_type": "a", "payload": [-Infinity]}',
        b'{"event_type": "a", "payload": {"x": 1e999}}',
        b'{"event_type": "a", "payload": {"x": 1' + b"0" * 5000 + b"}}",
    ]
    before = counts()
    for body in bodies:
        with subtests.test(body=body[:60]):
            assert_error(send(client, tenant["headers"], "POST", "/v1/events", body), 400)
    assert counts() == before


def test_text_postgres_cannot_store_is_422_naming_the_field(client, tenant, seeded, subtests):
    cases = [
        ("/v1/events", '{"event_type": "a", "payload": {"x": "nul \\u0000 inside"}}', "payload"),
        ("/v1/events", '{"event_type": "a", "payload": {"key \\u0000": 1}}', "payload"),
        ("/v1/events", '{"event_type": "a", "payload": ["lone \\ud800"]}', "payload"),
        (
            "/v1/subscriptions",
            f'{{"url": "{NOWHERE}", "event_types": ["*"], "description": "nul \\u0000"}}',
            "description",
        ),
        ("/v1/subscriptions", '{"url": "http://127.0.0.1:9/\\u0000", "event_types": ["*"]}', "url"),
        (
            "/v1/subscriptions",
            f'{{"url": "{NOWHERE}", "event_types": ["*"], "description": "\\udc00"}}',
            "description",
        ),
    ]
    before = counts()
    for path, body, field in cases:
        with subtests.test(body=body):
            resp = send(client, tenant["headers"], "POST", path, body.encode())
            error = assert_error(resp, 422, "validation_error")
            assert set(error["details"]["fields"]) == {field}
    assert counts() == before


# 422: missing, wrong-typed or invalid fields


# For each resource created by POST: bodies, and the fields their 422 must name.
INVALID_FIELDS = {
    "/v1/events": [
        ({}, {"event_type", "payload"}),
        ({"payload": {}}, {"event_type"}),
        ({"event_type": "a"}, {"payload"}),
        ({"event_type": 5, "payload": {}}, {"event_type"}),
        ({"event_type": ["a"], "payload": None}, {"event_type", "payload"}),
        ({"event_type": "bad type!", "payload": {}}, {"event_type"}),
        ({"event_type": "*", "payload": {}}, {"event_type"}),
        ({"event_type": "a", "payload": {}, "extra": 1}, {"extra"}),
    ],
    "/v1/subscriptions": [
        ({}, {"url", "event_types"}),
        ({"url": 5, "event_types": "order.created"}, {"url", "event_types"}),
        ({"url": NOWHERE, "event_types": []}, {"event_types"}),
        ({"url": NOWHERE, "event_types": ["order.*"]}, {"event_types"}),
        ({"url": NOWHERE, "event_types": ["*"], "headers": {"Host": "x"}}, {"headers"}),
        ({"url": NOWHERE, "event_types": ["*"], "headers": ["x"]}, {"headers"}),
        ({"url": NOWHERE, "event_types": ["*"], "secret": "whsec_x"}, {"secret"}),
        ({"url": "http://127.0.0.1/" + "a" * 2048, "event_types": ["*"]}, {"url"}),
        ({"url": "ftp://127.0.0.1/", "event_types": ["*"]}, {"url"}),
        ({"url": "http://user:pw@127.0.0.1/", "event_types": ["*"]}, {"url"}),
        ({"url": "not a url", "event_types": ["*"]}, {"url"}),
    ],
}


@pytest.mark.parametrize("path", INVALID_FIELDS)
def test_invalid_fields_are_422_naming_them(client, tenant, seeded, subtests, path):
    before = counts()
    for body, fields in INVALID_FIELDS[path]:
        with subtests.test(body=body):
            resp = send(client, tenant["headers"], "POST", path, body)
            error = assert_error(resp, 422, "validation_error")
            assert set(error["details"]["fields"]) == fields
    assert counts() == before


def test_body_that_is_not_an_object_is_422(client, tenant, seeded, subtests):
    before = counts()
    for path in ("/v1/events", "/v1/subscriptions"):
        for body in ([], ["a"], "text", 5, None, True):
            with subtests.test(path=path, body=body):
                raw = json.dumps(body).encode()
                assert_error(send(client, tenant["headers"], "POST", path, raw), 422)
    assert counts() == before


def test_internal_targets_are_refused_unless_allowed(client, tenant, seeded, monkeypatch, subtests):
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "false")
    reset_settings()
    sub = seeded["subscription"]
    urls = [
        "http://127.0.0.1:8080/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://10.0.0.1/",
        "http://localhost/",
    ]
    before = counts()
    for url in urls:
        with subtests.test(url=url):
            body = {"url": url, "event_types": ["*"]}
            resp = send(client, tenant["headers"], "POST", "/v1/subscriptions", body)
            error = assert_error(resp, 422, "validation_error")
            assert set(error["details"]["fields"]) == {"url"}
            path = f"/v1/subscriptions/{sub['id']}"
            resp = send(client, tenant["headers"], "PATCH", path, {"url": url})
            error = assert_error(resp, 422, "validation_error")
            assert set(error["details"]["fields"]) == {"url"}
    assert counts() == before
    got = client.get(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"]).get_json()
    assert got["url"] == sub["url"]


def test_invalid_patch_changes_nothing(client, tenant, seeded, subtests):
    sub = seeded["subscription"]
    for body in (
        {"status": "paused"},
        {"url": None},
        {"event_types": []},
        {"headers": {"webhook-id": "x"}},
        {"description": "ok", "event_types": ["bad type"]},
        {"id": UNKNOWN},
    ):
        with subtests.test(body=body):
            resp = send(client, tenant["headers"], "PATCH", f"/v1/subscriptions/{sub['id']}", body)
            assert_error(resp, 422, "validation_error")
    got = client.get(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"]).get_json()
    assert got == {k: v for k, v in sub.items() if k != "secret"}


def test_invalid_replay_is_422(client, tenant, seeded, subtests):
    path = f"/v1/subscriptions/{seeded['subscription']['id']}/replay"
    before = counts()
    for body in (
        {},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},
        {"since": "2026-01-01T00:00:00Z", "status": "lost"},
        {"since": "2026-01-01T00:00:00Z", "until": 5},
    ):
        with subtests.test(body=body):
            resp = send(client, tenant["headers"], "POST", path, body)
            assert_error(resp, 422, "validation_error")
    assert counts() == before


def test_invalid_idempotency_key_is_422(client, tenant, seeded, subtests):
    before = counts()
    for key in ("", "k" * 256, "tab\tinside"):
        with subtests.test(key=key):
            resp = publish(client, tenant, "order.created", {}, **{"Idempotency-Key": key})
            error = assert_error(resp, 422, "validation_error")
            assert "Idempotency-Key" in error["details"]["fields"]
    assert counts() == before


# 415: wrong content type


def test_wrong_content_type_is_415(client, tenant, seeded, subtests):
    body = {"event_type": "order.created", "payload": {}}
    before = counts()
    for path in ("/v1/events", "/v1/subscriptions"):
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
            "multipart/form-data",
            "",
        ):
            with subtests.test(path=path, content_type=content_type):
                resp = send(client, tenant["headers"], "POST", path, body, content_type)
                assert_error(resp, 415, "unsupported_media_type")
    assert counts() == before


def test_json_with_a_charset_parameter_is_accepted(client, tenant, seeded):
    body = {"event_type": "order.created", "payload": {"é": "ü"}}
    resp = send(
        client, tenant["headers"], "POST", "/v1/events", body, "application/json; charset=utf-8"
    )
    assert resp.status_code == 202, resp.get_json()


# 413: body too large


def test_event_over_the_default_limit_is_413(client, tenant, seeded):
    before = counts()
    resp = publish(client, tenant, "order.created", {"filler": "x" * 262_144})
    error = assert_error(resp, 413, "payload_too_large")
    assert error["details"]["limit"] == 262_144
    assert counts() == before


def test_event_over_the_configured_limit_is_413_and_one_at_it_accepted(
    client, tenant, seeded, monkeypatch
):
    monkeypatch.setenv("WEBHOOKS_MAX_PAYLOAD_BYTES", "1024")
    reset_settings()
    overhead = len(json.dumps({"event_type": "order.created", "payload": {"f": ""}}).encode())
    before = counts()
    resp = publish(client, tenant, "order.created", {"f": "x" * (1025 - overhead)})
    assert_error(resp, 413, "payload_too_large")
    assert counts() == before
    resp = publish(client, tenant, "order.created", {"f": "x" * (1024 - overhead)})
    assert resp.status_code == 202, resp.get_json()


def test_body_over_the_app_limit_is_413(client, tenant, seeded):
    before = counts()
    huge = b'{"url": "' + b"a" * (2 << 20) + b'"}'
    resp = send(client, tenant["headers"], "POST", "/v1/subscriptions", huge)
    assert_error(resp, 413)
    assert counts() == before


# 404: unknown or malformed IDs, unknown routes


def test_unknown_or_malformed_ids_are_404(client, tenant, seeded, subtests):
    before = counts()
    idents = [UNKNOWN, str(uuid.uuid4()), "not-a-uuid", "1234", "0190000000007000800000000000000g"]
    for ident in idents:
        for method, path, body in resource_calls(ident, ident, ident):
            with subtests.test(method=method, path=path):
                resp = send(client, tenant["headers"], method, path, body)
                assert_error(resp, 404, "not_found")
    assert counts() == before


def test_unknown_route_and_method_answer_in_the_envelope(client, tenant, seeded):
    assert_error(client.get("/v1/nothing", headers=tenant["headers"]), 404, "not_found")
    assert_error(client.put("/v1/subscriptions", headers=tenant["headers"]), 405)
    assert_error(client.delete("/v1/events", headers=tenant["headers"]), 405)


# 401: missing, invalid or revoked key


def test_missing_invalid_or_revoked_key_is_401_on_every_route(
    tenant, seeded, subtests, monkeypatch
):
    """The one 401 test: every route, every way a key can be wrong; nothing is written."""
    from webhooks import create_app
    from webhooks.db import session_scope
    from webhooks.services.tenants import issue_key, list_keys, revoke_key

    # Hundreds of requests without a valid key from one address: lift that address's limit.
    monkeypatch.setenv("WEBHOOKS_RATE_LIMIT_UNAUTHENTICATED", "off")
    reset_settings()
    client = create_app({"TESTING": True}).test_client()
    with session_scope() as session:
        spare = issue_key(session, tenant["id"])
        (key_id,) = [k.id for k in list_keys(session, tenant["id"]) if spare.startswith(k.prefix)]
    assert (
        client.get("/v1/subscriptions", headers={"Authorization": f"Bearer {spare}"}).status_code
        == 200
    )
    with session_scope() as session:
        assert revoke_key(session, key_id)
    authorizations = [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwdw==",
        "Basic " + tenant["key"],
        "Token " + tenant["key"],
        tenant["key"],
        "Bearer whk_invalid",
        "Bearer whk_" + "x" * 43,
        "Bearer not-even-our-prefix",
        "Bearer whk_" + "a" * 300,
        "Bearer " + tenant["key"][:-1],
        "Bearer " + tenant["key"] + "x",
        "Bearer " + tenant["key"][4:],
        "Bearer " + spare,  # revoked
    ]
    before = counts()
    for authorization in authorizations:
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, path, body in all_calls(seeded):
            with subtests.test(authorization=authorization, method=method, path=path):
                resp = send(client, headers, method, path, body)
                assert_error(resp, 401, "unauthorized")
    assert counts() == before
    # The tenant's other key still works.
    assert client.get("/v1/subscriptions", headers=tenant["headers"]).status_code == 200


# Lists and pagination


def test_bad_list_parameters_are_422(client, tenant, seeded, subtests):
    common = [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "limit=",
        "cursor=%21%21",
        "cursor=abc",
        "cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "unknown=1",
    ]
    filters = ["status=lost", "subscription_id=nope", "event_id=1"]
    for path, queries in (("/v1/subscriptions", common), ("/v1/deliveries", common + filters)):
        for query in queries:
            with subtests.test(path=path, query=query):
                resp = client.get(f"{path}?{query}", headers=tenant["headers"])
                error = assert_error(resp, 422, "validation_error")
                assert error["details"]["fields"]


def collect(client, tenant, path: str, limit: int) -> list[list[str]]:
    """Follow next_cursor from the first page to the last; return the IDs of each page."""
    pages: list[list[str]] = []
    cursor = None
    while len(pages) < 20:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        resp = client.get(f"{path}{'&' if '?' in path else '?'}{query}", headers=tenant["headers"])
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert set(body) == {"data", "next_cursor"}
        pages.append([item["id"] for item in body["data"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("pagination does not end")


def test_pagination_walks_every_item_once_and_ends_with_a_null_cursor(client, tenant):
    subs = [subscribe(client, tenant, f"{NOWHERE}{i}")["id"] for i in range(5)]
    newest_first = sorted(subs, reverse=True)
    event = publish(client, tenant, "order.created", {}).get_json()
    assert event["deliveries"] == 5

    assert collect(client, tenant, "/v1/subscriptions", 2) == [
        newest_first[:2],
        newest_first[2:4],
        newest_first[4:],
    ]
    pages = collect(client, tenant, "/v1/deliveries", 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert len({i for page in pages for i in page}) == 5
    # A page that ends exactly at the last item says there is no more.
    assert collect(client, tenant, "/v1/subscriptions", 5) == [newest_first]
    pages = collect(client, tenant, f"/v1/deliveries?event_id={event['id']}", 4)
    assert [len(p) for p in pages] == [4, 1]
    body = client.get("/v1/subscriptions?limit=500", headers=tenant["headers"]).get_json()
    assert len(body["data"]) == 5 and body["next_cursor"] is None
    # A deleted subscription leaves the list.
    assert (
        client.delete(f"/v1/subscriptions/{subs[0]}", headers=tenant["headers"]).status_code == 204
    )
    pages = collect(client, tenant, "/v1/subscriptions", 2)
    assert [i for page in pages for i in page] == newest_first[:4]


def test_filters_narrow_delivery_lists(client, tenant):
    a = subscribe(client, tenant, f"{NOWHERE}a", ["x.a"])["id"]
    subscribe(client, tenant, f"{NOWHERE}b", ["*"])
    event = publish(client, tenant, "x.a", {}).get_json()
    publish(client, tenant, "x.b", {})

    def listed(query: str) -> list[dict[str, Any]]:
        resp = client.get(f"/v1/deliveries?{query}", headers=tenant["headers"])
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()["data"]

    assert len(listed("")) == 3
    assert [d["subscription_id"] for d in listed(f"subscription_id={a}")] == [a]
    assert [d["event_id"] for d in listed(f"event_id={event['id']}")] == [event["id"]] * 2
    assert len(listed("status=pending")) == 3
    assert listed("status=delivered") == []
    assert listed(f"subscription_id={UNKNOWN}") == []
