"""Delivery statistics: per subscription over a window (the stats API), and a tenant's last hour.

Both read attempts through the index (subscription_id, created_at) INCLUDE (result,
duration_ms) of migration 20261130_0005: one index range per subscription, whatever the size of
the table (see that migration).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from webhooks.circuit import OPEN_SET
from webhooks.models import AttemptResult, DeliveryStatus
from webhooks.services import subscriptions as subscription_service
from webhooks.services.delivery import get_breaker

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING, DeliveryStatus.IN_FLIGHT)

_SUBSCRIPTION_STATS = text(
    """
SELECT result, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95
  FROM attempts
 WHERE subscription_id = :subscription_id AND created_at >= :since
 GROUP BY ROLLUP (result)
"""
)

# The tenant's attempts of the last hour, per minute. The join starts from the tenant's
# subscriptions and reads each one's range of the attempts index.
_MINUTES = text(
    """
SELECT date_trunc('minute', a.created_at) AS minute,
       count(*) AS attempts,
       count(*) FILTER (WHERE a.result = :success) AS successes,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms) AS p95
  FROM subscriptions s
  JOIN attempts a ON a.subscription_id = s.id AND a.created_at >= :since
 WHERE s.tenant_id = :tenant_id
 GROUP BY ROLLUP (date_trunc('minute', a.created_at))
"""
)

# Events of the last hour per minute: IDs are UUIDv7, so the tenant's ID index gives the range.
_EVENTS = text(
    """
SELECT date_trunc('minute', created_at) AS minute, count(*) AS n
  FROM events
 WHERE tenant_id = :tenant_id AND id >= :first_id AND created_at >= :since
 GROUP BY 1
"""
)

_BACKLOG = text(
    """
SELECT count(*) AS n, min(created_at) AS oldest
  FROM deliveries
 WHERE tenant_id = :tenant_id AND status = ANY(CAST(:statuses AS varchar[]))
"""
)

_SUCCESS_RATES = text(
    """
SELECT subscription_id, count(*) AS n, count(*) FILTER (WHERE result = :success) AS ok
  FROM attempts
 WHERE subscription_id = ANY(CAST(:ids AS uuid[])) AND created_at >= :since
 GROUP BY subscription_id
"""
)


def _ms(value: Any) -> float | None:
    return round(float(value), 2) if value is not None else None


def subscription_stats(
    session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID, window: str
) -> dict[str, Any]:
    """Attempts by result, success rate and p50/p95 duration over the last `window`."""
    subscription = subscription_service.get(session, tenant_id, subscription_id)
    now = datetime.now(UTC)
    since = now - WINDOWS[window]
    by_result = {result.value: 0 for result in AttemptResult}
    total, p50, p95 = 0, None, None
    for row in session.execute(
        _SUBSCRIPTION_STATS, {"subscription_id": subscription.id, "since": since}
    ):
        if row.result is None:  # the ROLLUP row: all results together
            total, p50, p95 = int(row.n), row.p50, row.p95
        else:
            by_result[AttemptResult(row.result).value] = int(row.n)
    return {
        "subscription_id": subscription.id,
        "window": window,
        "since": since,
        "until": now,
        "attempts": by_result,
        "total": total,
        "success_rate": by_result[AttemptResult.SUCCESS.value] / total if total else None,
        "p50_ms": _ms(p50),
        "p95_ms": _ms(p95),
    }


def success_rates(
    session: Session, subscription_ids: Iterable[uuid.UUID], window: str = "24h"
) -> dict[uuid.UUID, float | None]:
    """Each subscription's share of successful attempts over the window (None: no attempts)."""
    ids = list(subscription_ids)
    rates: dict[uuid.UUID, float | None] = dict.fromkeys(ids)
    if not ids:
        return rates
    rows = session.execute(
        _SUCCESS_RATES,
        {
            "ids": ids,
            "since": datetime.now(UTC) - WINDOWS[window],
            "success": AttemptResult.SUCCESS.value,
        },
    )
    for row in rows:
        rates[row.subscription_id] = row.ok / row.n if row.n else None
    return rates


def circuits(subscription_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each subscription's circuit state (`unknown` when Redis cannot say)."""
    breaker = get_breaker()
    return {sid: str(breaker.state(str(sid))["state"]) for sid in subscription_ids}


def scheduling(subscriptions: Iterable[Any]) -> dict[uuid.UUID, dict[str, Any] | None]:
    """Each subscription's limits in force now and its waiting work (None: Redis cannot say)."""
    from webhooks.services import scheduling as scheduler_service

    return {s.id: scheduler_service.state(s) for s in subscriptions}


@dataclass
class Minute:
    at: datetime
    events: int = 0
    attempts: int = 0
    successes: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None


@dataclass
class Overview:
    since: datetime
    events: int
    events_per_second: float
    attempts: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    backlog: int
    oldest_pending_seconds: float | None
    open_circuits: int
    minutes: list[Minute] = field(default_factory=list)


def overview(session: Session, tenant_id: uuid.UUID, now: datetime | None = None) -> Overview:
    """The tenant's last hour: rates, latency, backlog and open circuits, and per minute."""
    now = now or datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    minutes = {
        start + timedelta(minutes=i): Minute(start + timedelta(minutes=i)) for i in range(60)
    }
    total = Minute(start)
    for row in session.execute(
        _MINUTES,
        {"tenant_id": tenant_id, "since": start, "success": AttemptResult.SUCCESS.value},
    ):
        minute = total if row.minute is None else minutes.get(row.minute)
        if minute is None:
            continue
        minute.attempts, minute.successes = int(row.attempts), int(row.successes)
        minute.p50_ms, minute.p95_ms = _ms(row.p50), _ms(row.p95)
    first_id = uuid.UUID(int=int(start.timestamp() * 1000) << 80)
    events = 0
    for row in session.execute(
        _EVENTS, {"tenant_id": tenant_id, "since": start, "first_id": first_id}
    ):
        events += int(row.n)
        if row.minute in minutes:
            minutes[row.minute].events = int(row.n)
    backlog = session.execute(
        _BACKLOG, {"tenant_id": tenant_id, "statuses": [s.value for s in UNFINISHED]}
    ).one()
    elapsed = max(1.0, (now - start).total_seconds())
    return Overview(
        since=start,
        events=events,
        events_per_second=events / elapsed,
        attempts=total.attempts,
        success_rate=total.successes / total.attempts if total.attempts else None,
        p50_ms=total.p50_ms,
        p95_ms=total.p95_ms,
        backlog=int(backlog.n),
        oldest_pending_seconds=(now - backlog.oldest).total_seconds() if backlog.oldest else None,
        open_circuits=_open_circuits(session, tenant_id),
        minutes=list(minutes.values()),
    )


def _open_circuits(session: Session, tenant_id: uuid.UUID) -> int:
    """Count the tenant's circuits that are open or half-open (Redis holds them all)."""
    try:
        members = get_breaker().client.smembers(OPEN_SET)
    except Exception:  # soft state: the page still answers without it
        return 0
    ids = []
    for member in members:
        try:
            ids.append(uuid.UUID(member.decode() if isinstance(member, bytes) else str(member)))
        except ValueError:
            continue
    if not ids:
        return 0
    return int(
        session.execute(
            text(
                "SELECT count(*) FROM subscriptions"
                " WHERE tenant_id = :tenant_id AND id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"tenant_id": tenant_id, "ids": ids},
        ).scalar_one()
    )
