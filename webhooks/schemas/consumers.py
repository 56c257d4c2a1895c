from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from webhooks.schemas.common import PageQuery

MAX_UID = 200
# Safe in a URL path segment as it is; no leading dot, so never `.` or `..`.
# \Z, not $: in Python $ also matches before a trailing newline.
UID_PATTERN = r"^[A-Za-z0-9_@:\-][A-Za-z0-9_.@:\-]*\Z"
MAX_METADATA = 50
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1000

uid_validators = [
    validate.Length(min=1, max=MAX_UID),
    validate.Regexp(UID_PATTERN, error="must be letters, digits and '_', '-', '.', ':', '@'"),
]


def _check_metadata(value: dict[str, Any]) -> None:
    if len(value) > MAX_METADATA:
        raise ValidationError(f"at most {MAX_METADATA} entries")
    problems = {
        key: f"must be a string of at most {MAX_METADATA_VALUE} characters"
        for key, item in value.items()
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE
    }
    problems.update(
        {
            key: f"keys are 1 to {MAX_METADATA_KEY} characters"
            for key in value
            if not 1 <= len(key) <= MAX_METADATA_KEY
        }
    )
    if problems:
        raise ValidationError(problems)


def metadata_field() -> fields.Dict:
    return fields.Dict(
        keys=fields.String(),
        # What _check_metadata checks, said in JSON Schema for the description.
        values=fields.Raw(metadata={"type": "string", "maxLength": MAX_METADATA_VALUE}),
        validate=_check_metadata,
        metadata={"maxProperties": MAX_METADATA},
    )


class ConsumerCreateSchema(Schema):
    uid = fields.String(required=True, validate=uid_validators)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    metadata = metadata_field()


class ConsumerUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    metadata = metadata_field()


class ConsumerSchema(Schema):
    id = fields.UUID()
    uid = fields.String()
    name = fields.String()
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), attribute="metadata_")
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ConsumerFilterQuery(PageQuery):
    """A list that can be narrowed to one consumer's part."""

    consumer = fields.String(load_default=None, validate=uid_validators)
