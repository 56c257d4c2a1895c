"""Subscribers that answer in ways a careless sender would choke on. (A binary body and an
odd Retry-After are in test_attempts_and_watchdog.py: the worker adds nothing there.)"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from scripts.harness import wait_until
from tests.integration.conftest import publish, subscribe
from tests.support import Listener, delivery


class TricklingServer(Listener):
    """Answers a status line, then one header line every 0.05 s and never finishes (often
    enough that it sees a hang-up within 0.1 s, well before the retry 0.5 s later)."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self.open = 0
        self.max_open = 0
        self.connections = 0
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.open += 1
            self.connections += 1
            self.max_open = max(self.max_open, self.open)
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while time.monotonic() < self.until:
                conn.sendall(b"x-slow: 1\r\n")
                time.sleep(0.05)
        except OSError:
            pass  # the sender hung up: what a deadline looks like from here
        finally:
            conn.close()
            with self._lock:
                self.open -= 1


@pytest.mark.timing
def test_trickling_subscriber_is_cut_at_the_deadline_as_a_timeout_and_the_breaker_counts_it(
    client, tenant, start_worker
):
    server = TricklingServer(seconds=30)
    try:
        sub = subscribe(client, tenant, f"http://127.0.0.1:{server.port}/trickle")
        # Timeouts that bound each socket read only would never trip on a header line every
        # 0.05 s. The client's own deadline ends each attempt at 1 s, well inside its lease, so no
        # attempt is lost to the lease and none runs twice at once.
        start_worker(
            concurrency=2, WEBHOOKS_HTTP_TIMEOUT_SECONDS=1, WEBHOOKS_LEASE_MARGIN_SECONDS=2
        )
        event = publish(client, tenant, "order.created", {"n": 1}).get_json()

        detail = wait_until(
            lambda: (d := delivery(client, tenant, event["id"]))["status"] == "failed" and d,
            timeout=40,
            message="every attempt cut at the deadline, then the delivery failed",
        )
        attempts = detail["attempts"]
        assert len(attempts) == 3  # FAST_ENV: two retries
        for attempt in attempts:
            assert attempt["result"] == "timeout", attempt
            assert 1000 <= attempt["duration_ms"] < 1800, attempt
        assert server.max_open == 1
        health = client.get(f"/v1/subscriptions/{sub['id']}/health", headers=tenant["headers"])
        assert health.get_json()["circuit"]["consecutive_failures"] == 3
    finally:
        server.close()
