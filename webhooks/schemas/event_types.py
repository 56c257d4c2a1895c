from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from marshmallow import Schema, ValidationError, fields, validate

from webhooks.schemas.common import StrictBoolean
from webhooks.schemas.events import event_type_field, json_depth

MAX_DESCRIPTION = 1000
# A schema's nesting: twice a payload's (each level of a payload is `properties`, its name and
# its schema), ample for any real schema, and far from Python's recursion limit, which checking
# and showing a schema both walk by recursion.
MAX_SCHEMA_DEPTH = 64


def _local_refs_only(node: Any, where: str = "") -> None:
    """Refuse references the service would have to fetch: a schema applies on its own."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                if not value.startswith("#"):
                    raise ValidationError(f"{here}: only references within the schema (#...)")
            else:
                _local_refs_only(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _local_refs_only(value, f"{where}/{i}")


def check_schema(value: Any) -> None:
    """Raise a ValidationError naming where a JSON Schema (2020-12) is wrong."""
    if not isinstance(value, dict):
        raise ValidationError("must be a JSON Schema object")
    if json_depth(value, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise ValidationError(f"nested more than {MAX_SCHEMA_DEPTH} levels")
    try:
        Draft202012Validator.check_schema(value)
    except RecursionError:
        raise ValidationError("nested too deeply to check") from None
    except SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        raise ValidationError(f"{where}: {exc.message}") from None
    _local_refs_only(value)


class EventTypeCreateSchema(Schema):
    name = event_type_field
    description = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_DESCRIPTION)
    )
    schema = fields.Raw(
        load_default=None,
        allow_none=True,
        validate=check_schema,
        metadata={
            "type": "object",
            "description": "JSON Schema (draft 2020-12) every event of this type must match",
        },
    )
    archived = StrictBoolean(load_default=False)


class EventTypeUpdateSchema(Schema):
    description = fields.String(allow_none=True, validate=validate.Length(max=MAX_DESCRIPTION))
    schema = fields.Raw(
        allow_none=True,
        validate=check_schema,
        metadata={"type": "object", "description": "null removes the schema"},
    )
    archived = StrictBoolean()


class EventTypeSchema(Schema):
    name = fields.String()
    description = fields.String(allow_none=True)
    schema = fields.Raw(allow_none=True, metadata={"type": "object"})
    archived = fields.Boolean()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
