from __future__ import annotations

import base64
import binascii
import uuid

from marshmallow import Schema, ValidationError, fields, validate

MAX_PAGE = 500


def encode_cursor(last_id: uuid.UUID) -> str:
    """Return an opaque cursor for the page after `last_id`."""
    return base64.urlsafe_b64encode(last_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    """Read a cursor made by encode_cursor; raise ValidationError if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError):
        raise ValidationError("not a cursor returned by this API", "cursor") from None


class Cursor(fields.String):
    def _deserialize(self, value, attr, data, **kwargs):
        return decode_cursor(super()._deserialize(value, attr, data, **kwargs))


class StrictBoolean(fields.Boolean):
    """JSON true or false only (marshmallow's Boolean also takes "yes", 1, "on"...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class PageQuery(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE))
    cursor = Cursor(load_default=None, allow_none=True)


def page_schema(item: type[Schema]) -> Schema:
    """The schema of one page of a list: its items and the cursor of the next page."""
    name = f"{item.__name__.removesuffix('Schema')}Page"
    if name not in _PAGES:
        _PAGES[name] = Schema.from_dict(
            {
                "data": fields.List(fields.Nested(item), required=True),
                "next_cursor": fields.String(
                    required=True,
                    allow_none=True,
                    metadata={"description": "pass as `cursor`; null at the end"},
                ),
            },
            name=name,
        )()
    return _PAGES[name]


_PAGES: dict[str, Schema] = {}


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)
