"""JSON values compared as JSON compares them: one text for equal values."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> str:
    """The value's JSON with sorted keys, no spaces, and numbers in one spelling: `1`, `1.0`
    and `1e0` are one number (as in JSON Schema's equality and in jsonb), `true` and `1` are
    not. For hashing an event's content and for `uniqueItems`."""
    return json.dumps(_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value
