from __future__ import annotations

from marshmallow import Schema, fields, validate

from webhooks.models import AttemptResult, DeliveryStatus
from webhooks.schemas.consumers import ConsumerFilterQuery

STATUSES = [s.value for s in DeliveryStatus]


class AttemptSchema(Schema):
    number = fields.Integer()
    result = fields.String(metadata={"enum": [r.value for r in AttemptResult]})
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    duration_ms = fields.Float(allow_none=True)
    response_body = fields.String(allow_none=True)
    response_truncated = fields.Boolean()
    created_at = fields.DateTime()


class DeliverySchema(Schema):
    id = fields.UUID()
    event_id = fields.UUID()
    subscription_id = fields.UUID()
    status = fields.String(metadata={"enum": STATUSES})
    attempt_count = fields.Integer()
    next_attempt_at = fields.DateTime(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    parked = fields.Boolean()
    ordering_key = fields.String(
        allow_none=True,
        metadata={"description": "its event's ordering key (fifo subscriptions keep its order)"},
    )
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


# Nested lists in a detail answer hold at most this many items; the rest is paginated.
NESTED_LIMIT = 100


class DeliveryDetailSchema(DeliverySchema):
    attempts = fields.List(
        fields.Nested(AttemptSchema),
        metadata={"description": f"the first {NESTED_LIMIT} attempts, oldest first"},
    )
    more_attempts = fields.Boolean(
        metadata={"description": "there are more attempts: page through `attempts_url`"}
    )
    attempts_url = fields.String(metadata={"description": "the paginated list of all attempts"})


class DeliveryListQuery(ConsumerFilterQuery):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    subscription_id = fields.UUID(load_default=None)
    event_id = fields.UUID(load_default=None)
