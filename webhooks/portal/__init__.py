"""The consumer portal at /portal/<link token>/: one consumer manages its own endpoints."""

from webhooks.portal.views import bp

__all__ = ["bp"]
