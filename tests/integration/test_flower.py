"""Flower, started as the Procfile does, sees a real worker and asks for credentials."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests

from scripts.embedded import free_port
from scripts.harness import BIN, Process, http_status, procfile_line, wait_until
from tests.integration.conftest import publish, subscribe
from tests.support import delivery_ids

AUTH = ("ops", "s3cret-pw")


def start_flower(process_env: Any, tmp_path: Any, **env: str) -> tuple[Process, str]:
    """Start Flower with the Procfile's own command line, as honcho would (through sh)."""
    port = free_port()
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # make run puts it first too
    proc = Process(
        ["sh", "-c", "exec " + procfile_line("flower")],
        process_env(FLOWER_PORT=port, PATH=path, **env),
        tmp_path / "flower.log",
        ready=None,
    )
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def flower(process_env: Any, tmp_path: Any) -> Iterator[str]:
    # Production: the credentials are required, and come from the environment.
    proc, url = start_flower(
        process_env, tmp_path, WEBHOOKS_ENV="production", FLOWER_BASIC_AUTH=f"{AUTH[0]}:{AUTH[1]}"
    )
    try:
        wait_until(lambda: http_status(url), 60, interval=0.2, message="flower listening")
        # Never on the command line, where any local user could read them.
        assert AUTH[1] not in " ".join(psutil.Process(proc.pid).cmdline())
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

    info = wait_until(listed, 40, interval=0.25, message=f"{name} in Flower's /api/workers")
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


def test_flower_refuses_to_start_without_credentials_outside_development(process_env, tmp_path):
    proc, _ = start_flower(process_env, tmp_path, WEBHOOKS_ENV="production", FLOWER_BASIC_AUTH="")
    try:
        assert proc.proc.wait(60) != 0
        assert "FLOWER_BASIC_AUTH is not set" in proc.output()
    finally:
        proc.stop()


def test_flower_without_credentials_in_development_listens_on_loopback_only(process_env, tmp_path):
    proc, url = start_flower(
        process_env, tmp_path, WEBHOOKS_ENV="development", FLOWER_BASIC_AUTH=""
    )
    try:
        wait_until(lambda: http_status(url), 60, interval=0.2, message="flower listening")
        port = int(url.rsplit(":", 1)[1])
        addresses = {
            c.laddr.ip
            for c in psutil.Process(proc.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
        assert addresses == {"127.0.0.1"}
    finally:
        proc.stop()


@pytest.mark.long
def test_flower_turns_task_events_on_and_shows_deliveries(
    flower, start_worker, client, tenant, receiver
):
    # Workers send no task events by default (config/celery.py); Flower turns them on.
    sub = subscribe(client, tenant, receiver.url("/flower"), ["order.created"])
    start_worker(concurrency=2, name="watched")

    def delivery_shown() -> dict[str, Any] | None:
        # One more event each time: those sent before Flower's call reach no one.
        assert publish(client, tenant, "order.created", {"n": 1}).status_code == 202
        resp = requests.get(
            f"{flower}/api/tasks", params={"taskname": "tasks.deliver"}, auth=AUTH, timeout=20
        )
        assert resp.status_code == 200, resp.text
        return resp.json() or None

    tasks = wait_until(delivery_shown, 60, interval=0.5, message="a delivery task in Flower")
    assert {t["name"] for t in tasks.values()} == {"tasks.deliver"}

    # A backlog: with two slots the tenant has one attempt in flight (its cap, 75 %), so each
    # task goes on with the next deliveries itself (tasks/delivery.py). Flower still shows every
    # delivery as a task: those a task went on with as its children.
    def shown(batch: set[str]) -> list[dict[str, Any]]:
        tasks = requests.get(
            f"{flower}/api/tasks", params={"taskname": "tasks.deliver"}, auth=AUTH, timeout=20
        ).json()
        return [t for t in tasks.values() if any(i in (t.get("args") or "") for i in batch)]

    def a_batch_shown() -> set[str] | None:
        before = set(delivery_ids(sub["id"]))
        events = [{"event_type": "order.created", "payload": {"n": n}} for n in range(20)]
        sent = client.post("/v1/events/batch", json={"events": events}, headers=tenant["headers"])
        assert sent.status_code == 202, sent.text
        batch = set(delivery_ids(sub["id"])) - before
        wait_until(lambda: batch <= {r.webhook_id for r in receiver.at("/flower")}, 30)
        wait_until(lambda: {i for t in shown(batch) for i in batch if i in t["args"]}, 10)
        found = {i for t in shown(batch) for i in batch if i in t["args"]}
        # (a batch that began before the worker heard that Flower watches shows in part)
        return batch if found == batch else None

    batch = wait_until(a_batch_shown, 60, interval=1, message="a whole batch in Flower")
    ours = wait_until(
        lambda: (t := shown(batch)) and all(x["state"] == "SUCCESS" for x in t) and t, 20
    )
    continued = [t for t in ours if t.get("parent_id")]
    assert continued and len(ours) == len(batch), ours
    assert all(t["worker"].startswith("watched@") for t in continued), continued
