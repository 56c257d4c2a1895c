"""gunicorn settings for the `web` process (all from the environment)."""

from __future__ import annotations

import os
import shutil

from config import VAR_DIR, Reader

_read = Reader()
_host = _read.text("HOST", "0.0.0.0")  # noqa: S104 - a container's port is published on purpose
_port = _read.whole("PORT", 8000, minimum=1)
workers = _read.whole("WEB_CONCURRENCY", 2, minimum=1)
threads = _read.whole("WEB_THREADS", 4, minimum=1)
_read.check()
bind = f"{_host}:{_port}"
worker_class = "gthread"
keepalive = 5
timeout = 30
graceful_timeout = 10
accesslog = None  # the app logs one JSON line per request itself

# Each gunicorn worker writes its metric samples to files here; /metrics sums them all.
# Set before any worker imports prometheus_client, and emptied at every start.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _dir = VAR_DIR / "metrics" / f"web-{os.getpid()}"
    shutil.rmtree(_dir, ignore_errors=True)
    _dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_dir)


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    shutil.rmtree(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""), ignore_errors=True)
