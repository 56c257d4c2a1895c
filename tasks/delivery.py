"""The delivery task: one attempt per run; the scheduler decides what runs next."""

from __future__ import annotations

from celery import Task, shared_task

from config import get_settings
from webhooks import dispatch
from webhooks.services import delivery

_settings = get_settings()
# The client cuts every attempt at WEBHOOKS_HTTP_TIMEOUT_SECONDS (webhooks.http). This is the
# backstop for a hang anywhere else (the database, a bug): past it the pool process is killed,
# well before the lease lets another worker send the delivery again.
HARD_TIME_LIMIT = _settings.http_timeout + _settings.lease_margin / 2


@shared_task(bind=True, name=dispatch.DELIVER_TASK, ignore_result=True, time_limit=HARD_TIME_LIMIT)
def deliver(self: Task, delivery_id: str) -> None:
    """Attempt one delivery; the row in PostgreSQL decides whether there is anything to do."""
    closed = getattr(self.request, dispatch.CIRCUIT_HEADER, None) == "closed"
    step = delivery.attempt(delivery_id, circuit_closed=closed)
    # Frees its slot, schedules its retry, starts the next deliveries, and tells the breaker.
    delivery.conclude(delivery_id, step)
