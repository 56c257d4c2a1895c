"""Flower, started as the Procfile does, sees a real worker and asks for credentials."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from scripts.embedded import free_port
from tests.support import VENV_BIN, Process, answers, wait_until

AUTH = ("ops", "s3cret-pw")


@pytest.fixture
def flower(process_env: Any, tmp_path: Any) -> Iterator[str]:
    port = free_port()
    proc = Process(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "tasks",
            "flower",
            f"--port={port}",
            f"--basic-auth={AUTH[0]}:{AUTH[1]}",
        ],
        process_env(),
        tmp_path / "flower.log",
        ready=None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url), 60, interval=0.2, message="flower listening")
        yield url
    finally:
        proc.stop()


def test_flower_shows_the_running_worker_through_its_api(flower, start_worker):
    start_worker(concurrency=2, name="flowered")
    name = f"flowered@{socket.gethostname()}"

    def listed() -> dict[str, Any] | None:
        resp = requests.get(f"{flower}/api/workers?refresh=1", auth=AUTH, timeout=20)
        assert resp.status_code == 200, resp.text
        return resp.json().get(name)

    info = wait_until(listed, 40, interval=1, message=f"{name} in Flower's /api/workers")
    queues = {q["name"] for q in info["active_queues"]}
    assert queues == {"webhooks", "control"}
    registered = set(info["registered"])
    assert {"tasks.deliver", "tasks.watchdog", "tasks.retention"} <= registered
    assert info["stats"]["pool"]["max-concurrency"] == 2


def test_flower_asks_for_the_credentials_except_on_metrics(flower):
    for path in ("/", "/api/workers", "/api/tasks"):
        assert requests.get(f"{flower}{path}", timeout=10).status_code == 401, path
        wrong = requests.get(f"{flower}{path}", auth=(AUTH[0], "nope"), timeout=10)
        assert wrong.status_code == 401, path
    assert requests.get(f"{flower}/", auth=AUTH, timeout=10).status_code == 200

    # Flower exempts /metrics from basic auth (ops/prometheus.yml scrapes it that way).
    metrics = requests.get(f"{flower}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "# TYPE flower_events_total counter" in metrics.text
