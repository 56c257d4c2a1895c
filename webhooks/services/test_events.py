"""Send one subscription a test event, to check its endpoint from the console or the portal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from webhooks import dispatch, metrics
from webhooks.db import uuid7
from webhooks.models import Delivery, DeliveryStatus, Event
from webhooks.models.event import OPERATIONAL_PREFIX
from webhooks.models.subscription import SubscriptionStatus
from webhooks.services import Conflict
from webhooks.services import subscriptions as subscription_service

# Emitted by the service itself, under the operational prefix (so a failing test delivery never
# causes an operational event); sent only to the one subscription asked for, whatever event
# types it lists.
TEST_EVENT_TYPE = OPERATIONAL_PREFIX + "test"


def send_test_event(session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> Delivery:
    """Store a test event with one delivery to this subscription, commit, then enqueue it."""
    subscription = subscription_service.get(session, tenant_id, subscription_id)
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise Conflict(
            "the subscription is disabled; enable it first", {"id": str(subscription_id)}
        )
    now = datetime.now(UTC)
    event = Event(
        id=uuid7(),
        tenant_id=tenant_id,
        event_type=TEST_EVENT_TYPE,
        payload={"test": True, "subscription_id": str(subscription.id), "sent_at": now.isoformat()},
    )
    delivery = Delivery(
        id=uuid7(),
        tenant_id=tenant_id,
        event_id=event.id,
        subscription_id=subscription.id,
        status=DeliveryStatus.PENDING,
        next_attempt_at=now,
        dispatched_at=now,
    )
    session.add(event)
    session.flush()  # the event first: the delivery refers to it
    session.add(delivery)
    session.commit()
    metrics.EVENTS_INGESTED.inc()
    if not dispatch.enqueue_deliveries([delivery.id]):
        metrics.ENQUEUE_FAILURES.inc()
    return delivery
