from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from webhooks.crypto import REDACTED
from webhooks.models.event import OPERATIONAL_PREFIX, OPERATIONAL_TYPES
from webhooks.models.lane import ORDERINGS
from webhooks.models.subscription import SubscriptionStatus
from webhooks.schemas.consumers import ConsumerFilterQuery, uid_validators
from webhooks.schemas.deliveries import STATUSES
from webhooks.schemas.events import EVENT_TYPE_PATTERN, channels_field
from webhooks.services.filters import FilterError, compile_filter
from webhooks.signing import SCHEMES

MAX_URL_LENGTH = 2048
MAX_EVENT_TYPES = 100
MAX_HEADERS = 20
MAX_HEADER_VALUE = 1024
MAX_RATE_LIMIT = 10_000
MAX_IN_FLIGHT = 1000
# \Z, not $: in Python $ also matches before a trailing newline.
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}\Z"
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
# Visible ASCII and spaces: anything else cannot be sent as latin-1 on every HTTP stack, and
# made each attempt fail with an uncaught UnicodeEncodeError. Tabs and controls are refused too.
HEADER_VALUE_PATTERN = r"^[\x20-\x7e]*\Z"
_HEADER_VALUE = re.compile(HEADER_VALUE_PATTERN)
# Ours to set, or meaningless per request: a subscription may not override them.
RESERVED_HEADERS = {
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "user-agent",
    "expect",
}


STATUS_NAMES = [s.value for s in SubscriptionStatus]
EVENT_TYPE_OR_STAR = r"^(\*|[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*)$"


def _check_event_type(value: str) -> None:
    if value == "*" or value in OPERATIONAL_TYPES:
        return
    if value.startswith(OPERATIONAL_PREFIX):
        raise ValidationError(f"the service emits only {', '.join(OPERATIONAL_TYPES)}")
    validate.Length(min=1, max=200)(value)
    validate.Regexp(EVENT_TYPE_PATTERN, error="must be an event type name or '*'")(value)


def _check_headers(value: dict[str, Any]) -> None:
    if len(value) > MAX_HEADERS:
        raise ValidationError(f"at most {MAX_HEADERS} headers")
    problems: dict[str, str] = {}
    for name, header_value in value.items():
        lower = name.lower()
        if not _HEADER_NAME.match(name):
            problems[name] = "is not a valid header name"
        elif lower in RESERVED_HEADERS or lower.startswith("webhook-"):
            problems[name] = "is set by the service and may not be overridden"
        elif not isinstance(header_value, str):
            problems[name] = "value must be a string"
        elif len(header_value) > MAX_HEADER_VALUE or any(c in header_value for c in "\r\n\0"):
            problems[name] = f"value must be one line of at most {MAX_HEADER_VALUE} characters"
        elif not _HEADER_VALUE.match(header_value):
            problems[name] = "value may hold only visible ASCII characters and spaces"
    if problems:
        raise ValidationError(problems)


def _check_filter(value: dict[str, Any]) -> None:
    try:
        compile_filter(value)
    except FilterError as exc:
        raise ValidationError(f"{exc.pointer}: {exc.message}") from None


class SubscriptionCreateSchema(Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL_LENGTH))
    event_types = fields.List(
        # What _check_event_type checks, said in JSON Schema for the description.
        fields.String(
            validate=_check_event_type,
            metadata={"maxLength": 200, "pattern": EVENT_TYPE_OR_STAR},
        ),
        required=True,
        validate=validate.Length(min=1, max=MAX_EVENT_TYPES),
    )
    description = fields.String(allow_none=True, validate=validate.Length(max=1000))
    headers = fields.Dict(
        keys=fields.String(),
        # What _check_headers checks, said in JSON Schema for the description.
        values=fields.Raw(
            metadata={
                "type": "string",
                "maxLength": MAX_HEADER_VALUE,
                "pattern": HEADER_VALUE_PATTERN,
            }
        ),
        validate=_check_headers,
        metadata={
            "maxProperties": MAX_HEADERS,
            "description": "Sent with every delivery. Names may not be `webhook-*`, `host`, "
            "`content-type`, `content-length`, `user-agent` or hop-by-hop headers.",
        },
    )
    rate_limit = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(min=1, max=MAX_RATE_LIMIT)
    )
    max_in_flight = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_IN_FLIGHT))
    ordering = fields.String(
        validate=validate.OneOf(ORDERINGS),
        metadata={
            "description": "none (the default): any order; fifo: events with the same"
            " ordering_key one at a time, in ingest order"
        },
    )
    signature_scheme = fields.String(
        validate=validate.OneOf(SCHEMES),
        metadata={"description": "hmac-sha256 (the default) or ed25519 (Standard Webhooks v1a)"},
    )
    consumer = fields.String(
        allow_none=True,
        validate=uid_validators,
        metadata={"description": "uid of the consumer it belongs to; null: the tenant's own"},
    )
    channels = channels_field(
        metadata={"description": "only events sharing one of these; empty: every event"}
    )
    filter = fields.Dict(
        allow_none=True,
        validate=_check_filter,
        metadata={
            "description": "Matched against the payload; null: every payload. Each key is a "
            "condition, all must hold: a field name descends (nested fields as nested objects; "
            "a plain value means $eq), and $eq, $neq, $gt, $gte, $lt, $lte, $in, $nin, $exists, "
            "$startsWith, $and, $or, $not compare or combine. A wrong filter is a 422 naming "
            "its JSON pointer.",
            "example": {"customer": {"tier": "gold"}, "amount": {"$gte": 100}},
        },
    )


class SubscriptionUpdateSchema(SubscriptionCreateSchema):
    status = fields.String(validate=validate.OneOf(STATUS_NAMES))


class SubscriptionSchema(Schema):
    id = fields.UUID()
    url = fields.String()
    event_types = fields.List(fields.String())
    description = fields.String(allow_none=True)
    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": f"names of the custom headers; values shown as {REDACTED}"},
    )
    signature_scheme = fields.String(metadata={"enum": list(SCHEMES)})
    public_key = fields.String(
        allow_none=True,
        metadata={"description": "ed25519: the whpk_ key that verifies the signatures"},
    )
    consumer = fields.String(attribute="consumer_uid", allow_none=True)
    channels = fields.List(fields.String())
    filter = fields.Dict(allow_none=True)
    status = fields.String(metadata={"enum": STATUS_NAMES})
    disabled_reason = fields.String(allow_none=True)
    rate_limit = fields.Integer(allow_none=True)
    max_in_flight = fields.Integer()
    ordering = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class SubscriptionWithSecretSchema(SubscriptionSchema):
    secret = fields.String(
        allow_none=True,
        metadata={"description": "hmac-sha256: the whsec_ secret, shown only here; ed25519: null"},
    )


class CircuitSchema(Schema):
    state = fields.String(metadata={"enum": ["closed", "open", "half_open", "unknown"]})
    consecutive_failures = fields.Integer(allow_none=True)
    opened_at = fields.DateTime(allow_none=True)
    probe_at = fields.DateTime(allow_none=True)


class SchedulingSchema(Schema):
    """The limits in force now, and what waits for them (unknown when Redis is unreachable)."""

    rate_limit = fields.Integer(allow_none=True)
    max_in_flight = fields.Integer()
    effective_rate_limit = fields.Float(allow_none=True)
    effective_max_in_flight = fields.Integer(allow_none=True)
    in_flight = fields.Integer(allow_none=True)
    ready = fields.Integer(allow_none=True)


class OrderingHealthSchema(Schema):
    """A fifo subscription's lanes held up by a delivery that waits for a retry."""

    ordering = fields.String()
    blocked_lanes = fields.Integer(
        metadata={
            "description": "lanes whose holder has failed and waits for, or is in, a retry "
            "(always 0 for none)"
        }
    )
    oldest_blocked_since = fields.DateTime(
        allow_none=True,
        metadata={"description": "the first failed attempt of the longest-blocked lane"},
    )


class SubscriptionHealthSchema(Schema):
    subscription_id = fields.UUID()
    status = fields.String()
    circuit = fields.Nested(CircuitSchema)
    scheduling = fields.Nested(SchedulingSchema)
    ordering = fields.Nested(OrderingHealthSchema)
    deliveries = fields.Dict(keys=fields.String(), values=fields.Integer())
    parked = fields.Integer()


class SubscriptionListQuery(ConsumerFilterQuery):
    pass


class ReplaySchema(Schema):
    since = fields.AwareDateTime(required=True, default_timezone=None)
    until = fields.AwareDateTime(load_default=None, allow_none=True)
    status = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(STATUSES))


class ReplayResultSchema(Schema):
    requeued = fields.Integer(required=True, metadata={"description": "deliveries sent again"})
    more = fields.Boolean(
        required=True, metadata={"description": "more matched than one call replays: call again"}
    )
