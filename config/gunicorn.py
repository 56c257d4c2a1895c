"""gunicorn settings for the `web` process (all from the environment)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "4"))
keepalive = 5
timeout = 30
graceful_timeout = 10
accesslog = None  # the app logs one JSON line per request itself

# Each gunicorn worker writes its metric samples to files here; /metrics sums them all.
# Set before any worker imports prometheus_client, and emptied at every start.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _var = Path(os.environ.get("WEBHOOKS_VAR_DIR", Path(__file__).resolve().parent.parent / "var"))
    _dir = _var / "metrics" / f"web-{os.getpid()}"
    shutil.rmtree(_dir, ignore_errors=True)
    _dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_dir)


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    shutil.rmtree(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""), ignore_errors=True)
