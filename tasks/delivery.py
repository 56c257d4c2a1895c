"""The delivery task: one attempt per run, retried through Celery countdowns."""

from __future__ import annotations

from celery import shared_task

from config import get_settings
from webhooks import dispatch
from webhooks.services import delivery

_settings = get_settings()
# urllib3's timeouts bound each socket operation, not a subscriber that trickles its headers:
# past this the pool process is killed, well before the lease lets another worker send it again.
HARD_TIME_LIMIT = _settings.http_timeout + _settings.lease_margin / 2


@shared_task(
    bind=True,
    name=dispatch.DELIVER_TASK,
    max_retries=None,
    ignore_result=True,
    time_limit=HARD_TIME_LIMIT,
)
def deliver(self, delivery_id: str) -> None:
    """Attempt one delivery; the row in PostgreSQL decides whether there is anything to do."""
    step = delivery.attempt(delivery_id)
    if step.release_subscription is not None:
        dispatch.send(dispatch.RELEASE_TASK, [step.release_subscription])
    if step.retry_in is not None:
        # The row is already `retrying` with its due time: if this send is lost, the watchdog
        # sends it again from PostgreSQL.
        raise self.retry(countdown=step.retry_in, max_retries=None)
