"""Payload filters compile to jsonpath, and a wrong one names where it is wrong."""

from __future__ import annotations

import pytest

from webhooks.schemas.subscriptions import SubscriptionCreateSchema
from webhooks.services.filters import MAX_CONDITIONS, MAX_DEPTH, FilterError, compile_filter


@pytest.mark.parametrize(
    ("document", "pointer", "message"),
    [
        ([], "/", "a filter is a JSON object"),
        ({"a": {}}, "/a", "an empty condition"),
        ({"a": {"$gt": True}}, "/a/$gt", "takes a number or a string"),
        ({"a": {"$gt": None}}, "/a/$gt", "takes a number or a string"),
        ({"a": {"$gte": [1]}}, "/a/$gte", "takes a number or a string"),
        ({"a": {"$eq": {"b": 1}}}, "/a/$eq", "takes a string, number, boolean or null"),
        ({"a": {"$neq": [1]}}, "/a/$neq", "takes a string, number, boolean or null"),
        ({"a": {"$in": []}}, "/a/$in", "takes a list of 1 to"),
        ({"a": {"$in": "x"}}, "/a/$in", "takes a list of 1 to"),
        ({"a": {"$nin": [1, [2]]}}, "/a/$nin/1", "takes a string, number"),
        ({"a": {"$exists": 1}}, "/a/$exists", "takes true or false"),
        ({"a": {"$startsWith": 1}}, "/a/$startsWith", "takes a string"),
        ({"$and": {}}, "/$and", "takes a list of 1 to"),
        ({"$or": [{"a": 1}, 3]}, "/$or/1", "a condition is a JSON object"),
        ({"$not": 1}, "/$not", "a condition is a JSON object"),
        ({"a": {"$regex": "x"}}, "/a/$regex", "unknown operator"),
        ({"a": [1, 2]}, "/a", "an array needs an operator"),
        ({"a/b~c": {"$gt": {}}}, "/a~1b~0c/$gt", "takes a number or a string"),
        (
            {"a": {"b": {"$or": [{"c": 1}, {"d": {"$lt": "x", "$in": [{}]}}]}}},
            "/a/b/$or/1/d/$in/0",
            "takes",
        ),
    ],
)
def test_invalid_filters_name_the_json_pointer_of_the_wrong_part(document, pointer, message):
    with pytest.raises(FilterError) as caught:
        compile_filter(document)
    assert caught.value.pointer == pointer
    assert caught.value.message.startswith(message)


def test_filters_nested_past_the_limit_are_refused():
    deep: dict = {"$eq": 1}
    for _ in range(MAX_DEPTH + 2):
        deep = {"x": deep}
    with pytest.raises(FilterError, match="nests deeper"):
        compile_filter(deep)
    with pytest.raises(FilterError, match="at most"):
        compile_filter({f"f{i}": i for i in range(MAX_CONDITIONS + 1)})


def test_empty_filter_matches_everything_and_compiles_to_nothing():
    assert compile_filter({}) is None


def test_field_names_are_quoted_so_no_name_can_change_the_path():
    compiled = compile_filter({'a" || true || "': 1, "a.b": {"$exists": True}})
    assert compiled == (
        '(exists($."a\\" || true || \\"" ? (@.type() != "array" && @ == 1)) && exists($."a.b"))'
    )


def test_subscription_schema_reports_the_filter_pointer_under_the_field():
    errors = SubscriptionCreateSchema().validate(
        {"url": "https://example.com", "event_types": ["*"], "filter": {"a": {"$gt": []}}}
    )
    assert errors == {"filter": ["/a/$gt: takes a number or a string"]}
