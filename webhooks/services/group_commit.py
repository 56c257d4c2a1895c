"""Group commit: the single events a process accepts at the same moment share one transaction.

Every `POST /v1/events` used to pay a whole transaction of its own: a pool checkout, the
ingest statement's round trip, a COMMIT (a WAL flush in PostgreSQL) and the scheduler's
round trip in Redis. When several requests of one process arrive together, they now share
them, as databases group the commits of concurrent transactions:

- a request hands its event to `GroupCommit.publish` and waits;
- if no flush is under way, it leads one. It takes every event waiting in this process,
  stores them with `ingest.store` (one statement per tenant), commits once, queues all their
  deliveries with the scheduler in one call, and wakes the requests whose events it stored;
- events that arrive during a flush wait for it to end, and the first of them leads the next.

Nothing waits on a timer: a request alone is flushed at once, as before, so a quiet service
answers as fast as it did. Each answer is still sent after its own event's COMMIT: group
commit changes how many requests one COMMIT serves, not what a 202 means.

If the group's transaction fails, each of its events is stored again in a transaction of its
own, so that one event's failure is its own request's answer only. Only events without an
idempotency key are grouped; a keyed event may be a repeat, which the one-request path answers.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session


@dataclass(eq=False)
class Job:
    """One request's event, and its answer once its group is flushed."""

    tenant_id: uuid.UUID
    row: dict[str, Any]  # as ingest.store takes it
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    deliveries: int = 0
    created_at: datetime | None = None
    error: BaseException | None = None


# Stores the jobs' events in the session's transaction (the caller commits), sets each job's
# number of deliveries, and returns what to hand to `Committed` once committed.
Store = Callable[[Session, list[Job], datetime], Any]
# Called after the COMMIT, before the requests are answered (count, queue the deliveries).
Committed = Callable[[list[Job], Any], object]


class GroupCommit:
    """The single events of one process, committed in groups (see the module's docstring)."""

    def __init__(self, store: Store, committed: Committed):
        self._store = store
        self._committed = committed
        self._lock = threading.Lock()
        self._pending: list[Job] = []
        self._busy = False

    def publish(self, session: Session, job: Job) -> Job:
        """Store the job's event (with others of this process if they came at the same time);
        return once it is committed. Raises what storing it raised."""
        with self._lock:
            self._pending.append(job)
            lead = not self._busy
            self._busy = True
        if not lead:
            job.done.wait()
            lead = job.lead
        if lead:
            self._lead(session)
        if job.error is not None:
            raise job.error
        return job

    def _lead(self, session: Session) -> None:
        with self._lock:
            group, self._pending = self._pending, []
        try:
            self._flush(session, group)
        finally:
            with self._lock:
                if self._pending:
                    # The next group's first request leads it (it is waiting for its answer).
                    following = self._pending[0]
                    following.lead = True
                    following.done.set()
                else:
                    self._busy = False
            for job in group:
                if job.created_at is None and job.error is None:
                    # The flush was cut short (the process is stopping): no answer but an error.
                    job.error = RuntimeError("the event's group commit did not finish")
                job.done.set()

    def _flush(self, session: Session, group: list[Job]) -> None:
        now = datetime.now(UTC)
        try:
            ready = self._store(session, group, now)
            session.commit()
        except Exception as exc:
            session.rollback()
            if len(group) == 1:
                group[0].error = exc
                return
            # Each on its own, so that one event's failure fails only its own request.
            for job in group:
                self._flush(session, [job])
            return
        for job in group:
            job.created_at = now
        self._committed(group, ready)
