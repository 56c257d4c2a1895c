"""The Redis client of this process (circuit state, rate limits), and script calls sent
together in one round trip."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from config import get_settings

T = TypeVar("T")


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    """Return a client with short timeouts: Redis holds only soft state, never worth a hang."""
    # redis-py makes a fresh connection pool in a forked child, so one client per process is safe.
    return redis.Redis.from_url(
        get_settings().redis_url,
        socket_connect_timeout=1,
        socket_timeout=2,
        health_check_interval=10,
    )


def as_text(value: Any) -> str:
    """A Redis answer (bytes or a number) as a str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def unix_time(now: float | None) -> str:
    """`now`, or else the current unix time, as a script argument that keeps every digit."""
    return repr(time.time() if now is None else now)


@dataclass(frozen=True)
class ScriptCall(Generic[T]):
    """One call of a Lua script, and how to read its answer."""

    script: Script
    keys: list[Any]
    args: list[Any]
    parse: Callable[[Any], T]

    def run(self) -> T:
        """Make the call on its own (loading the script if Redis does not have it)."""
        return self.parse(self.script(keys=self.keys, args=self.args))


def run_together(client: redis.Redis, calls: Sequence[ScriptCall[Any]]) -> list[Any]:
    """Make script calls in one round trip, in order; return each one's parsed answer, or the
    error (a redis.RedisError) it ended with. A lost connection raises, as a single call does.

    A pipeline without MULTI, of plain EVALSHAs: redis-py's pipeline would first ask whether
    each script exists (one more round trip every time). A call that finds its script missing
    (Redis restarted) had no effect, so it alone is made again, loading the script.
    """
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
    answers = pipe.execute(raise_on_error=False)
    results: list[Any] = []
    for call, answer in zip(calls, answers, strict=True):
        try:
            if isinstance(answer, NoScriptError):
                results.append(call.run())
            elif isinstance(answer, Exception):
                results.append(answer)
            else:
                results.append(call.parse(answer))
        except redis.RedisError as exc:
            results.append(exc)
    return results
