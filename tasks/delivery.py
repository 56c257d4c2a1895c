"""The delivery task: an attempt, then the next the scheduler gives its slot, for a moment."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task, shared_task

from config import get_settings
from tasks import signals
from webhooks import dispatch
from webhooks.services import delivery

log = logging.getLogger(__name__)

_settings = get_settings()
# The client cuts every attempt at WEBHOOKS_HTTP_TIMEOUT_SECONDS (webhooks.http). This is the
# backstop for a hang anywhere else (the database, a bug): past it the pool process is killed,
# well before the lease lets another worker send the delivery again.
HARD_TIME_LIMIT = _settings.http_timeout + _settings.lease_margin / 2
# A task goes on with the next delivery its freed slot is given (in the same round trip that
# ends the attempt) while it has run for less than this: the deliveries of a backlog then skip
# the broker and the worker's main process, where a task costs about two thirds of what the
# attempt itself does (docs/scheduling.md, docs/performance.md). Short, so that a task waiting
# in the queue waits little, and one more attempt begun just before it ends still ends well
# inside HARD_TIME_LIMIT.
CONTINUE_SECONDS = min(0.5, _settings.lease_margin / 8)


@shared_task(bind=True, name=dispatch.DELIVER_TASK, ignore_result=True, time_limit=HARD_TIME_LIMIT)
def deliver(self: Task, delivery_id: str) -> list[str]:
    """Attempt one delivery (the row in PostgreSQL decides whether there is anything to do),
    then those the scheduler hands this slot next, for up to CONTINUE_SECONDS; return the IDs
    attempted (Flower shows them as the task's result)."""
    closed = getattr(self.request, dispatch.CIRCUIT_HEADER, None) == "closed"
    until = time.monotonic() + CONTINUE_SECONDS
    attempted = [delivery_id]
    kept = _attempt(delivery_id, closed, until)
    while kept is not None:
        attempted.append(kept.delivery_id)
        # Flower shows it as a task of its own, a child of this one, while it watches.
        with _shown_as_task(self, kept.delivery_id):
            kept = _attempt(kept.delivery_id, kept.circuit_closed, until)
    return attempted


def _attempt(delivery_id: str, circuit_closed: bool, until: float) -> delivery.Kept | None:
    step = delivery.attempt(delivery_id, circuit_closed=circuit_closed)
    # Frees its slot, schedules its retry, starts the next deliveries (keeping one for this
    # task while its time lasts), and tells the breaker.
    return delivery.conclude(delivery_id, step, keep=time.monotonic() < until)


@contextmanager
def _shown_as_task(task: Task, delivery_id: str) -> Iterator[None]:
    """While this worker sends task events (Flower watches), report a delivery that a task
    goes on with as Celery reports a task: received, started, then succeeded or failed."""
    if not signals.task_events_on():
        yield
        return
    request = task.request
    fields: dict[str, object] = {"uuid": str(uuid.uuid4())}
    started = time.monotonic()
    _send_events(
        task,
        ("task-received", {
            "name": task.name, "args": repr([delivery_id]), "kwargs": "{}",
            "root_id": request.root_id or request.id, "parent_id": request.id,
            "retries": 0, "eta": None, "expires": None, **fields,
        }),
        ("task-started", fields),
    )  # fmt: skip
    try:
        yield
    except BaseException as exc:
        _send_events(task, ("task-failed", {"exception": repr(exc), **fields}))
        raise
    runtime = time.monotonic() - started
    _send_events(task, ("task-succeeded", {"result": "None", "runtime": runtime, **fields}))


def _send_events(task: Task, *events: tuple[str, dict[str, object]]) -> None:
    try:
        with task.app.events.default_dispatcher(hostname=task.request.hostname) as dispatcher:
            for kind, fields in events:
                dispatcher.send(kind, **fields)
    except Exception as exc:  # monitoring only: never the delivery's concern
        log.debug("task events not sent: %s", exc)
