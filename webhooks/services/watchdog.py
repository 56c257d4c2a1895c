"""The watchdog: take back expired leases, re-send lost or due work, release parked work.

Every step claims rows with a conditional UPDATE over `FOR UPDATE SKIP LOCKED`, so two
watchdogs running at once hand each row to exactly one of them.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import text

from config import get_settings
from webhooks import dispatch, metrics
from webhooks.db import session_scope
from webhooks.services import operational
from webhooks.services.delivery import get_breaker

log = logging.getLogger("webhooks.watchdog")

BATCH = 1000

_EXPIRED_LEASES = text(
    """
UPDATE deliveries d
   SET status = CASE WHEN d.failures + 1 > :max_failures THEN 'failed' ELSE 'retrying' END,
       failures = d.failures + 1,
       next_attempt_at = now(),
       dispatched_at = now(),
       lease_expires_at = NULL,
       last_error = 'the worker was lost or hung past its lease',
       updated_at = now()
  FROM (SELECT id FROM deliveries
         WHERE status = 'in_flight' AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT :batch FOR UPDATE SKIP LOCKED) stale
 WHERE d.id = stale.id
RETURNING d.id, d.status, d.attempt_count
"""
)

_RECORD_LOST_ATTEMPTS = text(
    """
INSERT INTO attempts (delivery_id, number, result, error, response_truncated, created_at)
SELECT unnest(CAST(:ids AS uuid[])), unnest(CAST(:numbers AS integer[])), 'lease_expired',
       'no outcome: the worker was lost or hung past its lease', false, now()
"""
)

# Due rows that were never sent (a long wait, a failed send) or whose message was lost
# (sent long ago and still not taken: Redis restarted empty, or its worker died).
_DUE = text(
    """
UPDATE deliveries d
   SET dispatched_at = now()
  FROM (SELECT id FROM deliveries
         WHERE status IN ('pending', 'retrying') AND NOT parked AND next_attempt_at <= now()
           AND (dispatched_at IS NULL
                OR (dispatched_at < now() - make_interval(secs => :lost_after)
                    AND next_attempt_at < now() - make_interval(secs => :lost_after)))
         ORDER BY next_attempt_at LIMIT :batch FOR UPDATE SKIP LOCKED) due
 WHERE d.id = due.id
RETURNING d.id, (d.next_attempt_at < now() - make_interval(secs => :lost_after)) AS lost
"""
)

# In random order: with more open circuits than one pass takes, each still gets its turn.
_PARKED_SUBSCRIPTIONS = text(
    "SELECT p.subscription_id, s.status = 'active' AND s.deleted_at IS NULL AS live"
    " FROM (SELECT DISTINCT subscription_id FROM deliveries WHERE parked) p"
    " JOIN subscriptions s ON s.id = p.subscription_id"
    " ORDER BY random() LIMIT :batch"
)

_RELEASE = text(
    """
UPDATE deliveries d
   SET parked = false, next_attempt_at = now(), dispatched_at = now(), updated_at = now()
  FROM (SELECT id FROM deliveries
         WHERE subscription_id = :subscription_id AND parked
         ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED) p
 WHERE d.id = p.id
RETURNING d.id
"""
)

_STILL_PARKED = text(
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE subscription_id = :subscription_id AND parked)"
)


@dataclass
class Report:
    expired: int = 0
    failed_after_expiry: int = 0
    due: int = 0
    lost: int = 0
    released: int = 0
    probes: int = 0
    sent: list[str] = field(default_factory=list)


def release_parked(subscription_id: str | uuid.UUID, batch: int = BATCH) -> tuple[list[str], bool]:
    """Release up to `batch` parked deliveries, oldest first; say whether more remain."""
    with session_scope() as session:
        ids = (
            session.execute(_RELEASE, {"subscription_id": subscription_id, "batch": batch})
            .scalars()
            .all()
        )
        more = bool(session.execute(_STILL_PARKED, {"subscription_id": subscription_id}).scalar())
    ordered = sorted(str(i) for i in ids)  # UUIDv7: sorted is oldest first
    if ordered and not dispatch.enqueue_deliveries(ordered):
        metrics.ENQUEUE_FAILURES.inc(len(ordered))
    return ordered, more


def run() -> Report:
    """Run one pass of the watchdog."""
    settings = get_settings()
    report = Report()

    with session_scope() as session:
        rows = session.execute(
            _EXPIRED_LEASES,
            {"max_failures": len(settings.retry_delays), "batch": BATCH},
        ).all()
        if rows:
            session.execute(
                _RECORD_LOST_ATTEMPTS,
                {"ids": [r.id for r in rows], "numbers": [r.attempt_count for r in rows]},
            )
            operational.deliveries_failed(session, [r.id for r in rows if r.status == "failed"])
    retry_ids = [str(r.id) for r in rows if r.status == "retrying"]
    report.expired = len(rows)
    report.failed_after_expiry = len(rows) - len(retry_ids)
    if report.failed_after_expiry:
        metrics.DELIVERIES.labels(outcome="failed").inc(report.failed_after_expiry)
    if retry_ids:
        metrics.WATCHDOG_REQUEUED.labels(reason="lease_expired").inc(len(retry_ids))

    with session_scope() as session:
        due_rows = session.execute(_DUE, {"lost_after": settings.lost_after, "batch": BATCH}).all()
    lost = sum(1 for r in due_rows if r.lost)
    report.lost, report.due = lost, len(due_rows) - lost
    if report.lost:
        metrics.WATCHDOG_REQUEUED.labels(reason="lost").inc(report.lost)
    if report.due:
        metrics.WATCHDOG_REQUEUED.labels(reason="due").inc(report.due)

    to_send = retry_ids + [str(r.id) for r in due_rows]
    if to_send and not dispatch.enqueue_deliveries(to_send):
        metrics.ENQUEUE_FAILURES.inc(len(to_send))
    report.sent.extend(to_send)

    _release_probes(report)
    if report.expired or report.due or report.lost or report.released or report.probes:
        log.info(
            "watchdog pass",
            extra={
                "expired": report.expired,
                "due": report.due,
                "lost": report.lost,
                "released": report.released,
                "probes": report.probes,
            },
        )
    return report


def _release_probes(report: Report) -> None:
    """For each subscription with parked work: release it all if its circuit is closed, or one
    delivery to serve as the probe once the cooldown is over."""
    breaker = get_breaker()
    with session_scope() as session:
        subscriptions = session.execute(_PARKED_SUBSCRIPTIONS, {"batch": BATCH}).all()
    now = time.time()
    for subscription_id, live in subscriptions:
        state = breaker.state(str(subscription_id))
        if not live:
            # Disabled or deleted: each claim ends its delivery as failed, with the reason.
            ids, _ = release_parked(subscription_id)
            reason = "subscription_disabled"
        elif state["state"] == "closed":
            # Closed (or its hash was lost, which means closed): let the work flow again.
            ids, _ = release_parked(subscription_id)
            report.released += len(ids)
            reason = "circuit_closed"
        elif (state["state"] == "open" and (state["probe_at"] or 0) <= now) or (
            state["state"] == "half_open" and (state["probe_until"] or 0) <= now
        ):
            ids, _ = release_parked(subscription_id, batch=1)
            report.probes += len(ids)
            reason = "probe"
        else:
            continue
        if ids:
            metrics.WATCHDOG_REQUEUED.labels(reason=reason).inc(len(ids))
            report.sent.extend(ids)
