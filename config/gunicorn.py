"""gunicorn settings for the `web` process (all from the environment)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from config import VAR_DIR, Reader

_read = Reader()
_host = _read.text("HOST", "0.0.0.0")  # noqa: S104 - a container's port is published on purpose
_port = _read.whole("PORT", 8000, minimum=1, maximum=65535)
workers = _read.whole("WEB_CONCURRENCY", 2, minimum=1)
# 8 threads: single events of one process are committed in groups (services/group_commit.py),
# and the more requests a process holds at once, the more each COMMIT serves. Measured with
# `benchmarks.run --only ingest`: 4 threads 534 req/s, 8 threads 666 req/s (docs/performance.md).
threads = _read.whole("WEB_THREADS", 8, minimum=1)
_read.check()
bind = f"{_host}:{_port}"
worker_class = "gthread"
keepalive = 5
timeout = 30
graceful_timeout = 10
accesslog = None  # the app logs one JSON line per request itself

# Each gunicorn worker writes its metric samples to files here; /metrics sums them all.
# Set before any worker imports prometheus_client, and emptied at every start.
# A folder the operator set is theirs: made if missing, emptied of old samples, never removed
# (a second start would find it gone).
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(VAR_DIR / "metrics" / f"web-{os.getpid()}")
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
shutil.rmtree(_metrics_dir, ignore_errors=True)
_metrics_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
