"""Ordered lanes: a fifo subscription's deliveries with one ordering key go out one at a time,
in the order their ingest transactions committed.

PostgreSQL alone keeps the order, so that nothing Redis loses or repeats can break it:

- Each (subscription, ordering key) is a row of `lanes`. Ingest upserts it, which numbers the
  new deliveries (`lane_seq`) and holds the row's lock until the ingest commits. A later ingest
  of the same key waits for that commit before it numbers its own: sequence order is commit
  order. Within a batch it is the batch's order. Lanes are locked in (subscription, key) order
  everywhere, so two batches never deadlock.
- A lane's unfinished deliveries wait with no due time (`next_attempt_at` NULL), except one:
  the lane's *holder*. Only a row with a due time can be claimed, handed to the scheduler or
  found by the watchdog, so only the holder is ever attempted. It keeps the lane while it waits
  for a retry, is parked behind an open circuit, or is in flight after a crash (its lease).
- `advance` makes the lowest-numbered unfinished delivery of a lane its holder when the lane has
  none. It runs in the same transaction as whatever ended the holder (a delivery, an exhausted
  failure, the watchdog's lease expiry) or created the lane's work (ingest, retry, replay), after
  taking the lane's lock. Its statement runs after the lock is granted, so it sees every ingest
  that numbered the lane before: no delivery is left waiting behind a holder that has ended.

A replay or a manual retry gives finished deliveries back to their lanes, without a due time:
they go out lowest number first once the lane's holder ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webhooks.models import DeliveryStatus
from webhooks.models.lane import NO_KEY
from webhooks.scheduler import Item

S = DeliveryStatus
OPEN_STATUSES = f"('{S.PENDING}', '{S.RETRYING}', '{S.IN_FLIGHT}')"

# Number new deliveries in their lanes: one upsert per lane, in lock order, then the rows.
_ASSIGN = text(
    f"""
WITH d AS (
  SELECT x.id, x.sub, x.key, x.ord
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(id uuid, sub uuid, key varchar, ord int)
), counts AS (
  SELECT sub, key, count(*) AS n FROM d GROUP BY sub, key
), up AS (
  INSERT INTO lanes (subscription_id, ordering_key, last_seq)
  SELECT sub, key, n FROM counts ORDER BY sub, key
      ON CONFLICT ON CONSTRAINT uq_lanes_subscription_key
      DO UPDATE SET last_seq = lanes.last_seq + EXCLUDED.last_seq, updated_at = now()
  RETURNING id, subscription_id, ordering_key, last_seq
), numbered AS (
  SELECT d.id, up.id AS lane_id,
         up.last_seq - c.n + row_number() OVER (PARTITION BY d.sub, d.key ORDER BY d.ord)
           AS lane_seq
    FROM d
    JOIN counts c ON c.sub = d.sub AND c.key = d.key
    JOIN up ON up.subscription_id = d.sub AND up.ordering_key = d.key
)
UPDATE deliveries SET lane_id = numbered.lane_id, lane_seq = numbered.lane_seq
  FROM numbered
 WHERE deliveries.id = numbered.id AND deliveries.status = '{S.PENDING}'
RETURNING deliveries.lane_id
"""  # noqa: S608 (status names from the enums, no input)
)

_LOCK = text(
    "SELECT id FROM lanes WHERE id = ANY(CAST(:lanes AS bigint[]))"
    " ORDER BY subscription_id, ordering_key FOR UPDATE"
)

# Give each lane without a holder its lowest-numbered unfinished delivery as holder.
_PROMOTE = text(
    f"""
UPDATE deliveries d
   SET next_attempt_at = now(), dispatched_at = now(), updated_at = now()
  FROM lanes l
  JOIN subscriptions s ON s.id = l.subscription_id
  CROSS JOIN LATERAL (
    SELECT o.id FROM deliveries o
     WHERE o.lane_id = l.id AND o.status IN {OPEN_STATUSES}
     ORDER BY o.lane_seq LIMIT 1) head
 WHERE l.id = ANY(CAST(:lanes AS bigint[]))
   AND d.id = head.id AND d.next_attempt_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM deliveries h
                    WHERE h.subscription_id = l.subscription_id AND h.lane_id = l.id
                      AND h.next_attempt_at IS NOT NULL AND h.status IN {OPEN_STATUSES})
RETURNING d.id, d.subscription_id, d.tenant_id, s.max_in_flight, s.rate_limit
"""  # noqa: S608 (status names from the enums, no input)
)

# A subscription that stops being fifo: its waiting deliveries leave their lanes, due now, and
# the watchdog hands them over (dispatched_at NULL) in its batches.
_RELEASE = text(
    f"""
UPDATE deliveries
   SET lane_id = NULL,
       dispatched_at = CASE WHEN next_attempt_at IS NULL THEN NULL ELSE dispatched_at END,
       next_attempt_at = coalesce(next_attempt_at, now()), updated_at = now()
 WHERE subscription_id = :subscription_id AND lane_id IS NOT NULL AND status IN {OPEN_STATUSES}
"""  # noqa: S608 (status names from the enums, no input)
)

# Lanes held by a delivery that waits for a retry (or behind an open circuit after failing),
# and since when the oldest of them has been failing.
_BLOCKED = text(
    f"""
SELECT count(*) AS lanes, min(first.created_at) AS since
  FROM deliveries d
  LEFT JOIN LATERAL (SELECT a.created_at FROM attempts a
                      WHERE a.delivery_id = d.id ORDER BY a.number LIMIT 1) first ON true
 WHERE d.subscription_id = :subscription_id AND d.lane_id IS NOT NULL
   AND d.next_attempt_at IS NOT NULL AND d.failures > 0
   AND d.status IN ('{S.RETRYING}', '{S.IN_FLIGHT}')
"""  # noqa: S608 (status names from the enums, no input)
)


def assign(
    db: Session | Connection, deliveries: Sequence[tuple[Any, Any, str | None, int]]
) -> list[int]:
    """Number new fifo deliveries in their lanes, in the caller's transaction; return the lanes.

    Each is (delivery_id, subscription_id, ordering_key or None, order in the batch). The lanes
    stay locked until the caller commits, and must be advanced before it does.
    """
    if not deliveries:
        return []
    rows = [
        {"id": str(d), "sub": str(s), "key": NO_KEY if key is None else key, "ord": order}
        for d, s, key, order in deliveries
    ]
    result = db.execute(_ASSIGN, {"rows": json.dumps(rows, ensure_ascii=False)})
    return sorted({lane for (lane,) in result})


def advance(db: Session | Connection, lane_ids: Sequence[int]) -> list[Item]:
    """Give each of these lanes a holder if it has none, in the caller's transaction; return
    the new holders, for the scheduler once the caller has committed."""
    lanes = sorted({int(lane) for lane in lane_ids})
    if not lanes:
        return []
    db.execute(_LOCK, {"lanes": lanes})
    return [
        Item(str(r.id), str(r.subscription_id), str(r.tenant_id), r.max_in_flight, r.rate_limit)
        for r in db.execute(_PROMOTE, {"lanes": lanes})
    ]


def release(db: Session | Connection, subscription_id: uuid.UUID) -> None:
    """Take a subscription's unfinished deliveries out of their lanes (it is no longer fifo)."""
    db.execute(_RELEASE, {"subscription_id": subscription_id})


def blocked(db: Session | Connection, subscription_id: uuid.UUID) -> dict[str, Any]:
    """How many of a subscription's lanes are held by a delivery that has failed, waiting for
    its retry or being retried (so a blocked lane does not drop out of the count during each
    of its attempts), and since when."""
    row = db.execute(_BLOCKED, {"subscription_id": subscription_id}).one()
    return {"blocked_lanes": int(row.lanes), "oldest_blocked_since": row.since}
