"""Operational webhooks: the service tells a tenant about its own endpoints.

The events go into the tenant's own pipeline (no consumer) under reserved types, and reach
the tenant's subscriptions that list the type by name (`*` leaves them out, so existing
subscriptions get nothing new). They carry IDs and reasons, never payloads, URLs or secrets.

No loops: a delivery of an operational event that fails, or opens a circuit, emits nothing.
Closing a circuit and disabling a subscription are always told: neither can cause another
operational event by itself.

Each function writes in the caller's transaction: with a Session, the deliveries are sent to
the broker after it commits; with an autocommit Connection (the delivery state engine), at
once; with another Connection, the watchdog sends them. A database error while telling is
logged and leaves the caller's own work alone (a savepoint in a Session): these events are
the service's best effort, the state they tell of is always in the API.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from webhooks import metrics
from webhooks.db import atomic, committed, uuid7
from webhooks.models.event import (
    CIRCUIT_CLOSED,
    CIRCUIT_OPENED,
    DELIVERY_FAILED,
    OPERATIONAL_PREFIX,
    OPERATIONAL_TYPES,
    SUBSCRIPTION_DISABLED,
)
from webhooks.scheduler import Item
from webhooks.services import ingest, scheduling

TYPES = OPERATIONAL_TYPES

_PENDING = "operational_deliveries"
log = logging.getLogger("webhooks.operational")

_SUBSCRIPTION = text(
    "SELECT s.tenant_id, s.deleted_at, c.uid AS consumer FROM subscriptions s"
    " LEFT JOIN consumers c ON c.id = s.consumer_id WHERE s.id = :id"
)

_FAILED = text(
    """
SELECT d.id, d.tenant_id, d.event_id, d.subscription_id, d.attempt_count, d.last_error,
       e.event_type, c.uid AS consumer
  FROM deliveries d
  JOIN events e ON e.id = d.event_id
  JOIN subscriptions s ON s.id = d.subscription_id
  LEFT JOIN consumers c ON c.id = s.consumer_id
 WHERE d.id = ANY(CAST(:ids AS uuid[])) AND d.status = 'failed'
   AND left(e.event_type, 8) <> 'webhook.'
"""
)

# Which of these tenants have a live subscription of their own to which of these types: an
# operational event nobody listens to is not stored at all.
_LISTENING = text(
    """
SELECT DISTINCT s.tenant_id, t.name
  FROM subscriptions s, unnest(s.event_types) AS t(name)
 WHERE s.tenant_id = ANY(CAST(:tenants AS uuid[])) AND s.consumer_id IS NULL
   AND s.status = 'active' AND s.deleted_at IS NULL
   AND s.event_types && CAST(:types AS varchar[]) AND t.name = ANY(CAST(:types AS varchar[]))
"""
)

_UNDISPATCH = text(
    "UPDATE deliveries SET dispatched_at = NULL WHERE id = ANY(CAST(:ids AS uuid[]))"
)


def _best_effort(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def guarded(conn: Session | Connection, *args: Any) -> Any:
        try:
            if isinstance(conn, Session):
                with conn.begin_nested():
                    return fn(conn, *args)
            return fn(conn, *args)
        except SQLAlchemyError:
            log.exception("operational event not stored", extra={"function": fn.__name__})
            return None

    return guarded


def emit(
    conn: Session | Connection, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any]
) -> list[uuid.UUID]:
    """Publish one operational event to the tenant's subscriptions; return its deliveries."""
    return _emit(conn, [(tenant_id, event_type, data)])


@_best_effort
def subscription_disabled(
    conn: Session | Connection, subscription_id: uuid.UUID, reason: str
) -> None:
    """Tell that a subscription was disabled (a deleted one is not told as disabled)."""
    row = conn.execute(_SUBSCRIPTION, {"id": subscription_id}).first()
    if row is None or row.deleted_at is not None:
        return
    data = {"subscription_id": str(subscription_id), "consumer": row.consumer, "reason": reason}
    emit(conn, row.tenant_id, SUBSCRIPTION_DISABLED, data)


@_best_effort
def deliveries_failed(conn: Session | Connection, delivery_ids: Sequence[uuid.UUID]) -> None:
    """Tell that these deliveries failed for good (those of operational events excepted)."""
    if not delivery_ids:
        return
    rows = conn.execute(_FAILED, {"ids": [str(i) for i in delivery_ids]}).all()
    _emit(
        conn,
        [
            (
                row.tenant_id,
                DELIVERY_FAILED,
                {
                    "delivery_id": str(row.id),
                    "event_id": str(row.event_id),
                    "event_type": row.event_type,
                    "subscription_id": str(row.subscription_id),
                    "consumer": row.consumer,
                    "attempts": row.attempt_count,
                    "reason": row.last_error,
                },
            )
            for row in rows
        ],
    )


@_best_effort
def circuit_opened(
    conn: Session | Connection,
    tenant_id: uuid.UUID,
    subscription_id: uuid.UUID,
    cause_event_type: str,
    probe: bool,
    reason: str | None,
) -> None:
    """Tell that a subscription's circuit opened (not again when a probe fails, not when an
    operational event's delivery opened it)."""
    if probe or cause_event_type.startswith(OPERATIONAL_PREFIX):
        return
    row = conn.execute(_SUBSCRIPTION, {"id": subscription_id}).first()
    data = {
        "subscription_id": str(subscription_id),
        "consumer": row.consumer if row is not None else None,
        "reason": reason,
    }
    emit(conn, tenant_id, CIRCUIT_OPENED, data)


@_best_effort
def circuit_closed(
    conn: Session | Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID
) -> None:
    """Tell that a subscription's circuit closed: deliveries flow again."""
    row = conn.execute(_SUBSCRIPTION, {"id": subscription_id}).first()
    data = {
        "subscription_id": str(subscription_id),
        "consumer": row.consumer if row is not None else None,
    }
    emit(conn, tenant_id, CIRCUIT_CLOSED, data)


def _emit(
    conn: Session | Connection, events: Sequence[tuple[uuid.UUID, str, dict[str, Any]]]
) -> list[uuid.UUID]:
    if not events:
        return []
    listening = {
        (tenant_id, name)
        for tenant_id, name in conn.execute(
            _LISTENING,
            {
                "tenants": sorted({str(tenant_id) for tenant_id, _, _ in events}),
                "types": sorted({event_type for _, event_type, _ in events}),
            },
        )
    }
    by_tenant: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for tenant_id, event_type, data in events:
        assert event_type in TYPES, event_type
        if (tenant_id, event_type) not in listening:
            continue
        by_tenant.setdefault(tenant_id, []).append(
            {"id": str(uuid7()), "event_type": event_type, "payload": data, "channels": []}
        )
    now = datetime.now(UTC)
    ready: list[Item] = []
    created: list[uuid.UUID] = []
    # One transaction even on an autocommit connection: a fifo subscription's deliveries and
    # their lanes (services/lanes.py) are written together.
    with atomic(conn):
        for tenant_id, rows in by_tenant.items():
            stored = ingest.store(conn, tenant_id, rows, now)
            ready += stored.ready
            created += [r.delivery_id for r in stored.rows if r.delivery_id is not None]
    if by_tenant:
        metrics.EVENTS_INGESTED.inc(sum(len(rows) for rows in by_tenant.values()))
    if ready:
        _send_after_commit(conn, ready)
    return created


def _send_after_commit(conn: Session | Connection, ids: list[Item]) -> None:
    if isinstance(conn, Session):
        pending = conn.info.setdefault(_PENDING, [])
        if not pending and not conn.info.get(_PENDING + "_hooked"):
            conn.info[_PENDING + "_hooked"] = True
            event.listen(conn, "after_commit", _flush)
            event.listen(conn, "after_rollback", _forget)
        pending.extend(ids)
    elif committed(conn):
        _send(ids)
    else:
        # Committed later by the caller, when this module cannot see it: the watchdog sends
        # deliveries never dispatched.
        conn.execute(_UNDISPATCH, {"ids": [i.delivery_id for i in ids]})


def _flush(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint: the rows are not committed yet
    ids = list(session.info.get(_PENDING, []))
    session.info[_PENDING] = []
    if ids:
        _send(ids)


def _forget(session: Session) -> None:
    # A rolled back savepoint may leave IDs of rows that do not exist: sending them is harmless
    # (a task finds no row and stops), so only the whole transaction's rollback forgets them.
    if not session.in_nested_transaction():
        session.info[_PENDING] = []


def _send(ids: list[Item]) -> None:
    scheduling.submit(ids)
