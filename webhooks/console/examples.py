"""An example document for a JSON Schema, to show beside an event type in the catalogue."""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 8
PLACEHOLDERS: dict[str, Any] = {
    "string": "string",
    "integer": 0,
    "number": 0.0,
    "boolean": True,
    "null": None,
}
FORMATS = {
    "date-time": "2026-01-31T12:00:00Z",
    "date": "2026-01-31",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "01234567-89ab-7def-8123-456789abcdef",
}


def example(schema: Any, depth: int = 0) -> Any:
    """Return a value the schema describes: its own example or default where it gives one."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    for key in ("examples", "enum"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    for key in ("example", "const", "default"):
        if key in schema:
            return schema[key]
    for key in ("oneOf", "anyOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: example(sub, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [example(schema.get("items", {}), depth + 1)]
    if kind == "string" and schema.get("format") in FORMATS:
        return FORMATS[schema["format"]]
    return PLACEHOLDERS.get(str(kind))
