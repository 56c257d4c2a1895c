"""Manual recovery: retry one delivery, replay a subscription's deliveries over a time range."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, exists, func, null, select, update
from sqlalchemy.orm import Session

from webhooks.models import Delivery, DeliveryStatus, Event
from webhooks.models.lane import Lane
from webhooks.models.subscription import SubscriptionStatus
from webhooks.scheduler import Item
from webhooks.services import Conflict, NotFound, lanes, scheduling
from webhooks.services import subscriptions as subscription_service

FINAL = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)
REPLAY_LIMIT = 1000

_FRESH_START: dict[str, Any] = {
    "status": DeliveryStatus.PENDING,
    "failures": 0,
    "parked": False,
    "lease_expires_at": None,
    "last_error": None,
}


def retry(session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery:
    """Give a finished delivery a fresh set of attempts (same webhook-id) and send it now."""
    delivery = session.scalar(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.tenant_id == tenant_id)
    )
    if delivery is None:
        raise NotFound("no such delivery", {"id": str(delivery_id)})
    # Shared: a disable, delete or change of ordering waits for this restart and then sees it
    # (else it could miss a row restarted meanwhile and leave it waiting in a lane for good).
    subscription = subscription_service.get(
        session, tenant_id, delivery.subscription_id, lock="share"
    )
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise Conflict("the subscription is disabled; enable it first", {"id": str(delivery_id)})
    moved = _restart(session, [delivery.id])
    if not moved.ids:
        raise Conflict(
            "the delivery is still in progress", {"id": str(delivery_id), "status": delivery.status}
        )
    session.commit()
    session.refresh(delivery)
    _send(session, moved)
    return delivery


def replay(
    session: Session,
    tenant_id: uuid.UUID,
    subscription_id: uuid.UUID,
    since: datetime,
    until: datetime | None,
    status: str | None,
    limit: int | None = None,
) -> tuple[int, bool]:
    """Send again the finished deliveries created in [since, until), oldest first, at most
    `limit` (default REPLAY_LIMIT); return how many and whether more remain. Unfinished ones
    are left alone, so a second call while they are pending requeues nothing."""
    limit = REPLAY_LIMIT if limit is None else limit
    subscription = subscription_service.get(session, tenant_id, subscription_id, lock="share")
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise Conflict(
            "the subscription is disabled; enable it first", {"id": str(subscription_id)}
        )
    statuses = [DeliveryStatus(status)] if status else list(FINAL)
    statuses = [s for s in statuses if s in FINAL]
    if not statuses:
        return 0, False
    query = select(Delivery.id).where(
        Delivery.tenant_id == tenant_id,
        Delivery.subscription_id == subscription.id,
        Delivery.status.in_(statuses),
        Delivery.created_at >= since,
    )
    if until is not None:
        query = query.where(Delivery.created_at < until)
    ids = session.scalars(
        query.order_by(Delivery.id).limit(limit + 1).with_for_update(skip_locked=True)
    ).all()
    more = len(ids) > limit
    ids = ids[:limit]
    moved = _restart(session, ids)
    session.commit()
    _send(session, moved)
    return len(ids), more


@dataclass
class _Restarted:
    ids: list[uuid.UUID]  # every delivery restarted
    unordered: list[uuid.UUID]  # of those, the ones due now
    lanes: list[Item]  # the fifo lanes' new holders


def _restart(session: Session, ids: Sequence[uuid.UUID]) -> _Restarted:
    """Give finished deliveries a fresh start. An unordered one is due now; a fifo one goes
    back to its lane, which sends its deliveries lowest number first (services/lanes.py). One
    whose lane retention has removed (idle for the period) goes out unordered: there is no
    lane left to order it in."""
    if not ids:
        return _Restarted([], [], [])
    # Their events are kept from retention's purge until this commits (it skips locked ones):
    # a delivery restarted is unfinished again, and must not go with an event purged as done.
    session.execute(
        select(Event.id)
        .where(Event.id.in_(select(Delivery.event_id).where(Delivery.id.in_(ids))))
        .with_for_update(read=True, key_share=True)
    )
    # Their lanes too: retention skips a locked lane, and one it removed first is gone by the
    # time the UPDATE below looks.
    session.execute(
        select(Lane.id)
        .where(Lane.id.in_(select(Delivery.lane_id).where(Delivery.id.in_(ids))))
        .with_for_update(read=True, key_share=True)
    )
    in_lane = exists(select(Lane.id).where(Lane.id == Delivery.lane_id))
    rows = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.status.in_(FINAL))
        .values(
            **_FRESH_START,
            next_attempt_at=case((in_lane, null()), else_=func.now()),
            dispatched_at=case((in_lane, null()), else_=func.now()),
            lane_id=case((in_lane, Delivery.lane_id), else_=null()),
        )
        .returning(Delivery.id, Delivery.lane_id)
        .execution_options(synchronize_session=False)
    ).all()
    return _Restarted(
        [r.id for r in rows],
        [r.id for r in rows if r.lane_id is None],
        lanes.advance(session, [r.lane_id for r in rows if r.lane_id is not None]),
    )


def _send(session: Session, restarted: _Restarted) -> None:
    """Hand the deliveries to the scheduler, oldest first (the watchdog does if this fails)."""
    scheduling.submit_ids(session, sorted(restarted.unordered))
    scheduling.submit(restarted.lanes)
