"""Payload filters: a JSON document matched against an event's payload.

A filter is compiled once, when its subscription is saved, into a PostgreSQL jsonpath
predicate; ingest matches it inside its one statement (`payload @@ filter_path`), so matching
costs no Python per subscription.

The document, as in Outpost's filters: each key of an object is a condition, all must hold.
- A field name (any key not starting with `$`) descends into that field: a nested object for
  nested fields, a plain value for equality (`{"customer": {"tier": "gold"}}`).
- `$eq`, `$neq` (a scalar); `$gt`, `$gte`, `$lt`, `$lte` (a number or a string);
  `$in`, `$nin` (a list of scalars); `$exists` (true or false); `$startsWith` (a string)
  compare the value at the current field.
- `$and`, `$or` (a list of conditions) and `$not` (a condition) combine conditions on the
  current field (at the top: on the payload).

Like MongoDB: where a field holds an array, a comparison holds if it holds for one of its
elements (not for elements of arrays nested in it: jsonpath's lax mode would look one level
deeper, so each test first leaves arrays out), and a value of another type than the operand
never matches (`$neq` and `$nin` are the negations of `$eq` and `$in`, so they match it).
`$exists: true` also matches null.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 10
MAX_CONDITIONS = 200
MAX_LIST = 100
MAX_STRING = 1000

_COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = (
    "$eq",
    "$neq",
    *_COMPARISONS,
    "$in",
    "$nin",
    "$exists",
    "$startsWith",
    "$and",
    "$or",
    "$not",
)


class FilterError(ValueError):
    """A filter that cannot be compiled; `pointer` is the JSON pointer of the wrong part."""

    def __init__(self, pointer: str, message: str):
        super().__init__(f"{pointer or '/'}: {message}")
        self.pointer = pointer or "/"
        self.message = message


def compile_filter(document: Any) -> str | None:
    """Return the jsonpath predicate of a filter document (None for `{}`: match all)."""
    if not isinstance(document, dict):
        raise FilterError("", "a filter is a JSON object")
    if not document:
        return None
    return _Compiler().condition(document, "$", "", 0)


def _pointer(parent: str, key: str | int) -> str:
    return f"{parent}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def _literal(value: Any) -> str:
    # JSON's spelling of a scalar is also jsonpath's (strings, numbers, true, false, null).
    return json.dumps(value, ensure_ascii=False)


class _Compiler:
    def __init__(self) -> None:
        self.conditions = 0

    def condition(self, node: Any, path: str, where: str, depth: int) -> str:
        """Compile an object of conditions on the value at `path`."""
        if not isinstance(node, dict):
            raise FilterError(where, "a condition is a JSON object")
        if not node:
            raise FilterError(where, "an empty condition; give a field or an operator")
        if depth > MAX_DEPTH:
            raise FilterError(where, f"nests deeper than {MAX_DEPTH} levels")
        clauses = [self._clause(key, value, path, where, depth) for key, value in node.items()]
        return clauses[0] if len(clauses) == 1 else "(" + " && ".join(clauses) + ")"

    def _clause(self, key: str, value: Any, path: str, where: str, depth: int) -> str:
        here = _pointer(where, key)
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(here, f"a filter holds at most {MAX_CONDITIONS} conditions")
        if not key.startswith("$"):
            field = f"{path}.{_literal(key)}"
            if isinstance(value, dict):
                return self.condition(value, field, here, depth + 1)
            if isinstance(value, list):
                raise FilterError(here, "an array needs an operator, such as $in")
            return self._operator("$eq", value, field, here, depth)
        if key not in OPERATORS:
            raise FilterError(here, f"unknown operator; use one of {', '.join(OPERATORS)}")
        return self._operator(key, value, path, here, depth)

    def _operator(self, op: str, value: Any, path: str, where: str, depth: int) -> str:
        if op in ("$and", "$or"):
            if not isinstance(value, list) or not value or len(value) > MAX_LIST:
                raise FilterError(where, f"takes a list of 1 to {MAX_LIST} conditions")
            parts = [
                self.condition(item, path, _pointer(where, i), depth + 1)
                for i, item in enumerate(value)
            ]
            joiner = " && " if op == "$and" else " || "
            return "(" + joiner.join(parts) + ")"
        if op == "$not":
            return f"!({self.condition(value, path, where, depth + 1)})"
        if op == "$exists":
            if not isinstance(value, bool):
                raise FilterError(where, "takes true or false")
            return f"exists({path})" if value else f"!(exists({path}))"
        if op in ("$eq", "$neq"):
            self._scalar(value, where)
            test = _any(path, f"@ == {_literal(value)}")
            return test if op == "$eq" else f"!({test})"
        if op in ("$in", "$nin"):
            if not isinstance(value, list) or not value or len(value) > MAX_LIST:
                raise FilterError(where, f"takes a list of 1 to {MAX_LIST} values")
            for i, item in enumerate(value):
                self._scalar(item, _pointer(where, i))
            anyof = " || ".join(f"@ == {_literal(item)}" for item in value)
            test = _any(path, f"({anyof})")
            return test if op == "$in" else f"!({test})"
        if op == "$startsWith":
            if not isinstance(value, str) or len(value) > MAX_STRING:
                raise FilterError(where, f"takes a string of at most {MAX_STRING} characters")
            return _any(path, f"@ starts with {_literal(value)}")
        # $gt, $gte, $lt, $lte
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise FilterError(where, "takes a number or a string")
        self._scalar(value, where)
        return _any(path, f"@ {_COMPARISONS[op]} {_literal(value)}")

    @staticmethod
    def _scalar(value: Any, where: str) -> None:
        if not _is_scalar(value):
            raise FilterError(where, "takes a string, number, boolean or null")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise FilterError(where, f"strings may be at most {MAX_STRING} characters")


def _any(path: str, test: str) -> str:
    """`test` holds for the value at `path`, or for one element of the array there. In lax
    mode the filter unwraps an array once and a comparison unwraps an element once more, so
    arrays are left out by type: `[[3]]` holds no element equal to 3."""
    return f'exists({path} ? (@.type() != "array" && {test}))'
