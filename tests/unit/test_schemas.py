"""Request schemas: what a client may send, and which field a refusal names."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from marshmallow import ValidationError

from webhooks.schemas import (
    DeliveryListQuery,
    EventCreateSchema,
    PageQuery,
    ReplaySchema,
    SubscriptionCreateSchema,
    SubscriptionUpdateSchema,
    decode_cursor,
    encode_cursor,
)
from webhooks.schemas.events import MAX_DEPTH

URL = "https://example.com/hooks"


def errors(schema: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        schema.load(data, **kwargs)
    return info.value.messages  # type: ignore[return-value]


def nested(depth: int) -> Any:
    value: Any = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


# Events


@pytest.mark.parametrize(
    "event_type", ["order.created", "a", "Order_Created-v2.x.y", "x" * 200, "a.b.c.d.e"]
)
def test_event_type_names_are_accepted(event_type):
    assert EventCreateSchema().load({"event_type": event_type, "payload": {}})["event_type"] == (
        event_type
    )


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        "*",
        "order.*",
        ".order",
        "order.",
        "order..created",
        "order created",
        "order/created",
        "ordér",
        "x" * 201,
        "order.created\n",
    ],
)
def test_malformed_event_types_are_refused(event_type):
    assert "event_type" in errors(EventCreateSchema(), {"event_type": event_type, "payload": {}})


@pytest.mark.parametrize("payload", [{}, [], "text", 0, 1.5, True, {"a": [1, {"b": None}]}])
def test_any_json_value_but_null_is_a_payload(payload):
    assert EventCreateSchema().load({"event_type": "t", "payload": payload})["payload"] == payload


def test_missing_and_null_fields_are_named():
    assert set(errors(EventCreateSchema(), {})) == {"event_type", "payload"}
    assert set(errors(EventCreateSchema(), {"event_type": "t", "payload": None})) == {"payload"}
    assert set(errors(EventCreateSchema(), {"event_type": 5, "payload": {}})) == {"event_type"}


def test_payload_nested_to_the_limit_is_accepted_and_one_deeper_refused():
    assert EventCreateSchema().load({"event_type": "t", "payload": nested(MAX_DEPTH)})
    assert "payload" in errors(
        EventCreateSchema(), {"event_type": "t", "payload": nested(MAX_DEPTH + 1)}
    )
    deep_list: Any = [1]
    for _ in range(MAX_DEPTH):
        deep_list = [deep_list]
    assert "payload" in errors(EventCreateSchema(), {"event_type": "t", "payload": deep_list})


def test_unknown_event_fields_are_refused():
    messages = errors(EventCreateSchema(), {"event_type": "t", "payload": {}, "extra": 1})
    assert set(messages) == {"extra"}


# Subscriptions


def subscription(**fields: Any) -> dict[str, Any]:
    return {"url": URL, "event_types": ["order.created"], **fields}


def test_a_full_subscription_is_accepted():
    data = SubscriptionCreateSchema().load(
        subscription(
            event_types=["*", "order.created"],
            description="orders",
            headers={"X-Api-Key": "abc", "Authorization": "Bearer t"},
        )
    )
    assert data["headers"] == {"X-Api-Key": "abc", "Authorization": "Bearer t"}


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "content-type",
        "Content-Length",
        "User-Agent",
        "Transfer-Encoding",
        "Connection",
        "webhook-signature",
        "Webhook-Id",
        "WEBHOOK-TIMESTAMP",
        "webhook-anything",
    ],
)
def test_headers_the_service_sets_may_not_be_overridden(name):
    messages = errors(SubscriptionCreateSchema(), subscription(headers={name: "x"}))
    (problems,) = messages["headers"]
    assert "set by the service" in problems[name]


@pytest.mark.parametrize(
    "headers",
    [
        {"bad header": "x"},
        {"X-A\n": "x"},
        {"X-A": 5},
        {"X-A": "a\r\nX-Injected: 1"},
        {"X-A": "a\0"},
        {"X-A": "v" * 1025},
        {"": "x"},
        {f"X-{i}": "v" for i in range(21)},
    ],
)
def test_malformed_custom_headers_are_refused(headers):
    assert "headers" in errors(SubscriptionCreateSchema(), subscription(headers=headers))


@pytest.mark.parametrize("value", ["\u2603", "caf\u00e9", "\u20ac5", "a\tb", "a\x7f", "\x01"])
def test_header_values_outside_visible_ascii_are_refused(value):
    # Each of these was accepted, then crashed every attempt with a UnicodeEncodeError.
    (problems,) = errors(SubscriptionCreateSchema(), subscription(headers={"X-Snow": value}))[
        "headers"
    ]
    assert "visible ASCII" in problems["X-Snow"]


def test_header_values_of_visible_ascii_and_spaces_are_accepted():
    value = "".join(chr(c) for c in range(0x20, 0x7F))
    data = SubscriptionCreateSchema().load(subscription(headers={"X-All": value}))
    assert data["headers"] == {"X-All": value}


def test_url_length_is_limited():
    long_url = "https://example.com/" + "a" * (2048 - len("https://example.com/"))
    assert SubscriptionCreateSchema().load(subscription(url=long_url))
    assert "url" in errors(SubscriptionCreateSchema(), subscription(url=long_url + "a"))
    assert "url" in errors(SubscriptionCreateSchema(), subscription(url=""))


def test_event_types_count_is_between_one_and_one_hundred():
    hundred = [f"type.n{i}" for i in range(100)]
    assert SubscriptionCreateSchema().load(subscription(event_types=hundred))
    assert "event_types" in errors(SubscriptionCreateSchema(), subscription(event_types=[]))
    assert "event_types" in errors(
        SubscriptionCreateSchema(), subscription(event_types=[*hundred, "one.more"])
    )


@pytest.mark.parametrize(
    "value", [["order.*"], ["**"], ["order.created\n"], [""], ["a b"], [5], "order.created", None]
)
def test_malformed_event_type_filters_are_refused(value):
    assert "event_types" in errors(SubscriptionCreateSchema(), subscription(event_types=value))


def test_missing_and_wrong_typed_subscription_fields_are_named():
    assert set(errors(SubscriptionCreateSchema(), {})) == {"url", "event_types"}
    messages = errors(SubscriptionCreateSchema(), {"url": 5, "event_types": {"a": 1}})
    assert set(messages) == {"url", "event_types"}


def test_unknown_subscription_fields_are_refused():
    messages = errors(SubscriptionCreateSchema(), subscription(secret="whsec_mine", status="x"))
    assert set(messages) == {"secret", "status"}


def test_update_takes_any_subset_and_a_known_status():
    schema = SubscriptionUpdateSchema()
    assert schema.load({"status": "disabled"}, partial=True) == {"status": "disabled"}
    assert schema.load({}, partial=True) == {}
    assert "status" in errors(schema, {"status": "paused"}, partial=True)
    assert "url" in errors(schema, {"url": None}, partial=True)
    assert "tenant_id" in errors(schema, {"tenant_id": str(uuid.uuid4())}, partial=True)


def test_replay_needs_timezone_aware_times():
    data = ReplaySchema().load({"since": "2026-01-01T00:00:00Z"})
    assert data["since"].tzinfo is not None and data["until"] is None
    assert "since" in errors(ReplaySchema(), {"since": "2026-01-01T00:00:00"})
    assert "since" in errors(ReplaySchema(), {})
    assert "status" in errors(ReplaySchema(), {"since": "2026-01-01T00:00:00Z", "status": "x"})


# Pagination


def test_cursor_round_trips_and_garbage_is_refused():
    some = uuid.uuid4()
    assert decode_cursor(encode_cursor(some)) == some
    assert PageQuery().load({"cursor": encode_cursor(some)})["cursor"] == some
    for bad in ["!!!", "abc", encode_cursor(some) + "AAAA", "😀"]:
        assert "cursor" in errors(PageQuery(), {"cursor": bad})


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "1.5"])
def test_page_limit_outside_1_to_500_is_refused(limit):
    assert "limit" in errors(PageQuery(), {"limit": limit})


def test_page_defaults_and_delivery_filters():
    assert PageQuery().load({}) == {"limit": 50, "cursor": None}
    assert DeliveryListQuery().load({"status": "failed", "limit": "500"})["limit"] == 500
    assert "status" in errors(DeliveryListQuery(), {"status": "lost"})
    assert "event_id" in errors(DeliveryListQuery(), {"event_id": "nope"})
    assert "other" in errors(DeliveryListQuery(), {"other": "1"})
