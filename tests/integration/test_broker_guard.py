"""The kombu workaround in tasks/broker.py: what it does, and whether the pinned kombu still
needs it."""

from __future__ import annotations

import pytest
from kombu import Connection
from kombu.transport import redis as transport
from redis.exceptions import ConnectionError as RedisConnectionError

from tasks.broker import survive_broker_crash
from tests.conftest import Servers


def _torn_down_channel(redis_url: str) -> transport.Channel:
    """A consumer's channel as Celery leaves it after Redis died: its pools dropped, and its
    transport without a client (the last step of the connection's `collect`)."""
    connection = Connection(redis_url)
    channel = connection.channel()
    channel._disconnect_pools()  # kombu's own step when the server goes away
    connection._do_close_transport()
    return channel


def test_a_torn_down_channel_fails_with_a_connection_error_celery_ignores(
    servers: Servers,
) -> None:
    survive_broker_crash()
    channel = _torn_down_channel(servers.redis_url)
    with pytest.raises(RedisConnectionError):
        channel._create_client()  # what closing it with unacknowledged messages does first


def test_the_pinned_kombu_still_needs_the_guard(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When this fails, kombu copes with a torn-down channel by itself (celery/kombu#582 is
    fixed on this path): delete tasks/broker.py and its call in tasks/app.py."""
    survive_broker_crash()
    monkeypatch.setattr(transport.Channel, "_connparams", transport.Channel._connparams.__wrapped__)
    channel = _torn_down_channel(servers.redis_url)
    # kombu alone: an AttributeError, which escapes Celery's ignore_errors and stops the worker.
    with pytest.raises(AttributeError):
        channel._create_client()
