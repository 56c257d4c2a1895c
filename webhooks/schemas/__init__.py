"""Marshmallow schemas for request bodies, query strings and responses."""

from webhooks.schemas.common import (
    ErrorSchema,
    PageQuery,
    decode_cursor,
    encode_cursor,
)
from webhooks.schemas.deliveries import (
    AttemptSchema,
    DeliveryDetailSchema,
    DeliveryListQuery,
    DeliverySchema,
)
from webhooks.schemas.events import EventCreateSchema, EventDetailSchema, EventSchema
from webhooks.schemas.subscriptions import (
    ReplaySchema,
    SubscriptionCreateSchema,
    SubscriptionHealthSchema,
    SubscriptionSchema,
    SubscriptionUpdateSchema,
    SubscriptionWithSecretSchema,
)

__all__ = [
    "AttemptSchema",
    "DeliveryDetailSchema",
    "DeliveryListQuery",
    "DeliverySchema",
    "ErrorSchema",
    "EventCreateSchema",
    "EventDetailSchema",
    "EventSchema",
    "PageQuery",
    "ReplaySchema",
    "SubscriptionCreateSchema",
    "SubscriptionHealthSchema",
    "SubscriptionSchema",
    "SubscriptionUpdateSchema",
    "SubscriptionWithSecretSchema",
    "decode_cursor",
    "encode_cursor",
]
