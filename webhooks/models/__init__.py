"""The tables: tenants own API keys, subscriptions and events; deliveries join them."""

from webhooks.models.delivery import Attempt, AttemptResult, Delivery, DeliveryStatus
from webhooks.models.event import Event
from webhooks.models.subscription import Subscription, SubscriptionStatus
from webhooks.models.tenant import ApiKey, Tenant

__all__ = [
    "ApiKey",
    "Attempt",
    "AttemptResult",
    "Delivery",
    "DeliveryStatus",
    "Event",
    "Subscription",
    "SubscriptionStatus",
    "Tenant",
]
