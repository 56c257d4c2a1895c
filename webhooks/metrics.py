"""Prometheus metrics shared by the API and the workers (labels are bounded: no IDs)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from webhooks.bounded import SingleFlight

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

EVENTS_INGESTED = Counter("webhooks_events_ingested", "Events accepted by the API")
DELIVERIES = Counter("webhooks_deliveries", "Deliveries that reached a final state", ["outcome"])
ATTEMPTS = Counter("webhooks_delivery_attempts", "Delivery attempts by result", ["result"])
ATTEMPT_DURATION = Histogram(
    "webhooks_delivery_attempt_duration_seconds",
    "Time of one outbound HTTP attempt",
    buckets=LATENCY_BUCKETS,
)
END_TO_END = Histogram(
    "webhooks_end_to_end_latency_seconds",
    "From ingest to delivered",
    buckets=LATENCY_BUCKETS,
)
CIRCUIT_TRANSITIONS = Counter(
    "webhooks_circuit_transitions", "Circuit breaker state changes", ["to"]
)
WATCHDOG_REQUEUED = Counter(
    "webhooks_watchdog_requeued", "Deliveries the watchdog sent again", ["reason"]
)
PARKED = Counter("webhooks_deliveries_parked", "Deliveries parked behind an open circuit")
ENQUEUE_FAILURES = Counter(
    "webhooks_enqueue_failures", "Task sends that failed and were left to the watchdog"
)

THROTTLED = Counter(
    "webhooks_scheduler_throttled",
    "Times a subscription or tenant waited at a limit when the scheduler picked",
    ["reason"],
)


# Every label value each counter can take. Each is created at zero when the process starts, so
# that the series exists before its first increment: otherwise rate() and increase() miss that
# first event, and alerts on it never fire. Add a value here when code starts using it.
DELIVERY_OUTCOMES = ("delivered", "failed")
ATTEMPT_RESULTS = (
    "success",
    "http_error",
    "timeout",
    "connection_error",
    "refused",
    "circuit_open",
    "lease_expired",
    "error",
)
CIRCUIT_STATES = ("open", "half_open", "closed")
WATCHDOG_REASONS = (
    "lease_expired",
    "lost",
    "due",
    "subscription_disabled",
    "circuit_closed",
    "probe",
)
# webhooks.scheduler.BLOCK_REASONS (not imported: this module is imported by everything)
THROTTLE_REASONS = ("max_in_flight", "rate_limit", "tenant_cap")


def _start_at_zero() -> None:
    for outcome in DELIVERY_OUTCOMES:
        DELIVERIES.labels(outcome=outcome)
    for result in ATTEMPT_RESULTS:
        ATTEMPTS.labels(result=result)
    for state in CIRCUIT_STATES:
        CIRCUIT_TRANSITIONS.labels(to=state)
    for reason in WATCHDOG_REASONS:
        WATCHDOG_REQUEUED.labels(reason=reason)
    for reason in THROTTLE_REASONS:
        THROTTLED.labels(reason=reason)


_start_at_zero()


@dataclass
class _Backlog:
    """The last reading of the backlog, shared by every collector of this process."""

    read_at: float = -math.inf
    # (count, unix time of the oldest unfinished delivery or None), or None if unavailable.
    deliveries: tuple[float, float | None] | None = None
    circuits: float | None = None


_backlog = _Backlog()


def _read_backlog() -> None:
    from sqlalchemy import text

    from webhooks.circuit import OPEN_SET
    from webhooks.db import get_engine
    from webhooks.redis_client import get_redis

    try:
        with get_engine().connect() as conn:
            count, oldest = conn.execute(
                text(
                    "SELECT count(*), extract(epoch FROM min(created_at))"
                    " FROM deliveries WHERE status IN ('pending', 'retrying', 'in_flight')"
                )
            ).one()
        _backlog.deliveries = (float(count), float(oldest) if oldest is not None else None)
    except Exception as exc:  # a scrape must answer even when the database does not
        log.warning("backlog metrics unavailable: %s", exc)
        _backlog.deliveries = None
    try:
        _backlog.circuits = float(get_redis().scard(OPEN_SET))
    except Exception as exc:
        log.warning("circuit metrics unavailable: %s", exc)
        _backlog.circuits = None
    _backlog.read_at = time.monotonic()


# A scrape waits at most this for a reading; past it, it answers with the last one. A reading
# runs in a thread of its own, one at a time per process (webhooks.bounded).
READ_TIMEOUT_SECONDS = 2.0
_reading: SingleFlight[None] = SingleFlight("backlog-metrics")


class BacklogCollector(Collector):
    """The backlog from PostgreSQL and the open circuits from Redis.

    Read at most once per WEBHOOKS_METRICS_CACHE_SECONDS per process, however many scrapers
    ask and however often: /metrics has no authentication, and each reading counts rows.
    The oldest pending age is computed at each scrape from the cached creation time.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from config import get_settings

        max_age = get_settings().metrics_cache_seconds
        if time.monotonic() - _backlog.read_at >= max_age:
            try:  # one reading at a time; the others wait for it and share it
                _reading.call(_read_backlog, READ_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning(
                    "backlog metrics: no reading within %gs, the last one is shown",
                    READ_TIMEOUT_SECONDS,
                )
        deliveries, circuits = _backlog.deliveries, _backlog.circuits
        pending = GaugeMetricFamily(
            "webhooks_pending_deliveries", "Deliveries not yet delivered or failed"
        )
        oldest = GaugeMetricFamily(
            "webhooks_oldest_pending_age_seconds", "Age of the oldest unfinished delivery"
        )
        if deliveries is not None:
            count, oldest_at = deliveries
            pending.add_metric([], count)
            oldest.add_metric([], max(0.0, time.time() - oldest_at) if oldest_at else 0.0)
        yield pending
        yield oldest
        gauge = GaugeMetricFamily("webhooks_circuits_open", "Circuits open or half-open now")
        if circuits is not None:
            gauge.add_metric([], circuits)
        yield gauge
        # Three small Redis reads: no need to cache them like the database's count.
        ready = GaugeMetricFamily(
            "webhooks_ready_deliveries", "Deliveries ready and waiting for the scheduler's limits"
        )
        delayed = GaugeMetricFamily(
            "webhooks_delayed_deliveries", "Deliveries waiting in the scheduler for a retry"
        )
        try:
            from webhooks.runtime import get_scheduler

            totals = get_scheduler().totals()
            ready.add_metric([], float(totals["ready"]))
            delayed.add_metric([], float(totals["delayed"]))
        except Exception as exc:
            log.warning("scheduler metrics unavailable: %s", exc)
        yield ready
        yield delayed
