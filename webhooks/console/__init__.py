"""The operator console at /console: server-rendered pages over the same services as the API."""

from webhooks.console.views import bp

__all__ = ["bp"]
