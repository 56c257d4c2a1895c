"""The API's /metrics endpoint: prometheus-flask-exporter, multiprocess-safe under gunicorn.

The metrics themselves (shared by web and worker) are defined in webhooks/metrics.py.
"""

from __future__ import annotations

import os

from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from webhooks.metrics import BacklogCollector

_backlog_registered = False


class MultiprocessMetrics(GunicornInternalPrometheusMetrics):
    """Sum the samples every gunicorn worker wrote, and add the backlog gauges."""

    def generate_metrics(
        self, accept_header: str | None = None, names: list[str] | None = None
    ) -> tuple[str, str]:
        # The exporter builds a fresh registry per scrape in multiprocess mode, holding only the
        # files' samples: the backlog gauges, read at scrape time, must be added to it.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(BacklogCollector())
        target = registry.restricted_registry(names) if names else registry
        generate_latest, content_type = choose_encoder(accept_header or "")
        return generate_latest(target).decode("utf-8"), content_type


def expose_metrics(app: Flask) -> None:
    """Expose /metrics: per-request metrics plus the webhooks_* metrics of this process group."""
    global _backlog_registered
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Under gunicorn every worker writes samples to files; /metrics sums them all.
        MultiprocessMetrics(app, group_by="url_rule")
        return
    PrometheusMetrics(app, group_by="url_rule")
    if not _backlog_registered:  # the default registry outlives apps made in tests
        REGISTRY.register(BacklogCollector())
        _backlog_registered = True
