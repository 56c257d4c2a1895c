"""Worker process hooks: metrics server and scheduler pump in the main process, fresh
connections in children."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from multiprocessing.sharedctypes import RawValue
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from config import get_settings
from webhooks.metrics import BacklogCollector

log = logging.getLogger(__name__)

# How often the pump runs when nothing is due sooner; and how often a worker announces its
# slots (well inside webhooks.scheduler.WORKER_TTL_SECONDS).
PUMP_IDLE_SECONDS = 0.5
ANNOUNCE_SECONDS = 5.0

_pump_stop = threading.Event()
_pump_name: str | None = None
# Whether this worker sends task events now (Flower turns them on by remote control, in the
# main process): kept here by the main process's pump, read by its pool processes, which are
# forked after this module is imported and so share it. A delivery task reports the
# deliveries it goes on with to Flower only then (tasks/delivery.py).
_task_events = RawValue("b", 0)


def task_events_on() -> bool:
    return bool(_task_events.value)


def _follow_task_events(consumer: Any) -> None:
    events = getattr(consumer, "event_dispatcher", None)
    on = events is not None and events.enabled and (not events.groups or "task" in events.groups)
    _task_events.value = bool(on)


@worker_init.connect
def _serve_metrics(**_: object) -> Any:
    """Serve the samples of every pool process of this worker on WEBHOOKS_WORKER_METRICS_PORT,
    at WEBHOOKS_WORKER_METRICS_ADDRESS (loopback by default: they have no authentication)."""
    settings = get_settings()
    port, address = settings.worker_metrics_port, settings.worker_metrics_address
    if not port:
        return None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Without it each pool process would count only in its own memory, out of reach.
        log.warning(
            "worker metrics not served: start the worker with PROMETHEUS_MULTIPROC_DIR set, as "
            "the Procfile's worker line does (or set WEBHOOKS_WORKER_METRICS_PORT=0)"
        )
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(BacklogCollector())
    try:
        return start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        log.warning("worker metrics not served on %s:%s: %s", address, port, exc)
        return None


@worker_ready.connect
def _start_pump(sender: Any = None, **_: object) -> None:
    """Announce this worker's pool slots to the scheduler and keep its timers moving."""
    global _pump_name
    controller = getattr(sender, "controller", None)
    slots = int(getattr(controller, "concurrency", 0) or 1)
    _pump_name = str(getattr(sender, "hostname", None) or f"worker-{os.getpid()}")
    _pump_stop.clear()
    threading.Thread(
        target=_pump, args=(_pump_name, slots, sender), name="scheduler-pump", daemon=True
    ).start()


def _pump(name: str, slots: int, consumer: Any = None) -> None:
    from webhooks.runtime import get_scheduler
    from webhooks.services import scheduling

    announced = 0.0
    while not _pump_stop.is_set():
        wait = PUMP_IDLE_SECONDS
        try:
            _follow_task_events(consumer)
            if time.monotonic() - announced >= ANNOUNCE_SECONDS:
                get_scheduler().announce(name, slots)
                announced = time.monotonic()
            wake_at = scheduling.pump()
            if wake_at is not None:
                wait = min(wait, max(0.002, wake_at - time.time()))
        except Exception as exc:  # Redis down: try again shortly, never stop pumping
            log.warning("scheduler pump: %s", exc)
            wait = 1.0
        _pump_stop.wait(wait)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    """Make this pool process open its own database connections (never the parent's)."""
    from webhooks.db import get_engine

    get_engine()


@worker_shutdown.connect
def _shutdown(**_: object) -> None:
    _pump_stop.set()
    if _pump_name is not None:
        try:
            from webhooks.runtime import get_scheduler

            get_scheduler().withdraw(_pump_name)
        except Exception as exc:
            log.warning("scheduler: could not withdraw this worker: %s", exc)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if path and os.path.basename(path).startswith("celery-"):
        shutil.rmtree(path, ignore_errors=True)
