"""One delivery attempt: claim the row, ask the circuit, send, record, decide what comes next."""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import create_engine, func, insert, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from config import get_settings
from config.celery import MAX_COUNTDOWN_SECONDS
from webhooks import metrics
from webhooks.circuit import CircuitBreaker
from webhooks.crypto import decrypt_secret
from webhooks.db import affected, session_scope
from webhooks.http import Client, Response
from webhooks.models import Attempt, AttemptResult, Delivery, DeliveryStatus, Subscription
from webhooks.models.subscription import SubscriptionStatus
from webhooks.redis_client import get_redis
from webhooks.services import operational
from webhooks.signing import signature_headers

log = logging.getLogger("webhooks.delivery")

# The common outcome as one prepared statement: the attempt, and the delivery delivered.
_DELIVERED = text(
    """
WITH recorded_attempt AS (
  INSERT INTO attempts (delivery_id, number, result, status_code, duration_ms, response_body,
                        response_truncated, url, created_at)
  VALUES (:id, :number, 'success', :status_code, :duration_ms, :response_body,
          :response_truncated, :url, now())
)
UPDATE deliveries
   SET status = 'delivered', lease_expires_at = NULL, last_error = NULL, delivered_at = now(),
       updated_at = now()
 WHERE id = :id AND status = 'in_flight' AND attempt_count = :number
"""
)

_CLAIM = text(
    """
WITH claimed AS (
  UPDATE deliveries
     SET status = 'in_flight', attempt_count = attempt_count + 1, updated_at = now(),
         lease_expires_at = now() + make_interval(secs => :lease)
   WHERE id = :id AND status IN ('pending', 'retrying') AND NOT parked
     -- a message may arrive a little before its row's due time (clocks, rounding)
     AND next_attempt_at <= now() + interval '2 seconds'
  RETURNING id, event_id, subscription_id, attempt_count, failures
)
SELECT c.id, c.attempt_count, c.failures, c.subscription_id, e.tenant_id,
       e.id AS event_id, e.event_type, e.payload, e.created_at AS event_created_at,
       s.url, s.headers, s.status AS subscription_status, s.deleted_at,
       s.secret_ciphertext, s.previous_secret_ciphertext, s.previous_secret_expires_at
  FROM claimed c
  JOIN events e ON e.id = c.event_id
  JOIN subscriptions s ON s.id = c.subscription_id
"""
)


_state_engine: Engine | None = None
_state_key: tuple[int, str] | None = None


def state_engine() -> Engine:
    """Return this process's connections for delivery state (made anew after a fork).

    Each statement is its own transaction (autocommit), and commits without waiting for the
    WAL flush (synchronous_commit off). An attempt is then two statements, the claim and the
    outcome, instead of eleven round trips (pings, BEGIN, SET, COMMIT). Safe for delivery
    state only: a database crash can lose the last moments of claims and outcomes, which sends
    those deliveries again (at least once, same webhook-id) and never loses one. Ingest keeps
    full durability: its 202 promises the event is stored. See docs/performance.md.
    """
    global _state_engine, _state_key
    key = (os.getpid(), get_settings().database_url)
    if _state_engine is None or _state_key != key:
        if _state_engine is not None:
            _state_engine.dispose(close=False)  # the parent's: leave its sockets alone
        _state_engine = create_engine(
            get_settings().database_url,
            pool_size=int(os.environ.get("WEBHOOKS_DB_POOL_SIZE", "5")),
            max_overflow=10,
            pool_pre_ping=True,
            pool_recycle=1800,
            isolation_level="AUTOCOMMIT",
            connect_args={"options": "-c synchronous_commit=off"},
        )
        _state_key = key
    return _state_engine


def _run(conn: Connection, statement: Any, params: dict[str, Any] | None = None) -> Any:
    """Execute one statement as its own transaction; return the rowcount."""
    return affected(conn.execute(statement, params or {}))


@dataclass(frozen=True)
class Step:
    """What the task should do after an attempt."""

    # Send the task again after this many seconds (a Celery countdown).
    retry_in: float | None = None
    # The circuit of this subscription just closed: release its parked deliveries.
    release_subscription: str | None = None


DONE = Step()


@lru_cache(maxsize=1)
def get_breaker() -> CircuitBreaker:
    settings = get_settings()
    return CircuitBreaker(
        get_redis(),
        threshold=settings.circuit_failure_threshold,
        cooldown=settings.circuit_cooldown,
        probe_ttl=settings.lease_seconds,
    )


@lru_cache(maxsize=1)
def get_client() -> Client:
    settings = get_settings()
    return Client(
        timeout=settings.http_timeout,
        allow_private=settings.allow_private_targets,
        body_cap=settings.max_response_body,
    )


def envelope(event_id: uuid.UUID, event_type: str, created_at: datetime, payload: Any) -> bytes:
    """Return the body a subscriber receives; the same bytes on every attempt."""
    timestamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    body = {"id": str(event_id), "type": event_type, "timestamp": timestamp, "data": payload}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signing_secrets(row: Any, now: datetime) -> list[str]:
    """Return the secrets that sign now: the current one, and the previous during its grace."""
    associated = str(row.subscription_id).encode()
    result = [decrypt_secret(row.secret_ciphertext, associated)]
    expires = row.previous_secret_expires_at
    if row.previous_secret_ciphertext is not None and expires is not None and expires > now:
        result.append(decrypt_secret(row.previous_secret_ciphertext, associated))
    return result


def retry_delay(failures: int, retry_after: float | None = None) -> float | None:
    """Return the wait before the next attempt after `failures` failures, or None when spent."""
    settings = get_settings()
    delays = settings.retry_delays
    if failures > len(delays):
        return None
    delay = delays[failures - 1]
    if settings.retry_jitter:
        delay *= 1 + random.uniform(0, settings.retry_jitter)
    if retry_after is not None:
        # The subscriber asked for a wait: honour it, within reason, never shorter than ours.
        delay = max(delay, min(retry_after, settings.retry_after_max))
    return delay


def attempt(delivery_id: str) -> Step:
    """Make one attempt at a delivery if it is due and unclaimed; say what should follow."""
    # One connection for the attempt (one pool checkout and pre-ping, not two). It holds no
    # transaction or lock while the HTTP request runs: every statement commits by itself.
    with state_engine().connect() as conn:
        return _attempt(conn, delivery_id)


def _attempt(conn: Connection, delivery_id: str) -> Step:
    settings = get_settings()
    row = conn.execute(_CLAIM, {"id": delivery_id, "lease": settings.lease_seconds}).first()
    if row is None:
        # Delivered, claimed by another worker, parked, or not yet due: this message is stale.
        return DONE

    if row.deleted_at is not None or row.subscription_status != SubscriptionStatus.ACTIVE:
        reason = "subscription deleted" if row.deleted_at else "subscription disabled"
        _run(conn, _finish(row, DeliveryStatus.FAILED, error=reason, undo_claim=True))
        metrics.DELIVERIES.labels(outcome="failed").inc()
        return DONE

    breaker = get_breaker()
    subscription_id = str(row.subscription_id)
    decision = breaker.acquire(subscription_id)
    if decision.transitioned:
        metrics.CIRCUIT_TRANSITIONS.labels(to="half_open").inc()
    if not decision.allowed:
        _run(conn, _park(row))
        metrics.ATTEMPTS.labels(result="circuit_open").inc()
        metrics.PARKED.inc()
        return DONE

    now = datetime.now(UTC)
    body = envelope(row.event_id, row.event_type, row.event_created_at, row.payload)
    headers = {str(k): str(v) for k, v in (row.headers or {}).items()}
    headers["content-type"] = "application/json"
    headers.update(signature_headers(signing_secrets(row, now), str(row.id), body))

    response = get_client().post(row.url, body, headers)
    metrics.ATTEMPTS.labels(result=response.result.value).inc()
    metrics.ATTEMPT_DURATION.observe(response.duration)
    log.info(
        "attempt",
        extra={
            "tenant_id": str(row.tenant_id),
            "event_id": str(row.event_id),
            "delivery_id": str(row.id),
            "subscription_id": subscription_id,
            "attempt": row.attempt_count,
            "result": response.result.value,
            "status_code": response.status_code,
            "duration_ms": round(response.duration * 1000, 1),
        },
    )
    return _record(conn, row, response, decision.probe, breaker)


def _record(
    conn: Connection, row: Any, response: Response, probe: bool, breaker: CircuitBreaker
) -> Step:
    """Store the attempt and the delivery's next state in one statement; say what follows."""
    subscription_id = str(row.subscription_id)
    if response.result is AttemptResult.SUCCESS:
        delivered = _run(
            conn,
            _DELIVERED,
            {
                "id": row.id,
                "number": row.attempt_count,
                "status_code": response.status_code,
                "duration_ms": round(response.duration * 1000, 3),
                "response_body": response.body,
                "response_truncated": response.truncated,
                "url": row.url[:2048],
            },
        )
        if delivered:
            metrics.DELIVERIES.labels(outcome="delivered").inc()
            latency = datetime.now(UTC) - row.event_created_at
            metrics.END_TO_END.observe(max(0.0, latency.total_seconds()))
        left = breaker.record_success(subscription_id)
        if left is not None:
            metrics.CIRCUIT_TRANSITIONS.labels(to="closed").inc()
            operational.circuit_closed(conn, row.tenant_id, row.subscription_id)
            return Step(release_subscription=subscription_id)
        return DONE

    attempt_row = insert(Attempt).values(
        delivery_id=row.id,
        number=row.attempt_count,
        result=response.result,
        status_code=response.status_code,
        error=response.error,
        duration_ms=round(response.duration * 1000, 3),
        response_body=response.body,
        response_truncated=response.truncated,
        url=row.url[:2048],
    )
    # The attempt is inserted by a CTE of the UPDATE, whether or not the UPDATE still owns
    # the row, as two statements in one transaction would.
    with_attempt = attempt_row.cte("recorded_attempt")

    if response.status_code == 410:
        # The subscriber says this endpoint is gone for good: stop sending to it. Rare, and
        # several statements: one ordinary transaction.
        with session_scope() as session:
            session.execute(attempt_row)
            session.execute(
                _finish(row, DeliveryStatus.FAILED, error="410 Gone: subscription disabled")
            )
            disable_subscription(session, row.subscription_id, "the endpoint answered 410 Gone")
        metrics.DELIVERIES.labels(outcome="failed").inc()
        return DONE

    if breaker.record_failure(subscription_id):
        metrics.CIRCUIT_TRANSITIONS.labels(to="open").inc()
        operational.circuit_opened(
            conn, row.tenant_id, row.subscription_id, row.event_type, probe, response.error
        )
    if probe:
        # A failed probe says the circuit stays open; the delivery waits again, unspent.
        _run(conn, _park(row, keep_attempt=True, error=response.error).add_cte(with_attempt))
        return DONE

    failures = row.failures + 1
    delay = retry_delay(failures, response.retry_after)
    if delay is None:
        failed = _finish(row, DeliveryStatus.FAILED, error=response.error, failures=failures)
        if _run(conn, failed.add_cte(with_attempt)):
            metrics.DELIVERIES.labels(outcome="failed").inc()
            operational.deliveries_failed(conn, [row.id])
        return DONE
    use_countdown = delay <= MAX_COUNTDOWN_SECONDS
    moved = _run(
        conn,
        _owned(row)
        .values(
            status=DeliveryStatus.RETRYING,
            failures=failures,
            # The database's clock, which the claim compares with, not this worker's.
            next_attempt_at=func.now() + timedelta(seconds=delay),
            lease_expires_at=None,
            # A long wait is left to the watchdog, which sends rows that are due.
            dispatched_at=func.now() if use_countdown else None,
            last_error=response.error,
        )
        .add_cte(with_attempt),
    )
    if moved and use_countdown:
        return Step(retry_in=delay)
    return DONE


def _owned(row: Any) -> Any:
    """An UPDATE that applies only while this worker's claim is still the row's latest."""
    return update(Delivery).where(
        Delivery.id == row.id,
        Delivery.status == DeliveryStatus.IN_FLIGHT,
        Delivery.attempt_count == row.attempt_count,
    )


def _finish(
    row: Any,
    status: DeliveryStatus,
    error: str | None = None,
    failures: int | None = None,
    undo_claim: bool = False,
) -> Any:
    """The UPDATE that ends this claim with `status`."""
    values: dict[str, Any] = {"status": status, "lease_expires_at": None, "last_error": error}
    if status is DeliveryStatus.DELIVERED:
        values["delivered_at"] = datetime.now(UTC)
    if failures is not None:
        values["failures"] = failures
    if undo_claim:
        values["attempt_count"] = row.attempt_count - 1
    return _owned(row).values(**values)


def _park(row: Any, keep_attempt: bool = False, error: str | None = None) -> Any:
    """The UPDATE that puts a claimed delivery back to wait behind its open circuit, spending
    no attempt."""
    attempts = row.attempt_count if keep_attempt else row.attempt_count - 1
    values: dict[str, Any] = {
        "status": DeliveryStatus.PENDING if attempts == 0 else DeliveryStatus.RETRYING,
        "attempt_count": attempts,
        "parked": True,
        "lease_expires_at": None,
        "dispatched_at": None,
    }
    if error is not None:
        values["last_error"] = error
    return _owned(row).values(**values)


def disable_subscription(session: Session, subscription_id: uuid.UUID, reason: str) -> int:
    """Disable a subscription and fail its unfinished deliveries; return how many failed."""
    session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id)
        .values(status=SubscriptionStatus.DISABLED, disabled_reason=reason)
    )
    failed = affected(
        session.execute(
            update(Delivery)
            .where(
                Delivery.subscription_id == subscription_id,
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
            )
            .values(
                status=DeliveryStatus.FAILED,
                parked=False,
                lease_expires_at=None,
                last_error=f"subscription disabled: {reason}",
            )
        )
    )
    if failed:
        metrics.DELIVERIES.labels(outcome="failed").inc(failed)
    # Nothing more goes to it: its circuit must not count as open any longer.
    get_breaker().reset(str(subscription_id))
    operational.subscription_disabled(session, subscription_id, reason)
    return int(failed or 0)
