"""Celery settings shared by the workers and by the API, which only sends tasks by name."""

from __future__ import annotations

from typing import Any

from config import Settings

QUEUE = "webhooks"
# Housekeeping has its own queue so it never waits behind deliveries.
CONTROL_QUEUE = "control"
# Redis hands an unacknowledged message to another worker after this long. No task waits in a
# worker (retries wait in the scheduler, not as countdowns), so this only bounds how long a
# message taken by a worker that died stays invisible; the watchdog re-sends its delivery
# much sooner (WEBHOOKS_LOST_AFTER_SECONDS), and the claim makes the late copy a no-op.
VISIBILITY_TIMEOUT_SECONDS = 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery configuration of every process."""
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "retry_on_timeout": True,
            "health_check_interval": 10,
        },
        "task_default_queue": QUEUE,
        "task_routes": {
            "tasks.watchdog": {"queue": CONTROL_QUEUE},
            "tasks.retention": {"queue": CONTROL_QUEUE},
            "tasks.release_parked": {"queue": CONTROL_QUEUE},
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        # A task is acknowledged only when it ends, and goes back to the queue if its process
        # dies, so a crash never drops a message. Tasks are idempotent (they claim a row first).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Task events (three Redis publishes per task in the worker's main process) only while
        # someone reads them: Flower turns them on in every worker when it starts, and keeps
        # them on (its enable_events, every few seconds). See docs/performance.md.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
    }
