"""Calls that may hang made without holding the caller: a PostgreSQL that stopped answering
(frozen, partitioned) answers no query, and a socket read has no timeout of its own there.

A `SingleFlight` runs its call in a thread of its own, one at a time per process: callers that
come while it runs wait for that same call, each at most its timeout, and then go on without
it. So a readiness probe or a metrics scrape answers within its timeout whatever the database
does, and a hung database holds one thread per check and process, not every request thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._running: tuple[int, Future[T]] | None = None

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Return what `fn` returns (a run already under way, or a new one); raise
        TimeoutError if it has not finished within `timeout` (it goes on in its thread)."""
        with self._lock:
            running = self._running
            # A run of the parent process (before a fork) never ends in this one.
            if running is None or running[0] != os.getpid() or running[1].done():
                future: Future[T] = Future()
                running = (os.getpid(), future)
                self._running = running
                threading.Thread(
                    target=_run, args=(fn, future), name=self.name, daemon=True
                ).start()
        return running[1].result(timeout=timeout)


def _run(fn: Callable[[], T], future: Future[T]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:  # handed to every caller
        future.set_exception(exc)
