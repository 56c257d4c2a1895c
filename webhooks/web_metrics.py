"""The API's /metrics: prometheus-flask-exporter, multiprocess-safe under gunicorn."""

from __future__ import annotations

import os

from flask import Flask
from prometheus_client import REGISTRY

from webhooks.metrics import BacklogCollector

_backlog_registered = False


def init_metrics(app: Flask) -> None:
    """Expose /metrics: per-request metrics plus the webhooks_* metrics of this process group."""
    global _backlog_registered
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Under gunicorn every worker writes samples to files; /metrics sums them all.
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        metrics = GunicornInternalPrometheusMetrics(app, group_by="url_rule")
        registry = metrics.registry
    else:
        from prometheus_flask_exporter import PrometheusMetrics

        metrics = PrometheusMetrics(app, group_by="url_rule")
        registry = REGISTRY
    if registry is None:
        registry = REGISTRY
    if not _backlog_registered or registry is not REGISTRY:
        registry.register(BacklogCollector())
        _backlog_registered = registry is REGISTRY or _backlog_registered
