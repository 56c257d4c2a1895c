"""Reads for the API and the pages: lists with keyset pagination, and one resource with what
hangs off it.

Every function but the operator's (at the end) takes the tenant and finds only that tenant's
rows; another tenant's ID is a NotFound.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from webhooks.models import Attempt, Delivery, DeliveryStatus, Event, EventType, Subscription
from webhooks.services import NotFound
from webhooks.services import consumers as consumer_service
from webhooks.services import subscriptions as subscription_service
from webhooks.services.paging import MAX_PAGE, Page, bigint, keyset

__all__ = ["MAX_PAGE", "Page", "keyset"]


def subscriptions(
    session: Session, tenant_id: uuid.UUID, after: str | None = None, limit: int = 50
) -> Page[Subscription]:
    """The tenant's live subscriptions, newest first."""
    return subscription_service.list_(session, tenant_id, limit, after)


@dataclass(frozen=True)
class DeliveryFilter:
    status: DeliveryStatus | None = None
    event_type: str | None = None
    subscription_id: uuid.UUID | None = None
    event_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    # The consumer by ID (the portal) or by the tenant's uid for it (the console).
    consumer_id: uuid.UUID | None = None
    consumer_uid: str | None = None


def deliveries(
    session: Session,
    tenant_id: uuid.UUID,
    where: DeliveryFilter,
    after: str | uuid.UUID | None = None,
    limit: int = 50,
) -> Page[Any]:
    """The tenant's deliveries that match, newest first, each row with its event's type and
    its subscription's URL (`row.Delivery`, `row.event_type`, `row.url`)."""
    query = (
        select(Delivery, Event.event_type, Subscription.url)
        .join(Event, Event.id == Delivery.event_id)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Delivery.tenant_id == tenant_id)
    )
    if where.status is not None:
        query = query.where(Delivery.status == where.status)
    if where.event_type:
        query = query.where(Event.event_type == where.event_type)
    if where.subscription_id is not None:
        query = query.where(Delivery.subscription_id == where.subscription_id)
    if where.event_id is not None:
        query = query.where(Delivery.event_id == where.event_id)
    if where.consumer_id is not None:
        query = query.where(Subscription.consumer_id == where.consumer_id)
    if where.consumer_uid:
        query = query.where(
            Subscription.consumer_id.in_(consumer_service.ids_of(tenant_id, where.consumer_uid))
        )
    if where.since is not None:
        query = query.where(Delivery.created_at >= where.since)
    if where.until is not None:
        query = query.where(Delivery.created_at < where.until)
    return keyset(session, query, Delivery.id, after, limit)


@dataclass
class DeliveryView:
    delivery: Delivery
    event: Event
    subscription: Subscription
    attempts: list[Attempt]


def find_delivery(session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery:
    """One of the tenant's deliveries; NotFound for another tenant's."""
    found = session.scalar(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.tenant_id == tenant_id)
    )
    if found is None:
        raise NotFound("no such delivery", {"id": str(delivery_id)})
    return found


def find_event(session: Session, tenant_id: uuid.UUID, event_id: uuid.UUID) -> Event:
    """One of the tenant's events; NotFound for another tenant's."""
    found = session.scalar(select(Event).where(Event.id == event_id, Event.tenant_id == tenant_id))
    if found is None:
        raise NotFound("no such event", {"id": str(event_id)})
    return found


def delivery_attempts(
    session: Session, delivery: Delivery, after: int | None = None, limit: int = 50
) -> Page[Attempt]:
    """A delivery's attempts, oldest first."""
    query = select(Attempt).where(Attempt.delivery_id == delivery.id)
    return keyset(session, query, Attempt.id, after, limit, ascending=True)


def event_deliveries(session: Session, event: Event, limit: int) -> Page[Delivery]:
    """The first `limit` deliveries of an event, oldest first."""
    query = select(Delivery).where(Delivery.event_id == event.id)
    return keyset(session, query, Delivery.id, None, limit, ascending=True)


def delivery(session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryView:
    """One of the tenant's deliveries with its event, subscription and every attempt."""
    found = find_delivery(session, tenant_id, delivery_id)
    event = session.get(Event, found.event_id)
    subscription = session.get(Subscription, found.subscription_id)
    assert event is not None and subscription is not None  # foreign keys
    attempts = list(
        session.scalars(
            select(Attempt).where(Attempt.delivery_id == found.id).order_by(Attempt.number)
        )
    )
    return DeliveryView(found, event, subscription, attempts)


def event(session: Session, tenant_id: uuid.UUID, event_id: uuid.UUID) -> tuple[Event, list[Any]]:
    """One of the tenant's events and its deliveries (rows as in `deliveries`)."""
    found = find_event(session, tenant_id, event_id)
    page = deliveries(session, tenant_id, DeliveryFilter(event_id=found.id), limit=MAX_PAGE)
    return found, page.items


def attempts(
    session: Session,
    tenant_id: uuid.UUID,
    subscription_id: uuid.UUID,
    after: str | None = None,
    limit: int = 50,
) -> Page[Attempt]:
    """A subscription's attempts, newest first."""
    subscription = subscription_service.get(session, tenant_id, subscription_id)
    query = select(Attempt).where(Attempt.subscription_id == subscription.id)
    return keyset(session, query, Attempt.id, after, limit, parse=bigint)


def event_types(
    session: Session, tenant_id: uuid.UUID, with_archived: bool = True
) -> list[EventType]:
    """The tenant's event-type catalogue, by name."""
    query = select(EventType).where(EventType.tenant_id == tenant_id)
    if not with_archived:
        query = query.where(EventType.archived.is_(False))
    return list(session.scalars(query.order_by(EventType.name)))


# The operator's reads (the CLI): across tenants, by ID.


def owner(session: Session, model: type[Delivery] | type[Subscription], id_: uuid.UUID) -> Any:
    """The tenant of a delivery or subscription, or None if there is no such row."""
    return session.scalar(select(model.tenant_id).where(model.id == id_))


def recent_failures(session: Session, limit: int) -> list[Delivery]:
    """The most recent failed deliveries of every tenant, newest first."""
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.status == DeliveryStatus.FAILED)
            .order_by(Delivery.id.desc())
            .limit(limit)
        )
    )
