"""Create, list, change and delete consumers: a tenant's own customers.

A consumer is addressed by its `uid`, the tenant's own identifier. Another tenant's uid is
never found: every lookup is scoped by tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, select
from sqlalchemy.orm import Session

from webhooks.db import locking, uuid7
from webhooks.models import Consumer, Subscription
from webhooks.services import Conflict, NotFound, add_unique
from webhooks.services.paging import Page, keyset


def live(tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """The condition for the tenant's consumers that are not deleted."""
    return and_(Consumer.tenant_id == tenant_id, Consumer.deleted_at.is_(None))


def create(session: Session, tenant_id: uuid.UUID, data: dict[str, Any]) -> Consumer:
    """Create a consumer; 409 if the tenant already has one with this uid."""
    consumer = Consumer(
        id=uuid7(),
        tenant_id=tenant_id,
        uid=data["uid"],
        name=data["name"],
        metadata_=data.get("metadata") or {},
    )
    add_unique(session, consumer, Conflict("a consumer with this uid exists", {"uid": data["uid"]}))
    return consumer


def get(session: Session, tenant_id: uuid.UUID, uid: str, *, lock: str | None = None) -> Consumer:
    """Return the tenant's live consumer with this uid, or raise NotFound. `lock` ("share" or
    "update", db.locking) locks its row until the transaction ends; a consumer deleted
    meanwhile is then not found."""
    query = locking(select(Consumer).where(live(tenant_id), Consumer.uid == uid), Consumer, lock)
    found = session.scalar(query)
    if found is None:
        raise NotFound("no such consumer", {"uid": uid})
    return found


def by_id(session: Session, tenant_id: uuid.UUID, consumer_id: uuid.UUID) -> Consumer | None:
    """Return the tenant's live consumer with this ID, or None."""
    return session.scalar(select(Consumer).where(live(tenant_id), Consumer.id == consumer_id))


def list_(
    session: Session, tenant_id: uuid.UUID, limit: int, after: uuid.UUID | None = None
) -> Page[Consumer]:
    """Return a page of consumers, newest first, after the ID `after`."""
    return keyset(session, select(Consumer).where(live(tenant_id)), Consumer.id, after, limit)


def update(session: Session, tenant_id: uuid.UUID, uid: str, data: dict[str, Any]) -> Consumer:
    """Change the given fields (`name`, `metadata`)."""
    consumer = get(session, tenant_id, uid)
    if "name" in data:
        consumer.name = data["name"]
    if "metadata" in data:
        consumer.metadata_ = data["metadata"] or {}
    session.commit()
    return consumer


def delete(session: Session, tenant_id: uuid.UUID, uid: str) -> None:
    """Delete a consumer and its subscriptions, as deleting each subscription would."""
    from webhooks.services import subscriptions

    # Locked first: a subscription being made for it meanwhile is committed before the list
    # below is read, or sees the consumer gone (subscriptions._consumer).
    consumer = get(session, tenant_id, uid, lock="update")
    for subscription in session.scalars(
        select(Subscription).where(
            Subscription.consumer_id == consumer.id, Subscription.deleted_at.is_(None)
        )
    ).all():
        subscriptions.remove(session, subscription)
    consumer.deleted_at = datetime.now(UTC)
    session.commit()


def resolve(session: Session, tenant_id: uuid.UUID, uids: Iterable[str]) -> dict[str, uuid.UUID]:
    """Map each of these uids that names a live consumer of the tenant to its ID."""
    wanted = set(uids)
    if not wanted:
        return {}
    rows = session.execute(
        select(Consumer.uid, Consumer.id).where(live(tenant_id), Consumer.uid.in_(wanted))
    )
    return {uid: consumer_id for uid, consumer_id in rows}


def ids_of(tenant_id: uuid.UUID, uid: str) -> Select[uuid.UUID]:
    """A subquery of the ID of the tenant's live consumer with this uid (none if unknown)."""
    return select(Consumer.id).where(live(tenant_id), Consumer.uid == uid)
