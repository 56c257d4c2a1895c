"""Accept events: store the event and its deliveries in one transaction, then enqueue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from webhooks import dispatch, metrics
from webhooks.db import uuid7
from webhooks.models import Delivery, DeliveryStatus, Event
from webhooks.services import Conflict

_MATCHING_SUBSCRIPTIONS = text(
    "SELECT id FROM subscriptions"
    " WHERE tenant_id = :tenant_id AND status = 'active' AND deleted_at IS NULL"
    " AND event_types && ARRAY[:event_type, '*']::varchar[]"
    " ORDER BY id"
)


@dataclass
class Accepted:
    event: Event
    deliveries: int
    created: bool


def _existing(session: Session, tenant_id: uuid.UUID, key: str, body_hash: bytes) -> Accepted:
    event = session.scalars(
        select(Event).where(Event.tenant_id == tenant_id, Event.idempotency_key == key)
    ).one()
    if event.request_hash != body_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            {"idempotency_key": key, "event_id": str(event.id)},
        )
    count = session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.event_id == event.id)
    )
    return Accepted(event, int(count or 0), created=False)


def publish_event(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: str,
    payload: Any,
    idempotency_key: str | None = None,
    body_hash: bytes | None = None,
) -> Accepted:
    """Store an event and one delivery per matching subscription, commit, then enqueue them."""
    if idempotency_key is not None:
        assert body_hash is not None
        found = session.scalar(
            select(Event.id).where(
                Event.tenant_id == tenant_id, Event.idempotency_key == idempotency_key
            )
        )
        if found is not None:
            return _existing(session, tenant_id, idempotency_key, body_hash)

    now = datetime.now(UTC)
    event_id = uuid7()
    inserted = session.execute(
        pg_insert(Event)
        .values(
            id=event_id,
            tenant_id=tenant_id,
            event_type=event_type,
            payload=payload,
            idempotency_key=idempotency_key,
            request_hash=body_hash,
            created_at=now,
        )
        .on_conflict_do_nothing(constraint="uq_events_tenant_idempotency_key")
        .returning(Event.id)
    ).scalar()
    if inserted is None:
        # A concurrent request with the same key won the race; answer as it did.
        assert idempotency_key is not None and body_hash is not None
        return _existing(session, tenant_id, idempotency_key, body_hash)

    subscription_ids = session.execute(
        _MATCHING_SUBSCRIPTIONS, {"tenant_id": tenant_id, "event_type": event_type}
    ).scalars().all()
    delivery_ids = [uuid7() for _ in subscription_ids]
    if delivery_ids:
        session.execute(
            insert(Delivery),
            [
                {
                    "id": delivery_id,
                    "tenant_id": tenant_id,
                    "event_id": event_id,
                    "subscription_id": subscription_id,
                    "status": DeliveryStatus.PENDING,
                    "next_attempt_at": now,
                    "dispatched_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for delivery_id, subscription_id in zip(delivery_ids, subscription_ids, strict=True)
            ],
        )
    session.commit()
    metrics.EVENTS_INGESTED.inc()
    if not dispatch.enqueue_deliveries(delivery_ids):
        metrics.ENQUEUE_FAILURES.inc(len(delivery_ids))
    event = Event(
        id=event_id,
        tenant_id=tenant_id,
        event_type=event_type,
        payload=payload,
        idempotency_key=idempotency_key,
        created_at=now,
    )
    return Accepted(event, len(delivery_ids), created=True)
