"""Housekeeping tasks run by beat or by other tasks."""

from __future__ import annotations

from celery import shared_task

from webhooks import dispatch
from webhooks.services import retention, watchdog
from webhooks.services.delivery import get_breaker


@shared_task(name="tasks.watchdog", ignore_result=True)
def run_watchdog() -> dict[str, int]:
    """Take back expired leases, re-send lost and due deliveries, release parked ones."""
    report = watchdog.run()
    return {
        "expired": report.expired,
        "due": report.due,
        "lost": report.lost,
        "released": report.released,
        "probes": report.probes,
    }


@shared_task(name=dispatch.RELEASE_TASK, ignore_result=True)
def release_parked(subscription_id: str) -> int:
    """Release a closed circuit's parked deliveries a batch at a time, oldest first."""
    if get_breaker().state(subscription_id)["state"] != "closed":
        # It opened again (or its state is unknown): the rest stay parked, spending nothing,
        # until a probe closes it. Releasing on would send them round and round while it is open.
        return 0
    ids, more = watchdog.release_parked(subscription_id)
    if more:
        # Sent after this batch's deliveries, so it runs once they are under way.
        dispatch.send(dispatch.RELEASE_TASK, [subscription_id])
    return len(ids)


@shared_task(name="tasks.retention", ignore_result=True)
def run_retention() -> int:
    """Delete events (with their deliveries and attempts) older than the retention period."""
    return retention.purge()
