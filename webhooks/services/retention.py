"""Delete old events with their deliveries and attempts, in small batches."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text

from config import get_settings
from webhooks.db import affected, session_scope
from webhooks.services.lanes import OPEN_STATUSES

log = logging.getLogger("webhooks.retention")

# Small batches, each its own transaction: locks stay short and ingest never waits on them.
_PURGE = text(
    """
DELETE FROM events WHERE id IN (
  SELECT e.id FROM events e
   WHERE e.created_at < now() - make_interval(days => :days)
     AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.event_id = e.id
                        AND d.status IN ('pending', 'in_flight', 'retrying'))
   ORDER BY e.created_at LIMIT :batch
   FOR UPDATE SKIP LOCKED)
"""
)


# Lanes (fifo subscriptions' ordering keys) that numbered nothing for the period and have no
# unfinished delivery. One that an ingest is numbering is locked by it (skipped), and one it
# numbered since the selection no longer matches its updated_at (re-checked on the locked row).
# A finished delivery of a removed lane, replayed later, goes out unordered (recovery._restart).
_PURGE_LANES = text(
    f"""
DELETE FROM lanes WHERE id IN (
  SELECT l.id FROM lanes l
   WHERE l.updated_at < now() - make_interval(days => :days)
     AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.lane_id = l.id AND d.status IN {OPEN_STATUSES})
   ORDER BY l.updated_at LIMIT :batch
   FOR UPDATE SKIP LOCKED)
"""  # noqa: S608 (status names from the enums, no input)
)


def purge(days: int | None = None, batch: int = 500, max_batches: int = 1000) -> int:
    """Delete events older than `days` (default WEBHOOKS_RETENTION_DAYS), then the lanes idle
    as long; return how many events."""
    days = get_settings().retention_days if days is None else days
    total = _in_batches(_PURGE, days, batch, max_batches)
    lanes = _in_batches(_PURGE_LANES, days, batch, max_batches)
    if total or lanes:
        log.info(
            "retention purge", extra={"deleted_events": total, "deleted_lanes": lanes, "days": days}
        )
    return total


def _in_batches(statement: Any, days: int, batch: int, max_batches: int) -> int:
    total = 0
    for _ in range(max_batches):
        with session_scope() as session:
            deleted = affected(session.execute(statement, {"days": days, "batch": batch}))
        total += deleted
        if deleted < batch:
            break
    return total
