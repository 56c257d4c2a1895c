"""The Celery side: `celery -A tasks worker|beat|flower`."""

from tasks.app import app

__all__ = ["app"]
