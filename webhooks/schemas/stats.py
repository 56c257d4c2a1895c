from __future__ import annotations

from marshmallow import Schema, fields, validate

from webhooks.models import AttemptResult
from webhooks.services.stats import WINDOWS


class StatsQuery(Schema):
    window = fields.String(load_default="24h", validate=validate.OneOf(list(WINDOWS)))


# One count per result, so a new result shows up here by itself.
AttemptCountsSchema = Schema.from_dict(
    {result.value: fields.Integer(required=True) for result in AttemptResult},
    name="AttemptCountsSchema",
)


class SubscriptionStatsSchema(Schema):
    subscription_id = fields.UUID()
    window = fields.String(metadata={"enum": list(WINDOWS)})
    since = fields.DateTime()
    until = fields.DateTime()
    attempts = fields.Nested(
        AttemptCountsSchema, metadata={"description": "attempts made in the window, by result"}
    )
    total = fields.Integer()
    success_rate = fields.Float(
        allow_none=True, metadata={"description": "successes / total; null without attempts"}
    )
    p50_ms = fields.Float(allow_none=True, metadata={"description": "median attempt duration"})
    p95_ms = fields.Float(allow_none=True)
