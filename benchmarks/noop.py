"""Tasks registered only in the bench worker (`celery worker -I benchmarks.noop`).

`benchmarks.noop` is the delivery ceiling: a task through the same broker, settings and pool
that does nothing. `benchmarks.echo` is the latency floor: one task hop, then one plain HTTP
POST to the receiver, with no database, circuit or signing.
"""

from __future__ import annotations

import json
from functools import lru_cache

import urllib3
from celery import shared_task


@shared_task(name="benchmarks.noop", ignore_result=True)
def noop(delivery_id: str) -> None:
    """Do nothing."""


@lru_cache(maxsize=1)
def _pool() -> urllib3.PoolManager:
    return urllib3.PoolManager(maxsize=4, retries=False, timeout=5)


@shared_task(name="benchmarks.echo", ignore_result=True)
def echo(url: str, sent_at: str) -> None:
    """POST a body carrying the send time, as a delivery would."""
    body = json.dumps({"data": {"t": float(sent_at)}}).encode()
    _pool().request("POST", url, body=body, headers={"content-type": "application/json"})
