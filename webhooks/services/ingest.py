"""Accept events: store the events and their deliveries in one transaction, then enqueue.

`publish_event` takes one event and `publish_batch` many; both run the same code, so a batch
follows exactly the rules of single events: validation, fan-out, and idempotency per event.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webhooks import metrics
from webhooks.canonical import canonical_json
from webhooks.db import uuid7
from webhooks.scheduler import Item
from webhooks.services import Conflict, Invalid, consumers, event_types, lanes, scheduling
from webhooks.services.group_commit import GroupCommit, Job

# The events, and one delivery per new event and matching active subscription, in one
# statement: one round trip whatever the batch size. The rows come as one JSON document (one
# call of the C JSON encoder; psycopg quoting each payload into a text array cost more than
# the insert). An event whose idempotency key is taken is skipped (ON CONFLICT) and gets no
# deliveries. Delivery IDs are made in SQL by uuidv7(), PostgreSQL 18's or, before 18, the
# function of the same name and layout that migration 20261130_0007 creates (their number is
# known only once the statement has matched the subscriptions).
#
# Routing: an event goes to the subscriptions of its consumer, or to the tenant's own (no
# consumer) when it names none. `targets` reads only those, through ix_subscriptions_live
# (tenant_id, consumer_id): a tenant's other consumers' subscriptions cost nothing. Of these,
# a subscription gets the event when its type is listed (or `*`, which leaves out the
# service's own `webhook.` types), it lists no channel or shares one, and its compiled
# payload filter (services/filters.py) holds. The nil UUID stands for "no consumer" in the
# join, so that it stays an equality the planner can hash. The events are inserted in the order
# of their idempotency keys (ORDER BY e.key, e.id); answers and deliveries keep ingest order.
_INSERT = text(
    """
WITH new_events AS (
  INSERT INTO events (id, tenant_id, event_type, payload, consumer_id, channels,
                      idempotency_key, request_hash, ordering_key, created_at)
  SELECT e.id, :tenant_id, e.event_type, e.payload, e.consumer_id,
         coalesce(e.channels, '{}'), e.key, decode(e.hash, 'hex'), e.ordering_key, :now
    FROM jsonb_to_recordset(CAST(:events AS jsonb))
         AS e(id uuid, event_type varchar, payload jsonb, consumer_id uuid, channels varchar[],
              key varchar, hash text, ordering_key varchar)
   -- Keys are taken in one order by every request: two batches that share keys in other
   -- orders would otherwise each wait for a key the other holds (a deadlock, one refused).
   ORDER BY e.key, e.id
      ON CONFLICT ON CONSTRAINT uq_events_tenant_idempotency_key DO NOTHING
  RETURNING id, event_type, payload, consumer_id, channels
), targets AS (
  SELECT id, consumer_id, event_types, channels, filter_path, max_in_flight, rate_limit,
         ordering
    FROM subscriptions
   WHERE tenant_id = :tenant_id AND status = 'active' AND deleted_at IS NULL
     AND consumer_id = ANY(CAST(:consumers AS uuid[]))
     AND event_types && CAST(:wanted AS varchar[])
  UNION ALL
  SELECT id, consumer_id, event_types, channels, filter_path, max_in_flight, rate_limit,
         ordering
    FROM subscriptions
   WHERE tenant_id = :tenant_id AND status = 'active' AND deleted_at IS NULL
     AND consumer_id IS NULL AND CAST(:own AS boolean)
     AND event_types && CAST(:wanted AS varchar[])
), new_deliveries AS (
  INSERT INTO deliveries (id, tenant_id, event_id, subscription_id, status, attempt_count,
                          failures, next_attempt_at, dispatched_at, parked, created_at,
                          updated_at)
  SELECT uuidv7(), :tenant_id, e.id, t.id, 'pending', 0, 0,
         -- a fifo delivery waits for its lane (services/lanes.py): no due time yet
         CASE WHEN t.ordering = 'fifo' THEN NULL ELSE CAST(:now AS timestamptz) END,
         CASE WHEN t.ordering = 'fifo' THEN NULL ELSE CAST(:now AS timestamptz) END,
         false, :now, :now
    FROM new_events e
    JOIN targets t
      ON coalesce(t.consumer_id, '00000000-0000-0000-0000-000000000000')
         = coalesce(e.consumer_id, '00000000-0000-0000-0000-000000000000')
     AND (e.event_type = ANY(t.event_types)
          OR ('*' = ANY(t.event_types) AND left(e.event_type, 8) <> 'webhook.'))
     AND (cardinality(t.channels) = 0 OR t.channels && e.channels)
     AND (t.filter_path IS NULL OR e.payload @@ t.filter_path)
  RETURNING id, event_id, subscription_id
)
SELECT e.id AS event_id, d.id AS delivery_id, d.subscription_id, t.max_in_flight, t.rate_limit,
       t.ordering = 'fifo' AS ordered
  FROM new_events e
  LEFT JOIN new_deliveries d ON d.event_id = e.id
  LEFT JOIN targets t ON t.id = d.subscription_id
"""
)

_EXISTING = text(
    "SELECT e.id, e.idempotency_key, e.event_type, e.payload, e.request_hash, e.created_at,"
    " e.channels, e.ordering_key, c.uid AS consumer_uid"
    " FROM events e LEFT JOIN consumers c ON c.id = e.consumer_id"
    " WHERE e.tenant_id = :tenant_id AND e.idempotency_key = ANY(CAST(:keys AS varchar[]))"
)

_DELIVERY_COUNTS = text(
    "SELECT event_id, count(*) FROM deliveries WHERE event_id = ANY(CAST(:ids AS uuid[]))"
    " GROUP BY event_id"
)


@dataclass(slots=True)
class EventRecord:
    """An accepted event as the API answers it (a plain object: building 500 ORM instances
    for an answer cost as much as validating the batch)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    event_type: str
    payload: Any
    idempotency_key: str | None
    created_at: datetime
    consumer_uid: str | None = None
    channels: list[str] = field(default_factory=list)
    ordering_key: str | None = None


@dataclass
class Accepted:
    event: EventRecord
    deliveries: int
    created: bool


@dataclass(frozen=True)
class NewEvent:
    """One event to publish; `request_hash` tells a repeat from a reused idempotency key."""

    event_type: str
    payload: Any
    idempotency_key: str | None = None
    request_hash: bytes | None = None
    consumer: str | None = None
    channels: Sequence[str] = ()
    ordering_key: str | None = None


def request_hash(
    event_type: str,
    payload: Any,
    consumer: str | None = None,
    channels: Sequence[str] = (),
    ordering_key: str | None = None,
) -> bytes:
    """Return the SHA-256 of an event's content, the same however its JSON was spelled."""
    content: list[Any] = [event_type, payload]
    if consumer is not None or channels or ordering_key is not None:
        # Only then: events stored before consumers and channels existed keep their hash.
        content += [consumer, sorted(set(channels))]
    if ordering_key is not None:
        content.append(ordering_key)
    # Numbers in one spelling: a repeat that writes 100 as 100.0 is the same event.
    return hashlib.sha256(canonical_json(content).encode()).digest()


def publish_event(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: str,
    payload: Any,
    idempotency_key: str | None = None,
    body_hash: bytes | None = None,
    consumer: str | None = None,
    channels: Sequence[str] = (),
    ordering_key: str | None = None,
) -> Accepted:
    """Store an event and one delivery per matching subscription, commit, then enqueue them."""
    if idempotency_key is not None:
        assert body_hash is not None
    item = NewEvent(
        event_type, payload, idempotency_key, body_hash, consumer, channels, ordering_key
    )
    return _publish(session, tenant_id, [item], batch=False)[0]


def publish_batch(
    session: Session, tenant_id: uuid.UUID, items: Sequence[NewEvent]
) -> list[Accepted]:
    """Store many events and their deliveries in one transaction, commit, then enqueue.

    All or nothing: if one item's idempotency key was used with another event, nothing is
    written and the whole batch answers 409. An item whose key was used with the same event
    returns that event and creates nothing. Keys must be distinct within a batch.
    """
    return _publish(session, tenant_id, items, batch=True)


def _publish(
    session: Session, tenant_id: uuid.UUID, items: Sequence[NewEvent], batch: bool
) -> list[Accepted]:
    results: list[Accepted | None] = [None] * len(items)
    keyed: dict[str | None, int] = {}
    for i, item in enumerate(items):
        if item.idempotency_key is None:
            continue
        if item.idempotency_key in keyed:
            raise Invalid(
                "an idempotency key may appear only once in a batch",
                {
                    "fields": {
                        "events": {
                            str(i): {
                                "idempotency_key": [
                                    f"repeats the key of events[{keyed[item.idempotency_key]}]"
                                ]
                            }
                        }
                    }
                },
            )
        keyed[item.idempotency_key] = i
    if keyed:
        _answer_taken_keys(session, tenant_id, items, keyed, results, batch)

    new = [i for i, result in enumerate(results) if result is None]
    # Before any write: an event its type's schema refuses leaves the whole batch unstored.
    event_types.check_events(
        session, tenant_id, [(i, items[i].event_type, items[i].payload) for i in new], batch
    )
    consumer_ids = _consumers(session, tenant_id, items, new, batch)
    if not batch and not keyed:
        return [_publish_grouped(session, tenant_id, items[0], consumer_ids)]
    now = datetime.now(UTC)
    ready = (
        _insert(session, tenant_id, items, new, consumer_ids, now, results, batch) if new else []
    )
    session.commit()
    created = sum(1 for result in results if result is not None and result.created)
    if created:
        metrics.EVENTS_INGESTED.inc(created)
    scheduling.submit(ready)
    return [result for result in results if result is not None]


def _publish_grouped(
    session: Session, tenant_id: uuid.UUID, item: NewEvent, consumer_ids: dict[str, uuid.UUID]
) -> Accepted:
    """Store one event without an idempotency key through this process's group commit."""
    event_id = uuid7()
    job = _GROUP.publish(session, Job(tenant_id, _rows([item], [0], [event_id], consumer_ids)[0]))
    assert job.created_at is not None
    return _accepted(item, event_id, tenant_id, job.created_at, job.deliveries)


def _accepted(
    item: NewEvent, event_id: uuid.UUID, tenant_id: uuid.UUID, now: datetime, deliveries: int
) -> Accepted:
    """The answer for a new event just stored."""
    event = EventRecord(
        event_id,
        tenant_id,
        item.event_type,
        item.payload,
        item.idempotency_key,
        now,
        item.consumer,
        sorted(set(item.channels)),
        item.ordering_key,
    )
    return Accepted(event, deliveries, created=True)


def _store_group(session: Session, jobs: list[Job], now: datetime) -> list[Item]:
    """Store a group's events (all of one tenant) in one statement; count each one's deliveries."""
    stored = store(session, jobs[0].tenant_id, [job.row for job in jobs], now)
    counts = stored.deliveries()
    for job in jobs:
        job.deliveries = counts[job.row["id"]]
    return stored.ready


def _committed(jobs: list[Job], ready: list[Item]) -> None:
    metrics.EVENTS_INGESTED.inc(len(jobs))
    scheduling.submit(ready)


_GROUP = GroupCommit(_store_group, _committed)


def _consumers(
    session: Session, tenant_id: uuid.UUID, items: Sequence[NewEvent], new: list[int], batch: bool
) -> dict[str, uuid.UUID]:
    """Return the IDs of the consumers the new events name; 422 naming an unknown one."""
    uids = {uid for i in new if (uid := items[i].consumer) is not None}
    if not uids:
        return {}
    found = consumers.resolve(session, tenant_id, uids)
    for i in new:
        uid = items[i].consumer
        if uid is not None and uid not in found:
            session.rollback()
            problem = {"consumer": ["no such consumer"]}
            if batch:
                raise Invalid(
                    f"events[{i}]: no such consumer",
                    {"fields": {"events": {str(i): problem}}, "index": i},
                )
            raise Invalid("no such consumer", {"fields": problem})
    return found


@dataclass
class Stored:
    """What `store` wrote: (event_id, delivery_id, subscription_id, max_in_flight, rate_limit,
    ordered) rows, delivery_id None for an event without any; and the deliveries to hand to the
    scheduler once committed: every unordered one, and the new holder of each lane that had none.
    """

    rows: list[Any]
    ready: list[Item]

    def deliveries(self) -> dict[str, int]:
        """The number of deliveries of each event stored (by its ID as text)."""
        counts: dict[str, int] = {}
        for row in self.rows:
            key = str(row.event_id)
            counts[key] = counts.get(key, 0) + (row.delivery_id is not None)
        return counts


def store(
    conn: Session | Connection,
    tenant_id: uuid.UUID,
    events: list[dict[str, Any]],
    now: datetime,
) -> Stored:
    """Insert events and their deliveries in the caller's transaction (one statement, and two
    more for fifo subscriptions' lanes). The caller commits, then submits `ready`.

    Each event is a dict of `id`, `event_type`, `payload`, `consumer_id`, `channels`, `key`,
    `hash` (hex) and `ordering_key`, as _INSERT reads them, in ingest order.
    """
    consumer_ids = sorted({str(e["consumer_id"]) for e in events if e.get("consumer_id")})
    wanted = sorted({e["event_type"] for e in events})
    rows = list(
        conn.execute(
            _INSERT,
            {
                "tenant_id": tenant_id,
                "now": now,
                "events": json.dumps(events, separators=(",", ":"), ensure_ascii=False),
                "wanted": [*wanted, "*"],
                "consumers": consumer_ids,
                "own": any(not e.get("consumer_id") for e in events),
            },
        ).all()
    )
    # In ingest order: the scheduler queues them so (the statement returns them in no order).
    place = {str(e["id"]): i for i, e in enumerate(events)}
    if len(events) > 1:
        rows.sort(key=lambda r: place[str(r.event_id)])
    tenant = str(tenant_id)
    ready = [
        Item(str(r.delivery_id), str(r.subscription_id), tenant, r.max_in_flight, r.rate_limit)
        for r in rows
        if r.delivery_id is not None and not r.ordered
    ]
    ordered = []
    for r in rows:
        if r.ordered and r.delivery_id is not None:
            i = place[str(r.event_id)]
            ordered.append((r.delivery_id, r.subscription_id, events[i].get("ordering_key"), i))
    if ordered:
        ready += lanes.advance(conn, lanes.assign(conn, ordered))
    return Stored(rows, ready)


def _insert(
    session: Session,
    tenant_id: uuid.UUID,
    items: Sequence[NewEvent],
    new: list[int],
    consumer_ids: dict[str, uuid.UUID],
    now: datetime,
    results: list[Accepted | None],
    batch: bool,
) -> list[Item]:
    """Insert the new events and their deliveries, fill in their results, and return the
    deliveries for the scheduler in the events' order."""
    event_ids = [uuid7() for _ in new]
    stored = store(session, tenant_id, _rows(items, new, event_ids, consumer_ids), now)
    deliveries = stored.deliveries()
    lost: dict[str | None, int] = {}
    for i, event_id in zip(new, event_ids, strict=True):
        item = items[i]
        count = deliveries.get(str(event_id))
        if count is None:
            # A concurrent request with the same key committed first: answer as it did.
            lost[item.idempotency_key] = i
            continue
        results[i] = _accepted(item, event_id, tenant_id, now, count)
    if lost:
        _answer_taken_keys(session, tenant_id, items, lost, results, batch)
    return stored.ready


def _rows(
    items: Sequence[NewEvent],
    new: list[int],
    event_ids: list[uuid.UUID],
    consumer_ids: dict[str, uuid.UUID],
) -> list[dict[str, Any]]:
    """Return the new events as `store` takes them."""
    rows = []
    for i, event_id in zip(new, event_ids, strict=True):
        item = items[i]
        digest = item.request_hash
        rows.append(
            {
                "id": str(event_id),
                "event_type": item.event_type,
                "payload": item.payload,
                "consumer_id": str(consumer_ids[item.consumer]) if item.consumer else None,
                "channels": sorted(set(item.channels)),
                "key": item.idempotency_key,
                "hash": digest.hex() if digest is not None else None,
                "ordering_key": item.ordering_key,
            }
        )
    return rows


def _answer_taken_keys(
    session: Session,
    tenant_id: uuid.UUID,
    items: Sequence[NewEvent],
    keyed: dict[str | None, int],
    results: list[Accepted | None],
    batch: bool,
) -> None:
    """Answer items whose idempotency key is taken: the same event, or 409 for another body."""
    rows = session.execute(_EXISTING, {"tenant_id": tenant_id, "keys": list(keyed)}).all()
    if not rows:
        return
    for row in rows:
        index = keyed[row.idempotency_key]
        if row.request_hash != items[index].request_hash:
            session.rollback()
            details: dict[str, Any] = {
                "idempotency_key": row.idempotency_key,
                "event_id": str(row.id),
            }
            if batch:
                details["index"] = index
                raise Conflict(
                    f"events[{index}]: this idempotency key was used with a different event",
                    details,
                )
            raise Conflict("this Idempotency-Key was used with a different request body", details)
    counts = {
        event_id: count
        for event_id, count in session.execute(_DELIVERY_COUNTS, {"ids": [r.id for r in rows]})
    }
    for row in rows:
        event = EventRecord(
            row.id,
            tenant_id,
            row.event_type,
            row.payload,
            row.idempotency_key,
            row.created_at,
            row.consumer_uid,
            list(row.channels),
            row.ordering_key,
        )
        results[keyed[row.idempotency_key]] = Accepted(
            event, int(counts.get(row.id, 0)), created=False
        )
