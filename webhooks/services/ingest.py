"""Accept events: store the events and their deliveries in one transaction, then enqueue.

`publish_event` takes one event and `publish_batch` many; both run the same code, so a batch
follows exactly the rules of single events: validation, fan-out, and idempotency per event.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from webhooks import dispatch, metrics
from webhooks.db import uuid7
from webhooks.services import Conflict, Invalid

# Every active subscription of the tenant that wants at least one of the given types.
_MATCHING_SUBSCRIPTIONS = text(
    "SELECT id, event_types FROM subscriptions"
    " WHERE tenant_id = :tenant_id AND status = 'active' AND deleted_at IS NULL"
    " AND event_types && CAST(:event_types AS varchar[])"
    " ORDER BY id"
)

# One statement for a whole batch, its rows as one JSON document: one round trip, and one call
# of the C JSON encoder instead of psycopg quoting each payload into an array, which cost more
# than the insert itself (see docs/performance.md).
_INSERT_EVENTS = text(
    """
INSERT INTO events (id, tenant_id, event_type, payload, idempotency_key, request_hash, created_at)
SELECT e.id, :tenant_id, e.event_type, e.payload, e.key, decode(e.hash, 'hex'), :now
  FROM jsonb_to_recordset(CAST(:events AS jsonb))
       AS e(id uuid, event_type varchar, payload jsonb, key varchar, hash text)
    ON CONFLICT ON CONSTRAINT uq_events_tenant_idempotency_key DO NOTHING
RETURNING id
"""
)

_INSERT_DELIVERIES = text(
    """
INSERT INTO deliveries (id, tenant_id, event_id, subscription_id, status, attempt_count,
                        failures, next_attempt_at, dispatched_at, parked, created_at, updated_at)
SELECT d.id, :tenant_id, d.event_id, d.subscription_id, 'pending', 0, 0, :now, :now, false,
       :now, :now
  FROM unnest(CAST(:ids AS uuid[]), CAST(:event_ids AS uuid[]), CAST(:subscription_ids AS uuid[]))
       AS d(id, event_id, subscription_id)
"""
)

_EXISTING = text(
    "SELECT id, idempotency_key, event_type, payload, request_hash, created_at FROM events"
    " WHERE tenant_id = :tenant_id AND idempotency_key = ANY(CAST(:keys AS varchar[]))"
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


@dataclass
class Accepted:
    event: EventRecord
    deliveries: int
    created: bool


@dataclass(frozen=True)
class NewEvent:
    """One event to publish; `request_hash` tells a replay from a reused idempotency key."""

    event_type: str
    payload: Any
    idempotency_key: str | None = None
    request_hash: bytes | None = None


def request_hash(event_type: str, payload: Any) -> bytes:
    """Return the SHA-256 of an event's content, the same however its JSON was spelled."""
    canonical = json.dumps(
        [event_type, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).digest()


def publish_event(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: str,
    payload: Any,
    idempotency_key: str | None = None,
    body_hash: bytes | None = None,
) -> Accepted:
    """Store an event and one delivery per matching subscription, commit, then enqueue them."""
    if idempotency_key is not None:
        assert body_hash is not None
    item = NewEvent(event_type, payload, idempotency_key, body_hash)
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
        _replay(session, tenant_id, items, keyed, results, batch)

    now = datetime.now(UTC)
    new = [i for i, result in enumerate(results) if result is None]
    event_ids = [uuid7() for _ in new]
    if new:
        inserted = set(
            session.execute(
                _INSERT_EVENTS,
                {"tenant_id": tenant_id, "now": now, "events": _rows(items, new, event_ids)},
            ).scalars()
        )
        if len(inserted) < len(new):
            # A concurrent request with the same key committed first: answer as it did.
            lost = {
                items[i].idempotency_key: i
                for i, eid in zip(new, event_ids, strict=True)
                if eid not in inserted
            }
            _replay(session, tenant_id, items, lost, results, batch)
            kept = [(i, eid) for i, eid in zip(new, event_ids, strict=True) if eid in inserted]
            new, event_ids = [i for i, _ in kept], [eid for _, eid in kept]

    delivery_ids = _fan_out(session, tenant_id, items, new, event_ids, now, results)
    session.commit()
    if new:
        metrics.EVENTS_INGESTED.inc(len(new))
    if not dispatch.enqueue_deliveries(delivery_ids):
        metrics.ENQUEUE_FAILURES.inc(len(delivery_ids))
    return [result for result in results if result is not None]


def _rows(items: Sequence[NewEvent], new: list[int], event_ids: list[uuid.UUID]) -> str:
    """Return the new events as the JSON document _INSERT_EVENTS reads."""
    rows = []
    for i, event_id in zip(new, event_ids, strict=True):
        item = items[i]
        digest = item.request_hash
        rows.append(
            {
                "id": str(event_id),
                "event_type": item.event_type,
                "payload": item.payload,
                "key": item.idempotency_key,
                "hash": digest.hex() if digest is not None else None,
            }
        )
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False)


def _fan_out(
    session: Session,
    tenant_id: uuid.UUID,
    items: Sequence[NewEvent],
    new: list[int],
    event_ids: list[uuid.UUID],
    now: datetime,
    results: list[Accepted | None],
) -> list[uuid.UUID]:
    """Insert one delivery per new event and matching subscription; fill in the results."""
    wanted = {items[i].event_type for i in new}
    subscriptions: list[tuple[uuid.UUID, list[str]]] = []
    if new:
        subscriptions = [
            (row.id, row.event_types)
            for row in session.execute(
                _MATCHING_SUBSCRIPTIONS,
                {"tenant_id": tenant_id, "event_types": [*sorted(wanted), "*"]},
            )
        ]
    by_type = {
        event_type: [sid for sid, types in subscriptions if event_type in types or "*" in types]
        for event_type in wanted
    }
    delivery_ids: list[uuid.UUID] = []
    delivery_events: list[uuid.UUID] = []
    delivery_subscriptions: list[uuid.UUID] = []
    for i, event_id in zip(new, event_ids, strict=True):
        item = items[i]
        targets = by_type[item.event_type]
        for subscription_id in targets:
            delivery_ids.append(uuid7())
            delivery_events.append(event_id)
            delivery_subscriptions.append(subscription_id)
        event = EventRecord(
            event_id, tenant_id, item.event_type, item.payload, item.idempotency_key, now
        )
        results[i] = Accepted(event, len(targets), created=True)
    if delivery_ids:
        session.execute(
            _INSERT_DELIVERIES,
            {
                "tenant_id": tenant_id,
                "now": now,
                "ids": delivery_ids,
                "event_ids": delivery_events,
                "subscription_ids": delivery_subscriptions,
            },
        )
    return delivery_ids


def _replay(
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
            row.id, tenant_id, row.event_type, row.payload, row.idempotency_key, row.created_at
        )
        results[keyed[row.idempotency_key]] = Accepted(
            event, int(counts.get(row.id, 0)), created=False
        )
