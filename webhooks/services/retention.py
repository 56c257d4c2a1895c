"""Delete old events with their deliveries and attempts, in small batches."""

from __future__ import annotations

import logging

from sqlalchemy import text

from config import get_settings
from webhooks.db import affected, session_scope

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


def purge(days: int | None = None, batch: int = 500, max_batches: int = 1000) -> int:
    """Delete events older than `days` (default WEBHOOKS_RETENTION_DAYS); return how many."""
    days = get_settings().retention_days if days is None else days
    total = 0
    for _ in range(max_batches):
        with session_scope() as session:
            deleted = affected(session.execute(_PURGE, {"days": days, "batch": batch}))
        total += deleted
        if deleted < batch:
            break
    if total:
        log.info("retention purge", extra={"deleted_events": total, "days": days})
    return total
