"""The watchdog: take back expired leases, hand lost work to the scheduler again, release
parked work.

PostgreSQL is the source of truth; the scheduler in Redis only holds what is ready, delayed or
in flight. The watchdog compares the two: a due row that Redis no longer knows (it restarted
empty, or a process died between the two) is handed over again; a row that Redis still holds is
left alone however long it has waited, so a backlog is never duplicated.

Every step claims rows with a conditional UPDATE over `FOR UPDATE SKIP LOCKED`, so two
watchdogs running at once hand each row to exactly one of them.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import text

from config import get_settings
from webhooks import metrics, scheduler
from webhooks.db import session_scope
from webhooks.models import DeliveryStatus
from webhooks.runtime import get_breaker, get_scheduler
from webhooks.services import lanes, operational, scheduling

log = logging.getLogger("webhooks.watchdog")

S = DeliveryStatus
BATCH = 1000
# A pass that finds lost work keeps going, batch after batch, for at most this share of the
# interval (at least a few seconds), so recovery after Redis lost everything is fast.
PASS_SHARE = 0.8
LOST_BATCH = 5000
LOST = "the worker was lost or hung past its lease"

# Each claim's `LIMIT ... FOR UPDATE SKIP LOCKED` is a MATERIALIZED CTE, run exactly once. As a
# subquery in FROM or IN, a plan may run it again per outer row, each run skipping the rows the
# statement already took: the half-open circuit's one probe (`_UNPARK`, batch 1) let 1,199
# parked deliveries go in one loaded test run.
_EXPIRED_LEASES = text(
    f"""
WITH stale AS MATERIALIZED (
  SELECT id FROM deliveries
   WHERE status = '{S.IN_FLIGHT}' AND lease_expires_at < now()
   ORDER BY lease_expires_at LIMIT :batch FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
   SET status = CASE WHEN d.failures + 1 > :max_failures THEN '{S.FAILED}'
                     ELSE '{S.RETRYING}' END,
       failures = d.failures + 1,
       next_attempt_at = now(),
       dispatched_at = now(),
       lease_expires_at = NULL,
       last_error = :lost,
       updated_at = now()
  FROM stale
 WHERE d.id = stale.id
RETURNING d.id, d.status, d.attempt_count, d.subscription_id, d.tenant_id, d.lane_id,
          (SELECT e.event_type FROM events e WHERE e.id = d.event_id) AS event_type
"""  # noqa: S608 (status names from the enums, no input)
)

_RECORD_LOST_ATTEMPTS = text(
    """
INSERT INTO attempts (delivery_id, number, result, error, response_truncated, created_at)
SELECT unnest(CAST(:ids AS uuid[])), unnest(CAST(:numbers AS integer[])), 'lease_expired',
       'no outcome: the worker was lost or hung past its lease', false, now()
"""
)

# Due rows handed to the scheduler long ago (or never): the candidates for being lost.
_CANDIDATES = text(
    f"""
WITH picked AS MATERIALIZED (
  SELECT id FROM deliveries
   WHERE status IN ('{S.PENDING}', '{S.RETRYING}') AND NOT parked
     AND next_attempt_at <= now()
     AND (dispatched_at IS NULL
          OR dispatched_at < now() - make_interval(secs => :lost_after))
   ORDER BY next_attempt_at LIMIT :batch FOR UPDATE SKIP LOCKED
)
SELECT d.id, d.subscription_id, d.tenant_id, s.max_in_flight, s.rate_limit,
       d.next_attempt_at < now() - make_interval(secs => :lost_after) AS overdue
  FROM picked JOIN deliveries d ON d.id = picked.id
  JOIN subscriptions s ON s.id = d.subscription_id
 ORDER BY d.id
"""  # noqa: S608 (status names from the enums, no input)
)

_CHECKED = text("UPDATE deliveries SET dispatched_at = now() WHERE id = ANY(CAST(:ids AS uuid[]))")
# Rows the scheduler still holds: looked at again after as long as they have waited so far
# (at most RECHECK_FACTOR x lost_after), not every lost_after. A backlog that takes minutes to
# drain is then checked a few times, not once per lost_after, each check a statement and a
# Redis lookup per row that competes with the deliveries themselves. The cost: a row that Redis
# loses after holding it a long while is found that much later (the scheduler is busy with the
# rest of the backlog meanwhile).
_HELD = text(
    "UPDATE deliveries"
    " SET dispatched_at = now() + LEAST(now() - next_attempt_at, make_interval(secs => :most))"
    " WHERE id = ANY(CAST(:ids AS uuid[]))"
)
RECHECK_FACTOR = 4

# In random order: with more open circuits than one pass takes, each still gets its turn.
_PARKED_SUBSCRIPTIONS = text(
    "SELECT p.subscription_id,"
    " s.status = 'active' AND s.deleted_at IS NULL AS live"
    " FROM (SELECT DISTINCT subscription_id FROM deliveries WHERE parked) p"
    " JOIN subscriptions s ON s.id = p.subscription_id"
    " ORDER BY random() LIMIT :batch"
)

_UNPARK = text(
    """
WITH p AS MATERIALIZED (
  SELECT id FROM deliveries
   WHERE subscription_id = :subscription_id AND parked
   ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
   SET parked = false, next_attempt_at = now(), dispatched_at = now(), updated_at = now()
  FROM p
 WHERE d.id = p.id
RETURNING d.id
"""
)

_LIVE_SUBSCRIPTIONS = text(
    "SELECT id FROM subscriptions WHERE id = ANY(CAST(:ids AS uuid[]))"
    " AND deleted_at IS NULL AND status = 'active'"
)

_STILL_PARKED = text(
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE subscription_id = :subscription_id AND parked)"
)


@dataclass
class Report:
    """What one pass did."""

    # Attempts whose lease ended (their worker died or hung), of which this many had no
    # attempt left and failed.
    expired: int = 0
    failed_after_expiry: int = 0
    # Deliveries handed to the scheduler again: due ones it did not know of, and those past
    # `lost_after` (a message or a pick lost).
    due: int = 0
    lost: int = 0
    # Parked deliveries of closed circuits released, and half-open probes let through.
    released: int = 0
    probes: int = 0
    sent: list[str] = field(default_factory=list)  # the delivery IDs handed over

    def counts(self) -> dict[str, int]:
        """The pass's counts, as its log line and the beat task's result give them."""
        return {
            "expired": self.expired,
            "due": self.due,
            "lost": self.lost,
            "released": self.released,
            "probes": self.probes,
        }


def unpark(subscription_id: str | uuid.UUID, batch: int = BATCH) -> tuple[list[str], bool]:
    """Hand up to `batch` parked deliveries to the scheduler, oldest first; say whether more
    remain. The scheduler's slow start paces them after a circuit closes."""
    with session_scope() as session:
        ids = (
            session.execute(_UNPARK, {"subscription_id": subscription_id, "batch": batch})
            .scalars()
            .all()
        )
        more = bool(session.execute(_STILL_PARKED, {"subscription_id": subscription_id}).scalar())
        ordered = sorted(str(i) for i in ids)  # UUIDv7: sorted is oldest first
        if ordered:
            session.commit()
            scheduling.submit_ids(session, ordered)
    return ordered, more


def run() -> Report:
    """Run one pass of the watchdog."""
    report = Report()
    _take_back_expired(report)
    _hand_over_lost(report)
    _release_probes(report)
    _forget_dead_circuits()
    counts = report.counts()
    if any(counts.values()):
        log.info("watchdog pass", extra=counts)
    return report


def _take_back_expired(report: Report) -> None:
    """Attempts whose worker died or hung: record them as failures, retry them."""
    settings = get_settings()
    with session_scope() as session:
        rows = session.execute(
            _EXPIRED_LEASES,
            {"max_failures": len(settings.retry_delays), "batch": BATCH, "lost": LOST},
        ).all()
        if rows:
            session.execute(
                _RECORD_LOST_ATTEMPTS,
                {"ids": [r.id for r in rows], "numbers": [r.attempt_count for r in rows]},
            )
            operational.deliveries_failed(session, [r.id for r in rows if r.status == S.FAILED])
            # A fifo delivery that failed for good hands its lane to the next (services/lanes).
            ended = [r.lane_id for r in rows if r.status == S.FAILED and r.lane_id is not None]
            next_in_lanes = lanes.advance(session, ended)
    if not rows:
        return
    scheduling.submit(next_in_lanes)
    report.expired = len(rows)
    # Each is an attempt recorded (lease_expired), and counted as the worker would have.
    metrics.ATTEMPTS.labels(result="lease_expired").inc(len(rows))
    breaker = get_breaker()
    now = time.time()
    retried = 0
    opened = []
    for row in rows:
        subscription_id = str(row.subscription_id)
        # An attempt that never came back counts against its subscriber, as a timeout would.
        if breaker.record_failure(subscription_id):
            metrics.CIRCUIT_TRANSITIONS.labels(to="open").inc()
            opened.append(row)
        retry = row.status == S.RETRYING
        retried += retry
        scheduling.finish(
            str(row.id),
            subscription_id,
            str(row.tenant_id),
            scheduler.THROTTLED,
            now if retry else None,
        )
        if retry:
            report.sent.append(str(row.id))
    report.failed_after_expiry = report.expired - retried
    if opened:
        with session_scope() as session:
            for row in opened:
                operational.circuit_opened(
                    session, row.tenant_id, row.subscription_id, row.event_type, False, LOST
                )
    if report.failed_after_expiry:
        metrics.DELIVERIES.labels(outcome="failed").inc(report.failed_after_expiry)
    if retried:
        metrics.WATCHDOG_REQUEUED.labels(reason="lease_expired").inc(retried)


def _hand_over_lost(report: Report) -> None:
    """Hand due rows that the scheduler no longer holds to it again, batch after batch."""
    settings = get_settings()
    deadline = time.monotonic() + max(5.0, PASS_SHARE * settings.watchdog_interval)
    while time.monotonic() < deadline:
        with session_scope() as session:
            rows = session.execute(
                _CANDIDATES, {"lost_after": settings.lost_after, "batch": LOST_BATCH}
            ).all()
            if not rows:
                return
            try:
                known = get_scheduler().known([str(r.id) for r in rows])
            except redis.RedisError as exc:
                log.warning("watchdog: scheduler unavailable, lost work waits: %s", exc)
                return
            lost: list[Any] = []
            kept: list[str] = []
            for row, held in zip(rows, known, strict=True):
                if held:
                    kept.append(str(row.id))
                else:
                    lost.append(row)
            # Checked now: they leave the candidates for a while (see _HELD).
            if lost:
                session.execute(_CHECKED, {"ids": [str(r.id) for r in lost]})
            if kept:
                most = RECHECK_FACTOR * settings.lost_after
                session.execute(_HELD, {"ids": kept, "most": most})
        if lost:
            scheduling.submit(scheduling.items(lost))
            overdue = sum(1 for r in lost if r.overdue)
            report.lost += overdue
            report.due += len(lost) - overdue
            report.sent.extend(str(r.id) for r in lost)
            if overdue:
                metrics.WATCHDOG_REQUEUED.labels(reason="lost").inc(overdue)
            if len(lost) > overdue:
                metrics.WATCHDOG_REQUEUED.labels(reason="due").inc(len(lost) - overdue)
        if len(rows) < LOST_BATCH:
            return


def _forget_dead_circuits() -> None:
    """Keep the open circuits (the `webhooks_circuits_open` gauge, the console's count) to live
    subscriptions: a subscription deleted or disabled has its circuit reset, but attempts that
    were under way may open it again after, and nothing would ever close it."""
    breaker = get_breaker()
    try:
        members = breaker.open_circuits()
    except redis.RedisError as exc:
        log.warning("circuit state unavailable: %s", exc)
        return
    ids = [m for m in members if _is_uuid(m)]
    live: set[str] = set()
    if ids:
        with session_scope() as session:
            live = {str(r[0]) for r in session.execute(_LIVE_SUBSCRIPTIONS, {"ids": ids})}
    for member in members:
        if member not in live:
            breaker.reset(member)


def _is_uuid(text_: str) -> bool:
    try:
        uuid.UUID(text_)
    except ValueError:
        return False
    return True


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
            ids, _ = unpark(subscription_id)
            reason = "subscription_disabled"
        elif state["state"] == "closed":
            # Closed (or its hash was lost, which means closed): let the work flow again.
            ids, _ = unpark(subscription_id)
            report.released += len(ids)
            reason = "circuit_closed"
        elif (state["state"] == "open" and (state["probe_at"] or 0) <= now) or (
            state["state"] == "half_open" and (state["probe_until"] or 0) <= now
        ):
            ids, _ = unpark(subscription_id, batch=1)
            report.probes += len(ids)
            reason = "probe"
        else:
            continue
        if ids:
            metrics.WATCHDOG_REQUEUED.labels(reason=reason).inc(len(ids))
            report.sent.extend(ids)
