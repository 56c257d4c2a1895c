"""Worker process hooks: metrics server in the main process, fresh connections in children."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_shutdown
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from config import get_settings
from webhooks.metrics import BacklogCollector

log = logging.getLogger(__name__)


@worker_init.connect
def _serve_metrics(**_: object) -> Any:
    """Serve the samples of every pool process of this worker on WEBHOOKS_WORKER_METRICS_PORT,
    at WEBHOOKS_WORKER_METRICS_ADDRESS (loopback by default: they have no authentication)."""
    settings = get_settings()
    port, address = settings.worker_metrics_port, settings.worker_metrics_address
    if not port:
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(BacklogCollector())
    try:
        return start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        log.warning("worker metrics not served on %s:%s: %s", address, port, exc)
        return None


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    """Make this pool process open its own database connections (never the parent's)."""
    from webhooks.db import get_engine

    get_engine()


@worker_shutdown.connect
def _drop_metric_files(**_: object) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if path and os.path.basename(path).startswith("celery-"):
        shutil.rmtree(path, ignore_errors=True)
