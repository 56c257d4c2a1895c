"""Hand deliveries to the scheduler and start what it picks, as Celery tasks.

Every call is best effort: if Redis is down, PostgreSQL still holds each delivery, and the
watchdog hands the due ones over again once Redis is back (see webhooks.scheduler).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import redis
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webhooks import dispatch, metrics
from webhooks.models import Subscription
from webhooks.redis_client import ScriptCall, run_together
from webhooks.runtime import get_scheduler
from webhooks.scheduler import Item, Picked

log = logging.getLogger(__name__)

T = TypeVar("T")

_ITEMS = text(
    "SELECT d.id, d.subscription_id, d.tenant_id, s.max_in_flight, s.rate_limit"
    "  FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
    " WHERE d.id = ANY(CAST(:ids AS uuid[]))"
    " ORDER BY d.id"
)


def items(rows: Iterable[Any]) -> list[Item]:
    """Items from rows with id, subscription_id, tenant_id, max_in_flight and rate_limit."""
    return [
        Item(str(r.id), str(r.subscription_id), str(r.tenant_id), r.max_in_flight, r.rate_limit)
        for r in rows
    ]


def submit(ready: Sequence[Item]) -> bool:
    """Queue ready deliveries with the scheduler and start what may start now."""
    if not ready:
        return True
    try:
        picked = get_scheduler().enqueue(ready)
    except redis.RedisError as exc:
        log.warning(
            "scheduler unavailable, %d delivery(ies) left to the watchdog: %s", len(ready), exc
        )
        metrics.ENQUEUE_FAILURES.inc(len(ready))
        return False
    start(picked)
    return True


def submit_ids(db: Session | Connection, ids: Sequence[uuid.UUID | str]) -> bool:
    """Queue deliveries by ID (oldest first), reading what the scheduler needs to know."""
    if not ids:
        return True
    rows = db.execute(_ITEMS, {"ids": [str(i) for i in ids]}).all()
    return submit(items(rows))


def finish(
    delivery_id: str,
    subscription_id: str,
    tenant_id: str,
    outcome: str,
    retry_at: float | None,
    along: ScriptCall[T] | None = None,
    keep: bool = False,
    ready: Sequence[Item] = (),
) -> tuple[T | None, Picked | None]:
    """Tell the scheduler an attempt ended (and when it is due again); start the next ones.

    `along` (the circuit breaker's record of the attempt) is made first, in the same round
    trip. Returns its answer, and the pick (None if Redis did not answer). With `keep`, the
    pick's first delivery is not started but kept (`Picked.kept`), for the caller to attempt.
    `ready`: deliveries to queue first (an ordered lane's next, see delivery._in_lane).
    """
    scheduler = get_scheduler()
    token = uuid.uuid4().hex if keep else ""
    call = scheduler.finish_call(
        delivery_id,
        subscription_id,
        tenant_id,
        outcome,
        retry_at=retry_at,
        keep=token,
        ready=ready,
    )
    answer: T | None = None
    try:
        if along is None:
            picked = call.run()
        else:
            answer, picked = run_together(scheduler.client, [along, call])
            if isinstance(picked, redis.RedisError):
                raise picked
            if isinstance(answer, redis.RedisError):
                log.warning("circuit state unavailable: %s", answer)
                answer = None
    except redis.RedisError as exc:
        # Its slot comes back when its lease in Redis ends; a retry is found by the watchdog.
        # (The breaker misses this outcome, as it does when Redis is down.) What it kept, or
        # its `ready` deliveries, are handed out now if Redis answers that.
        log.warning("scheduler unavailable after an attempt: %s", exc)
        if (token or ready) and not _unkeep(token, ready) and ready:
            metrics.ENQUEUE_FAILURES.inc(len(ready))
        return None, None
    start(picked)
    return answer, picked


def _unkeep(token: str, ready: Sequence[Item]) -> bool:
    """A finish whose answer was lost may have kept a pick (its task goes out now, else it
    would hold its slot until its lease in Redis ends), or not have run at all (its `ready`
    deliveries, an ordered lane's next, are added now, else they would wait for the watchdog).
    Best effort: False if Redis does not answer this either (then the lease, and the watchdog
    once lost_after has passed)."""
    try:
        start(get_scheduler().unkeep(token, ready))
    except redis.RedisError as exc:
        log.warning("scheduler unavailable: %s", exc)
        return False
    return True


def pump() -> float | None:
    """Move due retries and timers along and start what may start; say when to call again."""
    picked = get_scheduler().pump()
    start(picked)
    return picked.wake_at


def start(picked: Picked) -> None:
    """Send a Celery task for each picked delivery (unless the pick did), and count the
    waits."""
    for reason, count in picked.blocked.items():
        metrics.THROTTLED.labels(reason=reason).inc(count)
    if picked.sent:
        return  # by the scheduler's own script
    if picked.ids and not dispatch.enqueue_deliveries(picked.ids):
        metrics.ENQUEUE_FAILURES.inc(len(picked.ids))
        # Give their slots back, and leave them to the watchdog (if Redis answers at all:
        # otherwise their leases in Redis end by themselves).
        try:
            get_scheduler().forget(picked.ids)
        except redis.RedisError as exc:
            log.warning("scheduler unavailable: %s", exc)


def configure(
    subscription_id: uuid.UUID, tenant_id: uuid.UUID, max_in_flight: int, rate_limit: int | None
) -> None:
    """Apply a subscription's new limits now (they also travel with each delivery queued)."""
    try:
        get_scheduler().configure(str(subscription_id), str(tenant_id), max_in_flight, rate_limit)
    except redis.RedisError as exc:
        log.warning("scheduler unavailable, limits apply from the next delivery: %s", exc)


def state(subscription: Subscription) -> dict[str, Any] | None:
    """The subscription's limits in force and its waiting work, or None if Redis is down."""
    try:
        return get_scheduler().subscription_state(
            str(subscription.id), subscription.max_in_flight, subscription.rate_limit
        )
    except redis.RedisError as exc:
        log.warning("scheduler state unavailable: %s", exc)
        return None
