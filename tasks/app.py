"""The Celery app of the workers and of beat."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from celery import Celery

from config import get_settings
from config.celery import celery_config
from tasks.broker import survive_broker_crash
from tasks.schedule import beat_schedule
from webhooks.logs import configure_logging

# A worker's pool processes write their metric samples to files in PROMETHEUS_MULTIPROC_DIR,
# which the main process serves together. prometheus_client picks its storage when it is first
# imported, and the celery command imports it before this module (Flower's plugin does), so
# the variable is set before celery starts: by the Procfile's worker line (and by whatever
# starts a worker in tests). Its folder is made here, before webhooks.metrics makes a metric.
if _metrics_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(_metrics_dir).mkdir(parents=True, exist_ok=True)

configure_logging()
# One JSON line per attempt is the service's own (webhooks.delivery, with its IDs and result):
# Celery's "Received task" and "Task ... succeeded" lines for every task repeat it, at a cost
# the worker's main process pays per task. Failures are still logged (at ERROR).
for _name in ("celery.app.trace", "celery.worker.strategy"):
    logging.getLogger(_name).setLevel(logging.WARNING)
survive_broker_crash()
settings = get_settings()  # fails fast, with a clear message, on a missing or bad setting
app = Celery("tasks", include=["tasks.delivery", "tasks.maintenance", "tasks.signals"])
app.conf.update(celery_config(settings))
app.conf.beat_schedule = beat_schedule(settings)
