from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from webhooks.models.event import OPERATIONAL_PREFIX
from webhooks.schemas.consumers import uid_validators
from webhooks.schemas.deliveries import NESTED_LIMIT, DeliverySchema

# \Z, not $: in Python $ also matches before a trailing newline.
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\Z"
MAX_DEPTH = 32
MAX_ORDERING_KEY = 200


def json_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Return the nesting depth of a JSON value, stopping once it passes `limit`."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        level = [i for i in nxt if isinstance(i, dict | list)]
    return depth


MAX_CHANNELS = 20
# \Z, not $: in Python $ also matches before a trailing newline.
CHANNEL_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}\Z"


def channels_field(**kwargs: Any) -> fields.List:
    """A list of channel names, as events and subscriptions carry them."""
    return fields.List(
        fields.String(
            validate=validate.Regexp(
                CHANNEL_PATTERN,
                error="must be 1 to 128 letters, digits and '_', '.', ':', '-'",
            )
        ),
        validate=validate.Length(max=MAX_CHANNELS),
        **kwargs,
    )


def _not_reserved(value: str) -> None:
    if value.startswith(OPERATIONAL_PREFIX):
        raise ValidationError(f"'{OPERATIONAL_PREFIX}' types are emitted by the service only")


event_type_field = fields.String(
    required=True,
    validate=[
        validate.Length(min=1, max=200),
        validate.Regexp(
            EVENT_TYPE_PATTERN,
            error="must be dot-separated names of letters, digits, '_' and '-'",
        ),
        _not_reserved,
    ],
    metadata={"not": {"pattern": "^webhook\\."}},
)


class EventCreateSchema(Schema):
    event_type = event_type_field
    payload = fields.Raw(required=True, allow_none=False)
    consumer = fields.String(
        load_default=None,
        allow_none=True,
        validate=uid_validators,
        metadata={"description": "uid of the consumer whose subscriptions get the event"},
    )
    channels = channels_field(load_default=list)
    ordering_key = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=1, max=MAX_ORDERING_KEY),
        metadata={
            "description": "a fifo subscription delivers events with the same key one at a"
            " time, in ingest order; without one, its events share one lane"
        },
    )

    @validates("payload")
    def _payload_depth(self, value: Any, **_: Any) -> None:
        if json_depth(value) > MAX_DEPTH:
            raise ValidationError(f"nests deeper than {MAX_DEPTH} levels")


class EventSchema(Schema):
    id = fields.UUID()
    event_type = fields.String()
    payload = fields.Raw()
    consumer = fields.String(attribute="consumer_uid", allow_none=True)
    channels = fields.List(fields.String())
    idempotency_key = fields.String(allow_none=True)
    ordering_key = fields.String(allow_none=True)
    created_at = fields.DateTime()
    deliveries = fields.Integer()


class EventDetailSchema(EventSchema):
    deliveries = fields.List(  # type: ignore[assignment]
        fields.Nested(DeliverySchema),
        metadata={"description": f"the first {NESTED_LIMIT} deliveries"},
    )
    more_deliveries = fields.Boolean(
        metadata={"description": "there are more deliveries: page through `deliveries_url`"}
    )
    deliveries_url = fields.String(
        metadata={"description": "the paginated list of all its deliveries"}
    )


MAX_BATCH_EVENTS = 500
MAX_IDEMPOTENCY_KEY = 255


class BatchEventSchema(EventCreateSchema):
    idempotency_key = fields.String(
        validate=[
            validate.Length(min=1, max=MAX_IDEMPOTENCY_KEY),
            validate.Predicate("isprintable", error="must hold printable characters only"),
        ]
    )


class EventBatchCreateSchema(Schema):
    events = fields.List(
        fields.Nested(BatchEventSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_BATCH_EVENTS),
    )


class BatchAcceptedSchema(Schema):
    id = fields.UUID(required=True)
    event_type = fields.String(required=True)
    idempotency_key = fields.String(required=True, allow_none=True)
    consumer = fields.String(required=True, allow_none=True)
    channels = fields.List(fields.String(), required=True)
    ordering_key = fields.String(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    deliveries = fields.Integer(required=True)
    replayed = fields.Boolean(
        required=True, metadata={"description": "an earlier event with this idempotency key"}
    )


class EventBatchResultSchema(Schema):
    data = fields.List(fields.Nested(BatchAcceptedSchema), required=True)
    created = fields.Integer(required=True, metadata={"description": "new events"})
    replayed = fields.Integer(
        required=True, metadata={"description": "events found by their idempotency key"}
    )
    deliveries = fields.Integer(required=True, metadata={"description": "new deliveries"})
