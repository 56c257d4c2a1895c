"""Examples drawn from JSON Schemas for the console's event-type catalogue."""

from __future__ import annotations

from webhooks.console.examples import example


def test_an_object_gets_an_example_for_each_property() -> None:
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "amount": {"type": "integer", "examples": [4200]},
            "currency": {"enum": ["EUR", "USD"]},
            "paid": {"type": "boolean"},
            "at": {"type": "string", "format": "date-time"},
            "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {}}}},
            "note": {"type": ["null", "string"]},
        },
    }
    assert example(schema) == {
        "id": "01234567-89ab-7def-8123-456789abcdef",
        "amount": 4200,
        "currency": "EUR",
        "paid": True,
        "at": "2026-01-31T12:00:00Z",
        "lines": [{"sku": None}],
        "note": "string",
    }


def test_a_schema_that_refers_to_itself_stops_at_a_depth() -> None:
    node: dict = {"type": "object", "properties": {}}
    node["properties"]["child"] = node
    value = example(node)
    depth = 0
    while isinstance(value, dict) and value.get("child") is not None:
        value, depth = value["child"], depth + 1
    assert depth < 20


def test_a_default_or_const_is_used_as_given() -> None:
    assert example({"type": "string", "default": "x"}) == "x"
    assert example({"const": 3}) == 3
    assert example({"anyOf": [{"type": "number"}, {"type": "string"}]}) == 0.0
