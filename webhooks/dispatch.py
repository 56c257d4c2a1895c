"""Send delivery tasks by name, after the transaction that made them has committed.

The API never imports tasks/. If Redis is down the send fails fast and is skipped: the rows are
already in PostgreSQL, and the watchdog sends them once the broker is back.

Messages are built by Celery (`as_task_v2`, protocol 2) once per task name, as a template
wrapped as kombu's Redis transport stores it; each message fills in its IDs and body. They are
pushed with one LPUSH per batch. `app.send_task` did the same per message at about 175 us each
(routing, option merging, a kombu publish, a Redis client): most of a 500-event batch request
(see docs/performance.md). The scheduler's Lua pushes the tasks it picks from the same
template (webhooks.scheduler), without a round trip back to Python.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from celery import Celery

from config import get_settings
from config.celery import celery_config

log = logging.getLogger(__name__)

DELIVER_TASK = "tasks.deliver"
RELEASE_TASK = "tasks.release_parked"
# After a failed send, skip the broker this long instead of making every request wait on it.
_BACKOFF_SECONDS = 2.0
_broker_down_until = 0.0


@lru_cache(maxsize=1)
def _producer_app() -> Celery:
    app = Celery("webhooks-producer")
    app.conf.update(celery_config(get_settings()))
    return app


@lru_cache(maxsize=4)
def _broker(url: str) -> redis.Redis:
    """The broker's Redis, for pushing messages (redis-py makes a new pool after a fork)."""
    # No retry of its own: a failed send is left to the watchdog, which sends it again.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)


@lru_cache(maxsize=16)
def _route(task: str) -> tuple[str, dict[str, str]]:
    """Return the queue Celery routes `task` to, and the message's delivery_info."""
    queue = _producer_app().amqp.router.route({}, task)["queue"]
    # As Celery sends it: the default exchange, which routes by the queue's name.
    return queue.name, {"exchange": "", "routing_key": queue.name}


# What a task's argument may be (an ID): it needs no escaping in JSON or in Python's repr.
_PLAIN = re.compile(r"[A-Za-z0-9_.:-]+")
# Placeholders in a message template (no JSON escaping touches them).
TASK_ID, DELIVERY_TAG, BODY, ARG = "@@TASK@@", "@@TAG@@", "@@BODY@@", "@@ARG@@"
CIRCUIT = "@@CIRCUIT@@"
# A header of our own, which the task reads as `self.request.webhooks_circuit`: "closed" when
# the scheduler saw the subscription's circuit closed with no failure since its last success
# as it picked the delivery (webhooks.scheduler); empty when nobody looked.
CIRCUIT_HEADER = "webhooks_circuit"


@dataclass(frozen=True)
class Template:
    """A task's message as kombu's Redis transport stores it, with placeholders for what
    differs between two messages: the task ID, the delivery tag, the body (base64 of
    `body_prefix + argument + body_suffix`) and the circuit header. The scheduler's Lua fills
    in the same template (webhooks.scheduler), so a message is built in one place, by Celery
    itself."""

    queue: str
    text: str
    body_prefix: str
    body_suffix: str

    def script_args(self) -> list[str]:
        """What the scheduler's Lua needs to fill it in: the queue, the template, the body's
        prefix and suffix, and their base64 (webhooks.scheduler `push_tasks`)."""
        prefix, suffix = self.body_prefix, self.body_suffix
        return [self.queue, self.text, prefix, suffix, _b64(prefix), _b64(suffix)]

    def render(self, arg: str, circuit: str = "") -> str:
        if not _PLAIN.fullmatch(arg):  # it goes into JSON and a repr() unescaped
            raise ValueError(f"not a plain task argument: {arg!r}")
        body = _b64(f"{self.body_prefix}{arg}{self.body_suffix}")
        return (
            self.text.replace(ARG, arg)
            .replace(CIRCUIT, circuit)
            .replace(TASK_ID, str(uuid.uuid4()))
            .replace(DELIVERY_TAG, str(uuid.uuid4()))
            .replace(BODY, body)
        )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@lru_cache(maxsize=16)
def template(task: str) -> Template:
    """The message template of `task` (one argument, a string), built by Celery."""
    app = _producer_app()
    queue, delivery_info = _route(task)
    args = [ARG]
    message: Any = app.amqp.as_task_v2(
        TASK_ID,
        task,
        args=args,
        kwargs={},
        argsrepr=repr(args),
        kwargsrepr="{}",
        reply_to=app.thread_oid,
        ignore_result=None,  # the task's own setting decides, as with send_task
    )
    body_prefix, body_suffix = json.dumps(message.body).split(ARG)
    properties = {
        **message.properties,
        "delivery_mode": 2,
        "delivery_info": delivery_info,
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": DELIVERY_TAG,
    }
    text = json.dumps(
        {
            "body": BODY,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**message.headers, CIRCUIT_HEADER: CIRCUIT},
            "properties": properties,
        }
    )
    return Template(queue, text, body_prefix, body_suffix)


def send(task: str, ids: Iterable[uuid.UUID | str]) -> bool:
    """Send one task per ID; return False (and log) if the broker could not take them all."""
    global _broker_down_until
    args = [str(i) for i in ids]
    if not args:
        return True
    if time.monotonic() < _broker_down_until:
        return False
    try:
        message = template(task)
        queue = message.queue
        messages = [message.render(i) for i in args]
        # LPUSH of many values: the first one given is the first one a worker takes (BRPOP).
        for start in range(0, len(messages), 1000):
            _broker(get_settings().redis_url).lpush(queue, *messages[start : start + 1000])
    except Exception as exc:  # any broker failure: the watchdog re-sends from PostgreSQL
        _broker_down_until = time.monotonic() + _BACKOFF_SECONDS
        log.warning("broker unavailable, %d task(s) left to the watchdog: %s", len(args), exc)
        return False
    return True


def reset() -> None:
    """Forget the producer and the broker's back-off (tests change the settings)."""
    global _broker_down_until
    _producer_app.cache_clear()
    _broker.cache_clear()
    _route.cache_clear()
    template.cache_clear()
    _broker_down_until = 0.0


def enqueue_deliveries(ids: Iterable[uuid.UUID | str]) -> bool:
    """Send a delivery task for each delivery ID."""
    return send(DELIVER_TASK, ids)
