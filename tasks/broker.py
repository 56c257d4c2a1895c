"""A workaround in kombu's Redis transport, so that a Redis crash never stops a worker."""

from __future__ import annotations

from typing import Any


def survive_broker_crash() -> None:
    """Make a channel of an already torn-down connection fail with a connection error.

    When Redis dies while a worker waits for messages and holds unacknowledged ones (retry
    countdowns), Celery first collects the broken connection, which drops the transport's
    client, and then closes it; closing its channel tries to put those messages back into
    Redis, and kombu's `AttributeError` (no client to read the address from) escapes Celery's
    `ignore_errors` as an "Unrecoverable error" that shuts the worker down (kombu 5.7.0).
    Raised as a connection error, the close is ignored as Celery intends and the worker
    reconnects. The messages need no restoring: the watchdog re-sends their deliveries from
    PostgreSQL, and an empty Redis has lost them anyway.

    Upstream: the same `AttributeError` from `_connparams` on a torn-down connection is
    celery/kombu#582 (closed without a fix for this path; still there in the pinned 5.7.0).
    tests/integration/test_broker_guard.py fails once the pinned kombu copes by itself: then
    delete this module and its call in tasks/app.py.
    """
    from kombu.transport import redis as transport
    from redis.exceptions import ConnectionError as RedisConnectionError

    original = transport.Channel._connparams
    if getattr(original, "_webhooks_guard", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is already closed")
        return original(self, asynchronous=asynchronous)

    _connparams._webhooks_guard = True  # type: ignore[attr-defined]
    _connparams.__wrapped__ = original  # type: ignore[attr-defined]
    transport.Channel._connparams = _connparams  # type: ignore[method-assign]
