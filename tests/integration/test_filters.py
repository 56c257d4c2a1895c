"""Every filter operator, compiled and evaluated by PostgreSQL against payloads, and through
real delivery: events reach exactly the subscriptions whose filter holds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.conftest import deliver_here, subscribe
from webhooks.db import get_engine
from webhooks.services.filters import OPERATORS, compile_filter

ORDER = {
    "status": "paid",
    "amount": 120,
    "ratio": 0.25,
    "currency": "EUR",
    "tags": ["new", "vip"],
    "coupon": None,
    "customer": {"id": "cus_1", "tier": "gold", "email": "vip.ann@example.com"},
    "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}],
    "flag": True,
    "big": 10**20,
    "name with space": 'é😀\n"',
}

# (filter, payload, matches)
CASES: list[tuple[Any, Any, bool]] = [
    # $eq, and a plain value meaning $eq; numbers compare by value, types never coerce.
    ({"status": "paid"}, ORDER, True),
    ({"status": {"$eq": "paid"}}, ORDER, True),
    ({"status": {"$eq": "void"}}, ORDER, False),
    ({"status": "PAID"}, ORDER, False),
    ({"amount": 120.0}, ORDER, True),
    ({"amount": "120"}, ORDER, False),
    ({"flag": True}, ORDER, True),
    ({"flag": 1}, ORDER, False),
    ({"coupon": None}, ORDER, True),
    ({"missing": None}, ORDER, False),
    ({"big": 10**20}, ORDER, True),
    ({"name with space": 'é😀\n"'}, ORDER, True),
    ({"tags": "vip"}, ORDER, True),  # an array holds if one element does
    ({"tags": "old"}, ORDER, False),
    ({"customer": {"tier": "gold"}}, ORDER, True),  # nested fields as nested objects
    ({"customer": {"tier": "silver"}}, ORDER, False),
    ({"lines": {"sku": "B-2"}}, ORDER, True),  # through an array of objects
    ({"lines": {"sku": "C-3"}}, ORDER, False),
    ({"customer": {"id": {"x": 1}}}, ORDER, False),  # into a string: nothing there
    ({"$eq": 5}, 5, True),  # the payload itself
    # $neq: the negation of $eq, so a missing field or another type matches.
    ({"status": {"$neq": "paid"}}, ORDER, False),
    ({"status": {"$neq": "void"}}, ORDER, True),
    ({"missing": {"$neq": "x"}}, ORDER, True),
    ({"amount": {"$neq": "120"}}, ORDER, True),
    ({"tags": {"$neq": "vip"}}, ORDER, False),
    # $gt, $gte, $lt, $lte on numbers and strings; other types never match.
    ({"amount": {"$gt": 100}}, ORDER, True),
    ({"amount": {"$gt": 120}}, ORDER, False),
    ({"amount": {"$gte": 120}}, ORDER, True),
    ({"amount": {"$gte": 120.5}}, ORDER, False),
    ({"amount": {"$lt": 120}}, ORDER, False),
    ({"amount": {"$lt": 1e3}}, ORDER, True),
    ({"amount": {"$lte": 120}}, ORDER, True),
    ({"amount": {"$lte": -1}}, ORDER, False),
    ({"ratio": {"$gt": 0.2, "$lt": 0.3}}, ORDER, True),
    ({"ratio": {"$lt": 1e-5}}, ORDER, False),
    ({"big": {"$gt": 10**19}}, ORDER, True),
    ({"currency": {"$gt": "ABC"}}, ORDER, True),
    ({"currency": {"$lt": "ABC"}}, ORDER, False),
    ({"currency": {"$gt": 1}}, ORDER, False),
    ({"amount": {"$gt": "1"}}, ORDER, False),
    ({"missing": {"$lt": 1}}, ORDER, False),
    ({"lines": {"qty": {"$gte": 2}}}, ORDER, True),
    ({"lines": {"qty": {"$gt": 2}}}, ORDER, False),
    # $in, $nin
    ({"currency": {"$in": ["USD", "EUR"]}}, ORDER, True),
    ({"currency": {"$in": ["USD", "GBP"]}}, ORDER, False),
    ({"amount": {"$in": ["120", 120]}}, ORDER, True),
    ({"coupon": {"$in": [None]}}, ORDER, True),
    ({"tags": {"$in": ["x", "new"]}}, ORDER, True),
    ({"currency": {"$nin": ["USD", "EUR"]}}, ORDER, False),
    ({"currency": {"$nin": ["USD", "GBP"]}}, ORDER, True),
    ({"missing": {"$nin": ["USD"]}}, ORDER, True),
    ({"tags": {"$nin": ["vip"]}}, ORDER, False),
    # $exists (null is a value)
    ({"coupon": {"$exists": True}}, ORDER, True),
    ({"coupon": {"$exists": False}}, ORDER, False),
    ({"missing": {"$exists": True}}, ORDER, False),
    ({"missing": {"$exists": False}}, ORDER, True),
    ({"customer": {"email": {"$exists": True}}}, ORDER, True),
    ({"customer": {"phone": {"$exists": True}}}, ORDER, False),
    ({"status": {"sub": {"$exists": True}}}, ORDER, False),
    # $startsWith (strings only)
    ({"customer": {"email": {"$startsWith": "vip."}}}, ORDER, True),
    ({"customer": {"email": {"$startsWith": "VIP."}}}, ORDER, False),
    ({"customer": {"email": {"$startsWith": ""}}}, ORDER, True),
    ({"amount": {"$startsWith": "12"}}, ORDER, False),
    ({"tags": {"$startsWith": "vi"}}, ORDER, True),
    ({"customer": {"email": {"$startsWith": "%"}}}, ORDER, False),  # no pattern characters
    ({"status": {"$startsWith": 'pa"id'}}, ORDER, False),
    # $and, $or, $not, at the top and on a field
    ({"$and": [{"status": "paid"}, {"amount": {"$gt": 100}}]}, ORDER, True),
    ({"$and": [{"status": "paid"}, {"amount": {"$gt": 200}}]}, ORDER, False),
    ({"$or": [{"status": "void"}, {"amount": {"$gt": 100}}]}, ORDER, True),
    ({"$or": [{"status": "void"}, {"amount": {"$gt": 200}}]}, ORDER, False),
    ({"$not": {"status": "void"}}, ORDER, True),
    ({"$not": {"status": "paid"}}, ORDER, False),
    ({"$not": {"missing": {"$gt": 1}}}, ORDER, True),  # not of "no match" is a match
    ({"$not": {"amount": {"$gt": "x"}}}, ORDER, True),
    ({"amount": {"$or": [{"$lt": 10}, {"$gt": 100}]}}, ORDER, True),
    ({"amount": {"$and": [{"$gt": 10}, {"$lt": 100}]}}, ORDER, False),
    ({"amount": {"$not": {"$in": [1, 2]}}}, ORDER, True),
    ({"customer": {"$or": [{"tier": "silver"}, {"id": "cus_1"}]}}, ORDER, True),
    ({"$not": {"$not": {"status": "paid"}}}, ORDER, True),
    # Several keys: all must hold.
    ({"status": "paid", "currency": "EUR", "customer": {"tier": "gold"}}, ORDER, True),
    ({"status": "paid", "currency": "USD"}, ORDER, False),
    # Payloads that are not objects.
    ({"status": "paid"}, [ORDER], True),  # lax: an array of objects, any of them
    ({"status": "paid"}, "paid", False),
    ({"status": {"$exists": False}}, 42, True),
]


def _matches(conn: Any, document: Any, payload: Any) -> bool:
    path = compile_filter(document)
    assert path is not None
    return conn.execute(
        text("SELECT CAST(:payload AS jsonb) @@ CAST(:path AS jsonpath)"),
        {"payload": json.dumps(payload), "path": path},
    ).scalar_one()


def test_every_operator_matches_as_documented_when_postgresql_evaluates_it(servers, subtests):
    with get_engine().connect() as conn:
        for document, payload, expected in CASES:
            with subtests.test(filter=document, payload=payload):
                assert _matches(conn, document, payload) is expected


def test_the_operators_are_those_the_readme_documents():
    """The list the filters compile is the one users read (README, "Filters take ...")."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    documented = re.search(r"Filters take `([^`]+)`", readme)
    assert documented is not None
    assert documented.group(1).split() == list(OPERATORS)


@pytest.mark.parametrize("operator", OPERATORS)
def test_every_operator_is_covered_both_ways(operator):
    """Each operator has a case that matches and one that does not."""
    outcomes = {
        expected for document, _, expected in CASES if f'"{operator}"' in json.dumps(document)
    }
    assert outcomes == {True, False}


def test_invalid_filter_is_422_naming_where(client, tenant):
    resp = client.post(
        "/v1/subscriptions",
        json={
            "url": "http://127.0.0.1:9/x",
            "event_types": ["*"],
            "filter": {"customer": {"$or": [{"tier": "gold"}, {"since": {"$gt": [1]}}]}},
        },
        headers=tenant["headers"],
    )
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"]["fields"] == {
        "filter": ["/customer/$or/1/since/$gt: takes a number or a string"]
    }


# One subscription per operator, and the events each one must get (by their "n").
ROUTES: dict[str, tuple[dict[str, Any], set[int]]] = {
    "/eq": ({"status": {"$eq": "paid"}}, {1, 3}),
    "/plain": ({"status": "paid"}, {1, 3}),
    "/neq": ({"status": {"$neq": "paid"}}, {2}),
    "/gt": ({"amount": {"$gt": 100}}, {2}),
    "/gte": ({"amount": {"$gte": 100}}, {1, 2}),
    "/lt": ({"amount": {"$lt": 100}}, {3}),
    "/lte": ({"amount": {"$lte": 100}}, {1, 3}),
    "/in": ({"currency": {"$in": ["EUR", "USD"]}}, {1}),
    "/nin": ({"currency": {"$nin": ["EUR", "USD"]}}, {2, 3}),
    "/exists": ({"coupon": {"$exists": True}}, {2}),
    "/absent": ({"coupon": {"$exists": False}}, {1, 3}),
    "/starts": ({"customer": {"email": {"$startsWith": "vip."}}}, {1, 3}),
    "/and": ({"$and": [{"status": "paid"}, {"amount": {"$gte": 100}}]}, {1}),
    "/or": ({"$or": [{"currency": "GBP"}, {"amount": {"$lt": 100}}]}, {2, 3}),
    "/not": ({"$not": {"status": "paid"}}, {2}),
    "/nested": ({"customer": {"tier": "gold"}}, {1}),
    "/none": ({}, {1, 2, 3}),
}
EVENTS = [
    {
        "n": 1,
        "status": "paid",
        "amount": 100,
        "currency": "EUR",
        "customer": {"email": "vip.a@example.com", "tier": "gold"},
    },
    {
        "n": 2,
        "status": "refunded",
        "amount": 250,
        "currency": "GBP",
        "coupon": "X",
        "customer": {"email": "b@example.com", "tier": "silver"},
    },
    {
        "n": 3,
        "status": "paid",
        "amount": 99.5,
        "currency": "JPY",
        "customer": {"email": "vip.c@example.com"},
    },
]


def test_each_operator_routes_events_to_exactly_the_matching_receivers(client, tenant, receiver):
    for path, (document, _) in ROUTES.items():
        sub = subscribe(client, tenant, receiver.url(path), ["order.paid"], filter=document)
        assert sub["filter"] == (document or None)
    for payload in EVENTS:
        resp = client.post(
            "/v1/events",
            json={"event_type": "order.paid", "payload": payload},
            headers=tenant["headers"],
        )
        assert resp.status_code == 202
        expected = sum(1 for _, wanted in ROUTES.values() if payload["n"] in wanted)
        assert resp.get_json()["deliveries"] == expected

    deliver_here()
    for path, (_, wanted) in ROUTES.items():
        got = receiver.at(path)
        assert {r.json["data"]["n"] for r in got} == wanted, path
        assert len(got) == len(wanted), path
    data = client.get("/v1/deliveries?limit=100", headers=tenant["headers"]).get_json()["data"]
    assert {d["status"] for d in data} == {"delivered"}


def test_channels_narrow_what_a_subscription_gets(client, tenant, receiver):
    subscribe(client, tenant, receiver.url("/all"), ["*"])
    billing = subscribe(client, tenant, receiver.url("/billing"), ["*"], channels=["billing"])
    assert billing["channels"] == ["billing"]
    subscribe(client, tenant, receiver.url("/both"), ["*"], channels=["shipping", "billing"])
    sent = {
        1: [],
        2: ["billing"],
        3: ["shipping", "other"],
        4: ["other"],
    }
    for n, channels in sent.items():
        resp = client.post(
            "/v1/events",
            json={"event_type": "order.paid", "payload": {"n": n}, "channels": channels},
            headers=tenant["headers"],
        )
        assert resp.status_code == 202 and resp.get_json()["channels"] == sorted(channels)
    deliver_here()
    assert {r.json["data"]["n"] for r in receiver.at("/all")} == {1, 2, 3, 4}
    assert {r.json["data"]["n"] for r in receiver.at("/billing")} == {2}
    assert {r.json["data"]["n"] for r in receiver.at("/both")} == {2, 3}
    data = client.get("/v1/deliveries", headers=tenant["headers"]).get_json()["data"]
    assert len(data) == 7 and {d["status"] for d in data} == {"delivered"}
    assert [len(receiver.at(p)) for p in ("/all", "/billing", "/both")] == [4, 1, 2]


def test_invalid_channels_are_422(client, tenant, subtests):
    h = tenant["headers"]
    for channels in (["a b"], [""], ["x" * 129], "billing", [1], [f"c{i}" for i in range(21)]):
        with subtests.test(channels=channels):
            resp = client.post(
                "/v1/events",
                json={"event_type": "a.b", "payload": {}, "channels": channels},
                headers=h,
            )
            assert resp.status_code == 422
            assert "channels" in resp.get_json()["error"]["details"]["fields"]
            resp = client.post(
                "/v1/subscriptions",
                json={"url": "http://127.0.0.1:9/x", "event_types": ["*"], "channels": channels},
                headers=h,
            )
            assert resp.status_code == 422
            assert "channels" in resp.get_json()["error"]["details"]["fields"]


def test_changing_or_removing_a_filter_changes_what_matches(client, tenant):
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x", ["a.b"], filter={"n": {"$gt": 5}})
    h = tenant["headers"]

    def deliveries(n: int) -> int:
        resp = client.post("/v1/events", json={"event_type": "a.b", "payload": {"n": n}}, headers=h)
        return resp.get_json()["deliveries"]

    assert (deliveries(3), deliveries(7)) == (0, 1)
    resp = client.patch(f"/v1/subscriptions/{sub['id']}", json={"filter": {"n": 3}}, headers=h)
    assert resp.status_code == 200 and resp.get_json()["filter"] == {"n": 3}
    assert (deliveries(3), deliveries(7)) == (1, 0)
    resp = client.patch(f"/v1/subscriptions/{sub['id']}", json={"filter": None}, headers=h)
    assert resp.get_json()["filter"] is None
    assert (deliveries(3), deliveries(7)) == (1, 1)
    bad = client.patch(f"/v1/subscriptions/{sub['id']}", json={"filter": {"n": []}}, headers=h)
    assert bad.status_code == 422
    assert client.get(f"/v1/subscriptions/{sub['id']}", headers=h).get_json()["filter"] is None


# -- PostgreSQL against a reference -------------------------------------------------------------
# The documented semantics, written plainly in Python, checked against what PostgreSQL makes of
# the compiled filter on random payloads and filters (strings are ASCII: jsonpath compares code
# points, as Python does).

FIELDS = ["a", "b", "c"]
STRINGS = ["", "x", "xy", "y", "ab"]


def _candidates(payload: Any, path: list[str]) -> list[Any]:
    """The values at a path, arrays unwrapped as lax jsonpath does."""
    values = [payload]
    for key in path:
        found = []
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and key in item:
                    found.append(item[key])
        values = found
    return values


def _items(values: list[Any]) -> list[Any]:
    return [i for v in values for i in (v if isinstance(v, list) else [v])]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b and not isinstance(a, list | dict)


def _order(a: Any, b: Any, op: str) -> bool:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    strings = all(isinstance(v, str) for v in (a, b))
    if not (numbers or strings):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def reference(node: dict[str, Any], payload: Any, path: list[str]) -> bool:
    """Does the payload match a filter object applied at `path`?"""
    results = []
    for key, value in node.items():
        items = _items(_candidates(payload, path))
        if not key.startswith("$"):
            if isinstance(value, dict):
                results.append(reference(value, payload, [*path, key]))
            else:
                results.append(reference({"$eq": value}, payload, [*path, key]))
        elif key in ("$eq", "$neq"):
            hit = any(_same(i, value) for i in items)
            results.append(hit if key == "$eq" else not hit)
        elif key in ("$in", "$nin"):
            hit = any(_same(i, v) for i in items for v in value)
            results.append(hit if key == "$in" else not hit)
        elif key in ("$gt", "$gte", "$lt", "$lte"):
            results.append(any(_order(i, value, key) for i in items))
        elif key == "$exists":
            results.append(bool(_candidates(payload, path)) is value)
        elif key == "$startsWith":
            results.append(any(isinstance(i, str) and i.startswith(value) for i in items))
        elif key == "$and":
            results.append(all(reference(c, payload, path) for c in value))
        elif key == "$or":
            results.append(any(reference(c, payload, path) for c in value))
        elif key == "$not":
            results.append(not reference(value, payload, path))
    return all(results)


def _strategies() -> tuple[Any, Any]:
    from hypothesis import strategies as st

    scalar = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.sampled_from([0.5, -1.5, 2.0]),
        st.sampled_from(STRINGS),
    )
    value = st.recursive(
        scalar,
        lambda inner: st.one_of(
            st.lists(scalar, max_size=3),
            st.lists(st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3), max_size=2),
            st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3),
        ),
        max_leaves=8,
    )
    payload = st.dictionaries(st.sampled_from(FIELDS), value, max_size=3)
    comparable = st.one_of(st.integers(-3, 3), st.sampled_from(STRINGS))
    leaf = st.one_of(
        st.builds(lambda v: {"$eq": v}, scalar),
        st.builds(lambda v: {"$neq": v}, scalar),
        st.builds(
            lambda op, v: {op: v}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), comparable
        ),
        st.builds(lambda v: {"$in": v}, st.lists(scalar, min_size=1, max_size=3)),
        st.builds(lambda v: {"$nin": v}, st.lists(scalar, min_size=1, max_size=3)),
        st.builds(lambda v: {"$exists": v}, st.booleans()),
        st.builds(lambda v: {"$startsWith": v}, st.sampled_from(STRINGS)),
        scalar,  # a plain value: $eq
    )
    condition = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.dictionaries(st.sampled_from(FIELDS), inner, min_size=1, max_size=2),
            st.builds(
                lambda cs: {"$and": cs},
                st.lists(inner.filter(lambda c: isinstance(c, dict)), min_size=1, max_size=2),
            ),
            st.builds(
                lambda cs: {"$or": cs},
                st.lists(inner.filter(lambda c: isinstance(c, dict)), min_size=1, max_size=2),
            ),
            st.builds(lambda c: {"$not": c}, inner.filter(lambda c: isinstance(c, dict))),
        ),
        max_leaves=5,
    )
    document = st.dictionaries(st.sampled_from(FIELDS), condition, min_size=1, max_size=2)
    return payload, st.one_of(document, condition.filter(lambda c: isinstance(c, dict) and bool(c)))


def test_postgresql_agrees_with_the_documented_semantics_on_random_filters(servers):
    from hypothesis import given, settings

    payloads, documents = _strategies()

    with get_engine().connect() as conn:

        @settings(max_examples=400, deadline=None, database=None, derandomize=True)
        @given(documents, payloads)
        def check(document: dict[str, Any], payload: Any) -> None:
            assert _matches(conn, document, payload) is reference(document, payload, []), (
                compile_filter(document)
            )

        check()
