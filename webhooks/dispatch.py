"""Send delivery tasks by name, after the transaction that made them has committed.

The API never imports tasks/. If Redis is down the send fails fast and is skipped: the rows are
already in PostgreSQL, and the watchdog sends them once the broker is back.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from functools import lru_cache

from celery import Celery

from config import get_settings
from config.celery import celery_config

log = logging.getLogger(__name__)

DELIVER_TASK = "tasks.deliver"
RELEASE_TASK = "tasks.release_parked"
# After a failed send, skip the broker this long instead of making every request wait on it.
_BACKOFF_SECONDS = 2.0
_broker_down_until = 0.0


@lru_cache(maxsize=1)
def _producer_app() -> Celery:
    app = Celery("webhooks-producer")
    conf = celery_config(get_settings())
    # Sends here never retry (a failed send is left to the watchdog), and a connection that
    # retries no command by itself lets kombu pipeline a batch of sends into one round trip.
    conf["broker_transport_options"] = {
        **conf["broker_transport_options"],
        "retry_on_timeout": False,
    }
    app.conf.update(conf)
    return app


def send(task: str, ids: Iterable[uuid.UUID | str]) -> bool:
    """Send one task per ID; return False (and log) if the broker could not take them all."""
    global _broker_down_until
    ids = [str(i) for i in ids]
    if not ids:
        return True
    if time.monotonic() < _broker_down_until:
        return False
    app = _producer_app()
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            for delivery_id in ids:
                app.send_task(task, args=[delivery_id], producer=producer, retry=False)
    except Exception as exc:  # any broker failure: the watchdog re-sends from PostgreSQL
        _broker_down_until = time.monotonic() + _BACKOFF_SECONDS
        log.warning("broker unavailable, %d task(s) left to the watchdog: %s", len(ids), exc)
        return False
    return True


def enqueue_deliveries(ids: Iterable[uuid.UUID | str]) -> bool:
    """Send a delivery task for each delivery ID."""
    return send(DELIVER_TASK, ids)
