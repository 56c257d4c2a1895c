"""Group commit: the single events a process accepts at the same moment share one transaction.

Every `POST /v1/events` used to pay a whole transaction of its own: a pool checkout, the
ingest statement's round trip, a COMMIT (a WAL flush in PostgreSQL) and the scheduler's
round trip in Redis. When several requests of one process arrive together, they now share
them, as databases group the commits of concurrent transactions:

- a request hands its event to `GroupCommit.publish` and waits;
- if no flush of its tenant's events is under way, it leads one. It takes every event of its
  tenant waiting in this process, stores them with one `ingest.store` statement, commits once,
  queues all their deliveries with the scheduler in one call, and wakes their requests;
- events that arrive during a flush wait for it to end, and the first of them leads the next.

Groups are per tenant. A tenant's event may wait for a lock (its ordered lane, held by another
process's ingest); in a group shared across tenants, every tenant's events would wait with it,
and two groups holding two tenants' lanes in opposite orders would deadlock. A request holds
no transaction while it waits in a group (see `publish`).

Nothing waits on a timer: a request alone is flushed at once, as before, so a quiet service
answers as fast as it did. Each answer is still sent after its own event's COMMIT: group
commit changes how many requests one COMMIT serves, not what a 202 means.

If the group's statement fails, each of its events is stored again in a transaction of its
own, so that one event's failure is its own request's answer only; if its COMMIT fails, every
request answers that error (the COMMIT may have taken effect, so nothing is stored twice).
Only events without an idempotency key are grouped; a keyed event may be a repeat, which the
one-request path answers.
"""

from __future__ import annotations

import copy
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


# Stores the jobs' events (all of one tenant) in the session's transaction (the caller commits),
# sets each job's number of deliveries, and returns what to hand to `Committed` once committed.
Store = Callable[[Session, list[Job], datetime], Any]
# Called after the COMMIT, before the requests are answered (count, queue the deliveries).
Committed = Callable[[list[Job], Any], object]


@dataclass(eq=False)
class _Queue:
    """One tenant's events waiting in this process, and whether a flush of them is under way."""

    tenant_id: uuid.UUID
    pending: list[Job] = field(default_factory=list)
    busy: bool = False


class GroupCommit:
    """The single events of one process, committed in groups (see the module's docstring)."""

    def __init__(self, store: Store, committed: Committed):
        self._store = store
        self._committed = committed
        self._lock = threading.Lock()
        self._queues: dict[uuid.UUID, _Queue] = {}  # only tenants with events under way

    def publish(self, session: Session, job: Job) -> Job:
        """Store the job's event (with others of its tenant in this process if they came at
        the same time); return once it is committed. Raises what storing it raised."""
        if session.in_transaction():
            # What the request read (the catalogue, its consumer) would keep those tables'
            # locks while it waits for a leader, a wait PostgreSQL cannot see: a DDL queued
            # behind them, and the leader's INSERT behind the DDL, would never move.
            session.rollback()
        with self._lock:
            queue = self._queues.get(job.tenant_id)
            if queue is None:
                queue = self._queues[job.tenant_id] = _Queue(job.tenant_id)
            queue.pending.append(job)
            lead = not queue.busy
            queue.busy = True
        if not lead:
            job.done.wait()
            lead = job.lead
        if lead:
            self._lead(session, queue)
        if job.error is not None:
            raise job.error
        return job

    def _waiting(self) -> int:
        """How many events wait for a flush (for tests)."""
        with self._lock:
            return sum(len(queue.pending) for queue in self._queues.values())

    def _lead(self, session: Session, queue: _Queue) -> None:
        with self._lock:
            group, queue.pending = queue.pending, []
        try:
            self._flush(session, group)
        finally:
            with self._lock:
                if queue.pending:
                    # The next group's first request leads it (it is waiting for its answer).
                    following = queue.pending[0]
                    following.lead = True
                    following.done.set()
                else:
                    # Idle: forgotten (under the lock, so no request can still join it).
                    queue.busy = False
                    del self._queues[queue.tenant_id]
            for job in group:
                if job.created_at is None and job.error is None:
                    # The flush was cut short (the process is stopping): no answer but an error.
                    job.error = RuntimeError("the event's group commit did not finish")
                job.done.set()

    def _flush(self, session: Session, group: list[Job]) -> None:
        now = datetime.now(UTC)
        try:
            ready = self._store(session, group, now)
        except Exception as exc:
            session.rollback()
            if len(group) == 1:
                group[0].error = exc
                return
            # Each on its own, so that one event's failure fails only its own request.
            for job in group:
                self._flush(session, [job])
            return
        try:
            session.commit()
        except Exception as exc:
            # Not stored again: a COMMIT whose connection failed may have taken effect. Each
            # request answers the error as it would have alone (503 for a lost connection).
            session.rollback()
            for job in group:
                job.error = _own_copy(exc)
            return
        for job in group:
            job.created_at = now
        self._committed(group, ready)


def _own_copy(exc: Exception) -> Exception:
    """A copy of `exc` for one request's thread to raise (raising one object in several
    threads at once would tangle their tracebacks)."""
    try:
        return copy.copy(exc)
    except Exception:  # one that cannot be copied is raised itself
        return exc
