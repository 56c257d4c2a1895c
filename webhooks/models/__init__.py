"""The tables: tenants own API keys, consumers, event types, subscriptions and events;
deliveries join events to subscriptions."""

from webhooks.models.consumer import Consumer
from webhooks.models.delivery import Attempt, AttemptResult, Delivery, DeliveryStatus
from webhooks.models.event import Event
from webhooks.models.event_type import EventType
from webhooks.models.lane import Lane
from webhooks.models.subscription import Subscription, SubscriptionStatus
from webhooks.models.tenant import ApiKey, Tenant

__all__ = [
    "ApiKey",
    "Attempt",
    "AttemptResult",
    "Consumer",
    "Delivery",
    "DeliveryStatus",
    "Event",
    "EventType",
    "Lane",
    "Subscription",
    "SubscriptionStatus",
    "Tenant",
]
