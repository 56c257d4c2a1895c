"""The Celery app of the workers and of beat."""

from __future__ import annotations

import os

from config import VAR_DIR

# prometheus_client picks its storage when first imported: in a worker every pool process
# writes its samples to files in this folder, which the main process serves together.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _dir = VAR_DIR / "metrics" / f"celery-{os.getpid()}"
    _dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_dir)

# The celery command loads Flower's plugin, which imports prometheus_client before this module
# runs: switch its value storage to files now, before webhooks.metrics makes any metric.
import prometheus_client.metrics
import prometheus_client.values

prometheus_client.values.ValueClass = prometheus_client.values.get_value_class()
prometheus_client.metrics.ValueClass = prometheus_client.values.ValueClass  # type: ignore[attr-defined]

from celery import Celery  # noqa: E402

from config import get_settings  # noqa: E402
from config.celery import celery_config  # noqa: E402
from tasks.broker import survive_broker_crash  # noqa: E402
from tasks.schedule import beat_schedule  # noqa: E402
from webhooks.logs import configure_logging  # noqa: E402

configure_logging()
survive_broker_crash()
settings = get_settings()  # fails fast, with a clear message, on a missing or bad setting
app = Celery("tasks", include=["tasks.delivery", "tasks.maintenance", "tasks.signals"])
app.conf.update(celery_config(settings))
app.conf.beat_schedule = beat_schedule(settings)
