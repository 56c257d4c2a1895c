"""The delivery task: one attempt per run, retried through Celery countdowns."""

from __future__ import annotations

from celery import shared_task

from webhooks import dispatch
from webhooks.services import delivery


@shared_task(bind=True, name=dispatch.DELIVER_TASK, max_retries=None, ignore_result=True)
def deliver(self, delivery_id: str) -> None:
    """Attempt one delivery; the row in PostgreSQL decides whether there is anything to do."""
    step = delivery.attempt(delivery_id)
    if step.release_subscription is not None:
        dispatch.send(dispatch.RELEASE_TASK, [step.release_subscription])
    if step.retry_in is not None:
        # The row is already `retrying` with its due time: if this send is lost, the watchdog
        # sends it again from PostgreSQL.
        raise self.retry(countdown=step.retry_in, max_retries=None)
