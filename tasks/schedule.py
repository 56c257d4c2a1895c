"""Every periodic task, in one place."""

from __future__ import annotations

from typing import Any

from config import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Return beat's schedule; a run not started within its interval expires, so none pile up."""
    interval = settings.watchdog_interval
    return {
        "watchdog": {
            "task": "tasks.watchdog",
            "schedule": interval,
            "options": {"expires": max(interval, 1.0)},
        },
        "retention": {
            "task": "tasks.retention",
            "schedule": 3600.0,
            "options": {"expires": 3600.0},
        },
    }
