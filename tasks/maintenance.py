"""Housekeeping tasks run by beat or by other tasks."""

from __future__ import annotations

from celery import shared_task

from webhooks import dispatch
from webhooks.runtime import get_breaker
from webhooks.services import retention, watchdog


@shared_task(name="tasks.watchdog", ignore_result=True)
def run_watchdog() -> dict[str, int]:
    """Take back expired leases, hand lost and due deliveries over again, release parked ones."""
    return watchdog.run().counts()


@shared_task(name=dispatch.RELEASE_TASK, ignore_result=True)
def release_circuit(subscription_id: str) -> int:
    """Hand a closed circuit's parked deliveries to the scheduler, a batch at a time."""
    if get_breaker().state(subscription_id)["state"] != "closed":
        # It opened again (or its state is unknown): the rest stay parked, spending nothing,
        # until a probe closes it.
        return 0
    ids, more = watchdog.unpark(subscription_id)
    if more:
        dispatch.send(dispatch.RELEASE_TASK, [subscription_id])
    return len(ids)


@shared_task(name="tasks.retention", ignore_result=True)
def run_retention() -> int:
    """Delete events (with their deliveries and attempts) older than the retention period."""
    return retention.purge()
