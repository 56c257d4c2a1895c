"""One delivery attempt: claim the row, ask the circuit, send, record, say what comes next.

The attempt's state machine. Each outcome is one function that stores the attempt and the
delivery's next state in one statement, and returns a Step: what the scheduler should hear
(its adaptive limits) and when the delivery is due again, if it is.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, insert, literal, select, text, update
from sqlalchemy.engine import Connection

from config import get_settings
from webhooks import dispatch, metrics, scheduler
from webhooks.circuit import CircuitBreaker, Decision
from webhooks.crypto import decrypt_headers, decrypt_secret
from webhooks.db import Disconnected, affected, atomic, run_raw, session_scope, state_engine
from webhooks.http import Response
from webhooks.models import Attempt, AttemptResult, Delivery, DeliveryStatus
from webhooks.models.subscription import SubscriptionStatus
from webhooks.redis_client import ScriptCall
from webhooks.runtime import get_breaker, get_client, get_scheduler
from webhooks.services import lanes, operational, scheduling
from webhooks.signing import signature_headers

log = logging.getLogger("webhooks.delivery")

S = DeliveryStatus

# The common outcome as one prepared statement: the delivery delivered, and its attempt, if
# this claim still owns the row (a late outcome, after the watchdog took the lease back and
# recorded the attempt as lease_expired, changes nothing: the row is that retry's now).
_DELIVERED = f"""
WITH delivered AS (
  UPDATE deliveries
     SET status = '{S.DELIVERED}', lease_expires_at = NULL, last_error = NULL,
         delivered_at = now(), updated_at = now()
   WHERE id = %(id)s AND status = '{S.IN_FLIGHT}' AND attempt_count = %(number)s
  RETURNING id
)
INSERT INTO attempts (delivery_id, number, result, status_code, duration_ms, response_body,
                      response_truncated, url, created_at)
SELECT id, %(number)s, '{AttemptResult.SUCCESS}', CAST(%(status_code)s AS integer),
       CAST(%(duration_ms)s AS double precision), CAST(%(response_body)s AS text),
       CAST(%(response_truncated)s AS boolean), CAST(%(url)s AS varchar), now()
  FROM delivered
"""  # noqa: S608 (status names from the enums, no input)

# What a claim that failed finds: another attempt holding the row now (a duplicate message).
_HELD = f"SELECT 1 FROM deliveries WHERE id = %(id)s AND status = '{S.IN_FLIGHT}'"  # noqa: S608

_CLAIM = f"""
WITH claimed AS (
  UPDATE deliveries
     SET status = '{S.IN_FLIGHT}', attempt_count = attempt_count + 1, updated_at = now(),
         lease_expires_at = now() + make_interval(secs => %(lease)s)
   WHERE id = %(id)s AND status IN ('{S.PENDING}', '{S.RETRYING}') AND NOT parked
     -- a message may arrive a little before its row's due time (clocks, rounding)
     AND next_attempt_at <= now() + interval '2 seconds'
  RETURNING id, event_id, subscription_id, attempt_count, failures, lane_id
)
SELECT c.id, c.attempt_count, c.failures, c.subscription_id, e.tenant_id, c.lane_id,
       e.id AS event_id, e.event_type, e.payload, e.created_at AS event_created_at,
       s.url, s.headers_ciphertext, s.status AS subscription_status, s.deleted_at,
       s.rate_limit,
       s.secret_ciphertext, s.previous_secret_ciphertext, s.previous_secret_expires_at
  FROM claimed c
  JOIN events e ON e.id = c.event_id
  JOIN subscriptions s ON s.id = c.subscription_id
"""  # noqa: S608 (status names from the enums, no input)

_PARK_READY = text(
    f"""
UPDATE deliveries SET parked = true, dispatched_at = NULL, updated_at = now()
 WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN ('{S.PENDING}', '{S.RETRYING}') AND NOT parked
   -- Due ones only: an entry the scheduler still had for a row now waiting in its fifo lane
   -- (no due time) must not park it, or un-parking would make it a second holder of the lane.
   AND next_attempt_at IS NOT NULL
"""  # noqa: S608 (status names from the enums, no input)
)

# What the breaker says of a closed circuit (see `attempt`).
_CLOSED = Decision(allowed=True, state="closed")

# The most ready deliveries one park takes out of the scheduler (see `_park`).
MAX_DRAIN = 50_000

# Results that say the subscriber is overloaded: its adaptive concurrency and rate go down.
_THROTTLING_STATUS = {429, 503}


@dataclass(frozen=True)
class Verdict:
    """An attempt's outcome for the circuit breaker, recorded together with the scheduler's
    finish (one Redis round trip, see `conclude`)."""

    success: bool
    # For the operational event if a failure opens the circuit.
    event_type: str = ""
    probe: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Step:
    """What follows an attempt, for the scheduler and the task."""

    subscription_id: str = ""
    tenant_id: str = ""
    # How the attempt bears on the subscription's adaptive limits (scheduler.OK, ...).
    outcome: str = scheduler.NONE
    # The unix time at which the delivery is due again, if it is to be retried.
    retry_at: float | None = None
    # Its circuit just closed: release its parked deliveries.
    circuit_closed: bool = False
    # The outcome still to be recorded with the breaker, if any.
    verdict: Verdict | None = None
    # Whether the scheduler is to hear of the attempt's end (its slot, its limits). Not when
    # the slot is another attempt's: a duplicate message found the row held by that attempt,
    # or the watchdog took the lease back and the row is its retry's now.
    finish: bool = True
    # Deliveries that this attempt made ready (its ordered lane's next), for the scheduler
    # with its finish.
    ready: tuple[scheduler.Item, ...] = ()


DONE = Step()
# Nothing to tell anyone: the row belongs to another attempt.
NOT_OURS = Step(finish=False)


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


def attempt(delivery_id: str, circuit_closed: bool = False) -> Step:
    """Make one attempt at a delivery if it is due and unclaimed; say what should follow.

    `circuit_closed`: the scheduler saw the subscription's circuit closed, with no failure
    since its last success, as it picked this delivery a moment ago; asking the breaker again
    would say the same (a closed circuit only answers "send"), so the round trip is saved. A
    circuit that other attempts open in between lets this one attempt through, as it does an
    attempt already under way when it opens."""
    # One connection for the attempt (one pool checkout, not two). It holds no
    # transaction or lock while the HTTP request runs: every statement commits by itself.
    with state_engine().connect() as conn:
        row = _claim(conn, delivery_id)
        claimed_at = time.monotonic()
        if row is None:
            # Delivered, claimed by another worker, parked, or not yet due: a stale message.
            # Its pick's slot goes back, unless another attempt holds the row: the slot is
            # that attempt's then (else its subscription would get one more at once).
            if run_raw(conn, _HELD, {"id": delivery_id}).fetchone() is not None:
                return NOT_OURS
            return DONE
        if row.deleted_at is not None or row.subscription_status != SubscriptionStatus.ACTIVE:
            return _in_lane(conn, row, _end_unsendable, conn, row)
        if row.rate_limit:
            try:
                not_before = get_scheduler().admit(
                    str(row.subscription_id), row.rate_limit, str(row.id)
                )
            except redis.RedisError as exc:
                # As the breaker does: Redis is soft state, its absence lets the attempt go
                # (the picks that led here were spaced already), never strands the claim.
                log.warning("rate admission unavailable, sending: %s", exc)
                not_before = None
            if not_before is not None:
                return _too_soon(conn, row, not_before)
        breaker = get_breaker()
        decision = _CLOSED if circuit_closed else breaker.acquire(str(row.subscription_id))
        if decision.transitioned:
            metrics.CIRCUIT_TRANSITIONS.labels(to="half_open").inc()
        if not decision.allowed:
            return _park(conn, row)
        if time.monotonic() - claimed_at > get_settings().lease_margin / 2:
            # Stalled since the claim (a paused VM, a starved process): past the lease another
            # worker may send it, and two copies at once could reorder an ordered lane. Give the
            # claim back unsent; a probe's slot ends with its own TTL.
            log.warning("attempt stalled before sending", extra={"delivery_id": str(row.id)})
            return _too_soon(conn, row, time.time())
        response = _send(row)
        if response.result is AttemptResult.SUCCESS:
            return _in_lane(conn, row, _delivered, conn, row, response, decision.probe, breaker)
        return _in_lane(conn, row, _failed, conn, row, response, decision.probe)


def _in_lane(conn: Connection, row: Any, outcome: Callable[..., Step], *args: Any) -> Step:
    """Record an outcome; for a fifo delivery, in one transaction with giving its lane the
    next holder if this one is done (services/lanes.py), which then starts."""
    if row.lane_id is None:
        return outcome(*args)
    with atomic(conn):
        step = outcome(*args)
        # A retry keeps the lane; anything else (delivered, failed, parked) may free it.
        ready = [] if step.retry_at is not None else lanes.advance(conn, [row.lane_id])
    if step.finish:
        # Queued by this attempt's finish (conclude), in its round trip, which may then keep
        # the lane's next delivery for this task.
        return replace(step, ready=tuple(ready))
    scheduling.submit(ready)
    return step


@dataclass(frozen=True)
class Kept:
    """The delivery that the scheduler gave the slot an attempt freed, kept by the process
    that ends the attempt (no Celery message): it attempts it next."""

    delivery_id: str
    # As the task's circuit header: the scheduler saw its circuit closed (see `attempt`).
    circuit_closed: bool


def conclude(delivery_id: str, step: Step, keep: bool = False) -> Kept | None:
    """End the attempt's turn with the scheduler, which starts the next deliveries, and record
    its outcome with the circuit breaker, in one Redis round trip; then tell of a circuit that
    this outcome opened or closed, and release a closed circuit's parked deliveries.

    `keep`: the caller goes on with the next delivery the scheduler picks in this round trip
    (returned), instead of sending it as a task. The scheduler counts it in flight from the
    pick, with a lease, as a task sent: if the caller dies before attempting it, the lease
    ends and the watchdog hands it over again."""
    if not step.finish:
        return None
    verdict, subscription_id = step.verdict, step.subscription_id
    along: ScriptCall[Any] | None = None
    if verdict is not None:
        breaker = get_breaker()
        along = (
            breaker.success_call(subscription_id)
            if verdict.success
            else breaker.failure_call(subscription_id)
        )
    # The row is already in its next state (a retry's due time included): if Redis loses
    # this, its slot comes back with its lease and the watchdog hands the row over again.
    changed, picked = scheduling.finish(
        delivery_id,
        subscription_id,
        step.tenant_id,
        step.outcome,
        step.retry_at,
        along,
        keep,
        step.ready,
    )
    kept = None if picked is None or picked.kept is None else Kept(picked.kept, picked.kept_closed)
    closed = step.circuit_closed
    if verdict is not None and changed:
        if kept is not None:
            # Rare (the circuit changed), and what follows may fail: the kept delivery goes
            # out as a task instead, so that nothing here can leave it to its lease.
            scheduling.start(scheduler.Picked([kept.delivery_id], {}, None))
            kept = None
        tenant_id, subscription = uuid.UUID(step.tenant_id), uuid.UUID(subscription_id)
        with state_engine().connect() as conn:
            if verdict.success:
                # Another worker's failures opened it during this attempt, and this success
                # closed it. (A probe's success is recorded before the finish, so that its
                # parked backlog restarts slowly; see _delivered.)
                metrics.CIRCUIT_TRANSITIONS.labels(to="closed").inc()
                operational.circuit_closed(conn, tenant_id, subscription)
                closed = True
            else:
                metrics.CIRCUIT_TRANSITIONS.labels(to="open").inc()
                operational.circuit_opened(
                    conn, tenant_id, subscription, verdict.event_type, verdict.probe, verdict.error
                )
    if closed:
        dispatch.send(dispatch.RELEASE_TASK, [subscription_id])
    return kept


def _claim(conn: Connection, delivery_id: str) -> Any:
    """Claim the delivery: its row with what the attempt needs, or None if there is nothing to
    do. A connection that died while it sat in the pool (PostgreSQL restarted) is replaced and
    the claim made once more: nothing was sent yet, and a claim that did commit before the
    connection broke only leaves the row to its lease, as a crash would."""
    params = {"id": delivery_id, "lease": get_settings().lease_seconds}
    try:
        return run_raw(conn, _CLAIM, params).fetchone()
    except Disconnected as error:
        log.warning("database connection lost, claiming again: %s", error)
        return run_raw(conn, _CLAIM, params).fetchone()


def _send(row: Any) -> Response:
    """Sign and POST the delivery; anything unexpected becomes a failed attempt, not a crash."""
    started = time.monotonic()
    try:
        body = envelope(row.event_id, row.event_type, row.event_created_at, row.payload)
        headers = decrypt_headers(row.headers_ciphertext, str(row.subscription_id).encode())
        headers["content-type"] = "application/json"
        headers.update(
            signature_headers(signing_secrets(row, datetime.now(UTC)), str(row.id), body)
        )
        response = get_client().post(row.url, body, headers)
    except Exception as exc:  # a bug or a bad stored value must not lose the attempt
        log.exception("attempt failed before an answer", extra={"delivery_id": str(row.id)})
        response = Response(
            AttemptResult.ERROR,
            error=f"internal error: {type(exc).__name__}",
            duration=time.monotonic() - started,
        )
    # Counted in webhooks_delivery_attempts_total once recorded (`_counted`): a late outcome,
    # whose lease the watchdog took back and counted as lease_expired, is neither.
    metrics.ATTEMPT_DURATION.observe(response.duration)
    log.info(
        "attempt",
        extra={
            "tenant_id": str(row.tenant_id),
            "event_id": str(row.event_id),
            "delivery_id": str(row.id),
            "subscription_id": str(row.subscription_id),
            "attempt": row.attempt_count,
            "result": response.result.value,
            "status_code": response.status_code,
            "duration_ms": round(response.duration * 1000, 1),
        },
    )
    return response


def _step(row: Any, outcome: str = scheduler.NONE, **kwargs: Any) -> Step:
    return Step(str(row.subscription_id), str(row.tenant_id), outcome, **kwargs)


def _end_unsendable(conn: Connection, row: Any) -> Step:
    """Its subscription is disabled or deleted: end the delivery as failed, spending nothing."""
    reason = "subscription deleted" if row.deleted_at else "subscription disabled"
    values = {"attempt_count": row.attempt_count - 1}
    if affected(conn.execute(_final(row, S.FAILED, reason).values(**values))):
        metrics.DELIVERIES.labels(outcome="failed").inc()
    return _step(row)


def _too_soon(conn: Connection, row: Any, not_before: float) -> Step:
    """Its rate is spent for now (or it stalled): give the claim back, unspent, to be picked
    again at `not_before`."""
    attempts = row.attempt_count - 1
    conn.execute(
        _owned(row).values(
            status=S.PENDING if attempts == 0 else S.RETRYING,
            attempt_count=attempts,
            lease_expires_at=None,
            dispatched_at=func.now(),
        )
    )
    return _step(row, retry_at=not_before)


def _park(conn: Connection, row: Any) -> Step:
    """Put a claimed delivery back to wait behind its open circuit, spending no attempt, and
    with it every delivery of that subscription that is ready in the scheduler: they wait in
    PostgreSQL, not in Redis, until a probe closes the circuit."""
    conn.execute(_parked(row, row.attempt_count - 1))
    parked = 1
    # In steps of DRAIN_CHUNK, so that neither Redis nor PostgreSQL is held long by one; at
    # most MAX_DRAIN per attempt (well inside the task's time limit): what is left is parked
    # by the next attempt picked from it, which drains again.
    for _ in range(MAX_DRAIN // scheduler.DRAIN_CHUNK):
        try:
            ready = get_scheduler().drain(str(row.subscription_id))
        except redis.RedisError as exc:  # they stay ready: each is parked when it is picked
            log.warning("scheduler unavailable: %s", exc)
            break
        if ready:
            # If this process dies first, the watchdog hands them over again and each parks.
            parked += affected(conn.execute(_PARK_READY, {"ids": ready}))
        if len(ready) < scheduler.DRAIN_CHUNK:
            break
    metrics.ATTEMPTS.labels(result="circuit_open").inc()
    metrics.PARKED.inc(parked)
    return _step(row)


def _parked(row: Any, attempts: int, error: str | None = None) -> Any:
    """The UPDATE that parks a claimed delivery with `attempts` made."""
    values: dict[str, Any] = {
        "status": S.PENDING if attempts == 0 else S.RETRYING,
        "attempt_count": attempts,
        "parked": True,
        "lease_expires_at": None,
        "dispatched_at": None,
    }
    if error is not None:
        values["last_error"] = error
    return _owned(row).values(**values)


def _delivered(
    conn: Connection, row: Any, response: Response, probe: bool, breaker: CircuitBreaker
) -> Step:
    params = _attempt_values(row, response)
    params["id"] = row.id
    if not run_raw(conn, _DELIVERED, params).rowcount:
        return NOT_OURS  # the watchdog took it back meanwhile: its retry decides
    _counted(response)
    metrics.DELIVERIES.labels(outcome="delivered").inc()
    latency = datetime.now(UTC) - row.event_created_at
    metrics.END_TO_END.observe(max(0.0, latency.total_seconds()))
    if not probe:
        # Its circuit was closed: the success is recorded with the scheduler's finish.
        return _step(row, scheduler.OK, verdict=Verdict(success=True))
    if breaker.record_success(str(row.subscription_id)) is not None:
        metrics.CIRCUIT_TRANSITIONS.labels(to="closed").inc()
        operational.circuit_closed(conn, row.tenant_id, row.subscription_id)
        # Slow start: its parked backlog goes out 1, 2, 4, ... at a time.
        return _step(row, scheduler.RESTART, circuit_closed=True)
    return _step(row, scheduler.OK)


def _failed(conn: Connection, row: Any, response: Response, probe: bool) -> Step:
    attempt = {
        "delivery_id": row.id,
        "result": response.result,
        "error": response.error,
        **_attempt_values(row, response),
    }
    throttled = (
        response.result is AttemptResult.TIMEOUT or response.status_code in _THROTTLING_STATUS
    )
    outcome = scheduler.THROTTLED if throttled else scheduler.FAILED

    if response.status_code == 410:
        return _gone(row, insert(Attempt).values(**attempt), response)
    # Recorded with the scheduler's finish (conclude), which also tells if it opened the circuit.
    verdict = Verdict(False, row.event_type, probe, response.error)
    if probe:
        # A failed probe says the circuit stays open; the delivery waits again, unspent.
        if not _record(conn, _parked(row, row.attempt_count, response.error), attempt):
            return NOT_OURS
        _counted(response)
        return _step(row, outcome, verdict=verdict)

    failures = row.failures + 1
    delay = retry_delay(failures, response.retry_after)
    if delay is None:
        failed = _final(row, S.FAILED, response.error).values(failures=failures)
        if not _record(conn, failed, attempt):
            return NOT_OURS
        _counted(response)
        metrics.DELIVERIES.labels(outcome="failed").inc()
        operational.deliveries_failed(conn, [row.id])
        return _step(row, outcome, verdict=verdict)
    moved = _owned(row).values(
        status=S.RETRYING,
        failures=failures,
        # The database's clock, which the claim compares with, not this worker's.
        next_attempt_at=func.now() + timedelta(seconds=delay),
        lease_expires_at=None,
        # Handed to the scheduler, which holds it until it is due.
        dispatched_at=func.now(),
        last_error=response.error,
    )
    if not _record(conn, moved, attempt):
        return NOT_OURS
    _counted(response)
    return _step(row, outcome, retry_at=time.time() + delay, verdict=verdict)


def _counted(response: Response) -> None:
    metrics.ATTEMPTS.labels(result=response.result.value).inc()


def _record(conn: Connection, owned_update: Any, attempt: dict[str, Any]) -> bool:
    """Apply an UPDATE of this claim's row and, only if it still owned the row, insert the
    attempt: one statement. False: the watchdog took the lease back meanwhile (and recorded
    the attempt as lease_expired); this late outcome is not recorded, nor counted."""
    moved = owned_update.returning(Delivery.id).cte("moved")
    table = Attempt.__table__
    names = [name for name in attempt if name != "delivery_id"]
    columns = [moved.c.id, *(literal(attempt[n], type_=table.c[n].type) for n in names)]
    recorded = insert(Attempt).from_select(["delivery_id", *names], select(*columns))
    # RETURNING, not the row count: SQLAlchemy reports -1 for an INSERT ... SELECT.
    return conn.execute(recorded.returning(Attempt.id)).first() is not None


def _gone(row: Any, attempt_row: Any, response: Response) -> Step:
    """The subscriber says this endpoint is gone for good: stop sending to it. Rare, and
    several statements: one ordinary transaction. The subscription is disabled even when the
    watchdog took this claim back meanwhile (the answer is still the subscriber's); the
    attempt is recorded and the delivery ended only while the claim is this attempt's."""
    from webhooks.services.subscriptions import disable_subscription

    with session_scope() as session:
        owned = affected(session.execute(_final(row, S.FAILED, "410 Gone: subscription disabled")))
        if owned:
            session.execute(attempt_row)
        disable_subscription(session, row.subscription_id, "the endpoint answered 410 Gone")
    if not owned:
        return NOT_OURS
    _counted(response)
    metrics.DELIVERIES.labels(outcome="failed").inc()
    return _step(row, scheduler.FAILED)


def _attempt_values(row: Any, response: Response) -> dict[str, Any]:
    return {
        "number": row.attempt_count,
        "status_code": response.status_code,
        "duration_ms": round(response.duration * 1000, 3),
        "response_body": response.body,
        "response_truncated": response.truncated,
        "url": row.url[:2048],
    }


def _owned(row: Any) -> Any:
    """An UPDATE that applies only while this worker's claim is still the row's latest."""
    return update(Delivery).where(
        Delivery.id == row.id,
        Delivery.status == S.IN_FLIGHT,
        Delivery.attempt_count == row.attempt_count,
    )


def _final(row: Any, status: DeliveryStatus, error: str | None) -> Any:
    """The UPDATE that ends this claim with a final `status`."""
    return _owned(row).values(status=status, lease_expires_at=None, last_error=error)
