"""Metrics and logs of one real mixed run: gunicorn (2 workers) + a Celery worker (2 processes).

The run happens once for the module; each test checks one property of what it produced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from scripts.embedded import free_port
from scripts.harness import (
    BIN,
    Process,
    Receiver,
    Reply,
    gunicorn,
    procfile_line,
    wait_until,
)
from tests.conftest import BASE_ENV, Servers
from tests.integration.conftest import FAST_ENV, make_tenant, reset_state
from tests.support import cores, defined_metric_names, once_per_run

ROOT = Path(__file__).resolve().parents[2]
UUID_RE = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)
MARKER = f"PAYLOAD-MARKER-{uuid.uuid4().hex}"
EVENTS_PER_BURST = 6


@pytest.fixture(autouse=True)
def clean() -> None:
    """Replace the per-test truncation: every test here reads the one run of `mixed_run`."""


@dataclass
class Run:
    api_metrics: str
    worker_metrics: str
    db: dict[str, Any]
    api_log: str
    worker_log: str
    web_pids_with_ingest: dict[int, float]
    worker_pids_with_attempts: dict[int, float]
    secrets: list[str]
    api_key: str
    watchdog_sent: int
    request_ids: dict[str, str] = field(default_factory=dict)
    subscriptions: dict[str, str] = field(default_factory=dict)


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus text into {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(exposition: str, name: str, **labels: str) -> float:
    """Sum the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for (sample, sample_labels), v in samples(exposition).items():
        if sample == name and set(labels.items()) <= set(sample_labels):
            total += v
    return total


def db_counts() -> dict[str, Any]:
    from webhooks.db import get_engine

    with get_engine().connect() as conn:
        status = dict(
            conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY 1")).all()
        )
        results = dict(conn.execute(text("SELECT result, count(*) FROM attempts GROUP BY 1")).all())
        return {
            "events": conn.scalar(text("SELECT count(*) FROM events")),
            "status": status,
            "attempts": results,
            "attempt_rows": sum(results.values()),
            "parked": conn.scalar(text("SELECT count(*) FROM deliveries WHERE parked")),
            "unfinished": sum(status.get(s, 0) for s in ("pending", "retrying", "in_flight")),
        }


def metrics_agree(api: str, worker: str, db: dict[str, Any]) -> list[str]:
    """Return the ways the two scrapes disagree with the database (empty: they agree)."""
    checks = {
        "events ingested (API)": (value(api, "webhooks_events_ingested_total"), db["events"]),
        "delivered": (
            value(worker, "webhooks_deliveries_total", outcome="delivered"),
            db["status"].get("delivered", 0),
        ),
        "failed": (
            value(worker, "webhooks_deliveries_total", outcome="failed"),
            db["status"].get("failed", 0),
        ),
        "attempt duration count": (
            value(worker, "webhooks_delivery_attempt_duration_seconds_count"),
            db["attempt_rows"],
        ),
        "end-to-end count": (
            value(worker, "webhooks_end_to_end_latency_seconds_count"),
            db["status"].get("delivered", 0),
        ),
        "circuit_open attempts": (
            value(worker, "webhooks_delivery_attempts_total", result="circuit_open"),
            db["parked"],
        ),
    }
    for result in ("success", "http_error", "connection_error", "timeout", "refused"):
        checks[f"attempts {result}"] = (
            value(worker, "webhooks_delivery_attempts_total", result=result),
            db["attempts"].get(result, 0),
        )
    for name, scrape in (("API", api), ("worker", worker)):
        checks[f"pending gauge ({name})"] = (
            value(scrape, "webhooks_pending_deliveries"),
            db["unfinished"],
        )
    return [f"{k}: metrics {m} != database {d}" for k, (m, d) in checks.items() if m != d]


@pytest.fixture(scope="module")
def mixed_run(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The one run of the module, made once even when two test processes share its tests."""

    def make() -> Run:
        with cores(exclusive=False):  # gunicorn and a worker run beside this process
            return _mixed_run(servers, tmp_path_factory)

    return once_per_run("metrics-mixed-run", make)  # type: ignore[no-any-return]


def _mixed_run(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Drive successes, retries, failures, an open circuit and a watchdog send; scrape both."""
    reset_state(servers)
    tmp = tmp_path_factory.mktemp("mixed")
    receiver = Receiver()
    # Two failures in a row on /flaky (retried, then delivered); /dead refuses connections.
    receiver.plan("/flaky", Reply(500), Reply(503), then=Reply(204))
    dead_url = f"http://127.0.0.1:{free_port()}/dead"
    tenant = make_tenant("ops")
    web_port, worker_port = free_port(), free_port()
    env = dict(os.environ) | BASE_ENV | FAST_ENV
    env.update(
        DATABASE_URL=servers.database_url,
        REDIS_URL=servers.redis_url,
        WEBHOOKS_LOG_LEVEL="INFO",
        WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD="3",
        WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS="300",
        WEBHOOKS_RATE_LIMIT="10000/minute",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    web_env = env | {
        "PORT": str(web_port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        # Workers are replaced every few requests, so the samples of several processes
        # (live and exited) must add up on /metrics.
        "GUNICORN_CMD_ARGS": "--max-requests 4",
    }
    web = gunicorn(web_env, tmp / "web.log")
    api = f"http://127.0.0.1:{web_port}"
    headers = {"Authorization": f"Bearer {tenant['key']}"}
    worker: Process | None = None
    try:
        wait_until(lambda: _ok(f"{api}/healthz"), 60, message="gunicorn answering")

        def post(path: str, body: dict[str, Any], **extra: str) -> requests.Response:
            # A new connection each time, so gunicorn's workers share the requests.
            resp = requests.post(f"{api}{path}", json=body, headers=headers | extra, timeout=30)
            assert resp.status_code < 300, resp.text
            return resp

        subs = {
            "ok": post("/v1/subscriptions", {"url": receiver.url("/ok"), "event_types": ["*"]}),
            "flaky": post(
                "/v1/subscriptions",
                {"url": receiver.url("/flaky"), "event_types": ["order.created"]},
            ),
            "dead": post(
                "/v1/subscriptions", {"url": dead_url, "event_types": ["order.cancelled"]}
            ),
        }
        subs_json = {k: v.json() for k, v in subs.items()}
        request_ids = {
            "good": post(
                "/v1/events",
                {"event_type": "user.created", "payload": {"marker": MARKER}},
                **{"X-Request-ID": "ops-test.request:1"},
            ).headers["X-Request-ID"],
            "bad": post(
                "/v1/events",
                {"event_type": "user.created", "payload": {"marker": MARKER}},
                **{"X-Request-ID": "bad id; with spaces"},
            ).headers["X-Request-ID"],
        }
        # Sent while no worker runs, then Redis restarts empty: the watchdog must send it.
        import redis

        from webhooks import dispatch

        redis.Redis.from_url(servers.redis_url).flushdb()
        with _engine().begin() as conn:
            lost = conn.execute(text("UPDATE deliveries SET dispatched_at = NULL")).rowcount

        # The Procfile's own worker line, through sh as honcho runs it: it must give the
        # worker its metrics folder before celery starts. Pool processes are replaced as they
        # go (--max-tasks-per-child; one, since a task goes on with the next deliveries of a
        # backlog, so few tasks make many attempts): their samples must still add up.
        worker = Process(
            ["sh", "-c", procfile_line("worker") + " --max-tasks-per-child=1 -n metrics@%h"],
            env
            | {
                "WEBHOOKS_WORKER_METRICS_PORT": str(worker_port),
                "WORKER_CONCURRENCY": "2",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            },
            tmp / "worker.log",
            ready="ready.",
        )
        dispatch._producer_app().send_task("tasks.watchdog", queue="control")
        receiver.wait_for("/ok", lost, timeout=60)

        def publish(event_type: str) -> None:
            post("/v1/events", {"event_type": event_type, "payload": {"marker": MARKER}})

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(publish, ["order.created"] * 3 + ["order.cancelled"]))
            list(pool.map(publish, ["user.created"] * EVENTS_PER_BURST))

        # /dead: three refused connections fail the delivery and open its circuit.
        def dead_failed() -> bool:
            return db_counts()["status"].get("failed", 0) == 1

        wait_until(dead_failed, 60, message="the /dead delivery failed")
        publish("order.cancelled")  # its /dead delivery now parks behind the open circuit

        def settled() -> bool:
            db = db_counts()
            return db["unfinished"] == db["parked"] == 1 and len(receiver.at("/ok")) == db["events"]

        wait_until(settled, 60, message="every delivery finished or parked")
        snapshot: dict[str, Any] = {}

        def agree() -> bool:
            snapshot["db"] = db_counts()
            snapshot["api"] = requests.get(f"{api}/metrics", timeout=30).text
            snapshot["worker"] = requests.get(f"http://127.0.0.1:{worker_port}/", timeout=30).text
            return not metrics_agree(snapshot["api"], snapshot["worker"], snapshot["db"])

        # Counters move a moment before or after their row commits: wait for them to meet.
        # If they never do, the test that checks agreement reports the difference.
        with contextlib.suppress(AssertionError):
            wait_until(agree, 20, interval=0.5, message="metrics agreeing with the database")
        metrics_dir = Path(BASE_ENV["WEBHOOKS_VAR_DIR"]) / "metrics"
        web_pids = _per_pid(metrics_dir / f"web-{web.pid}", "webhooks_events_ingested_total")
        worker_pids = _per_pid(
            metrics_dir / f"celery-{worker.pid}", "webhooks_delivery_attempts_total"
        )
    finally:
        if worker is not None:
            worker.stop()
        web.stop()
        receiver.stop()
    return Run(
        api_metrics=snapshot["api"],
        worker_metrics=snapshot["worker"],
        db=snapshot["db"],
        api_log=web.output(),
        worker_log=worker.output(),
        web_pids_with_ingest=web_pids,
        worker_pids_with_attempts=worker_pids,
        secrets=[s["secret"] for s in subs_json.values()],
        api_key=tenant["key"],
        watchdog_sent=lost,
        request_ids=request_ids,
        subscriptions={k: s["id"] for k, s in subs_json.items()},
    )


def _engine() -> Any:
    from webhooks.db import get_engine

    return get_engine()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _per_pid(directory: Path, sample: str) -> dict[int, float]:
    """Read each process's own sample file: its share of the counter `sample`."""
    out: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for s in family.samples:
                if s.name == sample and s.value:
                    out[pid] = out.get(pid, 0) + s.value
    return out


def _json_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


# --- metrics -----------------------------------------------------------------------------


def test_api_metrics_sum_events_ingested_over_every_gunicorn_worker(mixed_run: Run) -> None:
    assert len(mixed_run.web_pids_with_ingest) >= 2, mixed_run.web_pids_with_ingest
    ingested = value(mixed_run.api_metrics, "webhooks_events_ingested_total")
    assert ingested == sum(mixed_run.web_pids_with_ingest.values())
    assert ingested == mixed_run.db["events"] == 2 + 3 + 1 + EVENTS_PER_BURST + 1


def test_api_metrics_include_flask_request_metrics(mixed_run: Run) -> None:
    api = mixed_run.api_metrics
    rule = "/v1/events"
    assert (
        value(api, "flask_http_request_duration_seconds_count", url_rule=rule)
        >= (mixed_run.db["events"])
    )
    assert (
        value(api, "flask_http_request_total", method="POST", status="202")
        >= (mixed_run.db["events"])
    )


def test_metrics_of_api_and_worker_agree_with_database_after_mixed_run(mixed_run: Run) -> None:
    db = mixed_run.db
    # The run produced each kind of outcome the acceptance names.
    assert db["status"] == {"delivered": db["events"] + 3, "failed": 1, "pending": 1}
    assert db["attempts"] == {
        "success": db["events"] + 3,
        "http_error": 2,
        "connection_error": 3,
    }
    assert metrics_agree(mixed_run.api_metrics, mixed_run.worker_metrics, db) == []


def test_worker_metrics_sum_attempts_over_every_pool_process(mixed_run: Run) -> None:
    per_pid = mixed_run.worker_pids_with_attempts
    # More processes than the pool's two: replaced ones (--max-tasks-per-child) count too.
    assert len(per_pid) > 2, per_pid
    total = value(mixed_run.worker_metrics, "webhooks_delivery_attempts_total")
    assert total == sum(per_pid.values()) == mixed_run.db["attempt_rows"] + mixed_run.db["parked"]


def test_circuit_metrics_show_the_open_circuit(mixed_run: Run) -> None:
    for scrape in (mixed_run.api_metrics, mixed_run.worker_metrics):
        assert value(scrape, "webhooks_circuits_open") == 1
    worker = mixed_run.worker_metrics
    assert value(worker, "webhooks_circuit_transitions_total", to="open") == 1


def test_oldest_pending_age_measures_the_parked_delivery(mixed_run: Run) -> None:
    for scrape in (mixed_run.api_metrics, mixed_run.worker_metrics):
        assert 0 < value(scrape, "webhooks_oldest_pending_age_seconds") < 300


def test_worker_metrics_count_the_watchdog_send(mixed_run: Run) -> None:
    assert mixed_run.watchdog_sent == 2
    worker = mixed_run.worker_metrics
    # `due` or `lost` depending on how long the worker took to start (WEBHOOKS_LOST_AFTER_SECONDS)
    by_reason = {
        reason: value(worker, "webhooks_watchdog_requeued_total", reason=reason)
        for reason in ("due", "lost", "lease_expired", "probe", "circuit_closed")
    }
    assert by_reason["due"] + by_reason["lost"] == 2, by_reason
    assert value(worker, "webhooks_watchdog_requeued_total") == 2


def test_metric_labels_never_hold_an_id(mixed_run: Run) -> None:
    for scrape in (mixed_run.api_metrics, mixed_run.worker_metrics):
        for (name, labels), _ in samples(scrape).items():
            for label, label_value in labels:
                assert not UUID_RE.search(label_value), (name, label, label_value)
    ids = list(mixed_run.subscriptions.values())
    for scrape in (mixed_run.api_metrics, mixed_run.worker_metrics):
        assert not any(i in scrape for i in ids)


# --- the metric names the dashboard and alerts may use -------------------------------------


def test_every_metric_the_code_defines_is_exported_by_the_running_service(mixed_run: Run) -> None:
    """tests/unit/test_dashboards.py checks the dashboard and alerts against the names the code
    defines; this checks that the running API and worker export every one of them."""
    exported = {name for name, _ in samples(mixed_run.api_metrics)} | {
        name for name, _ in samples(mixed_run.worker_metrics)
    }
    assert defined_metric_names() - exported == set()


# --- logs --------------------------------------------------------------------------------


def test_each_request_logs_one_json_line_with_its_request_id(mixed_run: Run) -> None:
    lines = [entry for entry in _json_lines(mixed_run.api_log) if entry.get("msg") == "request"]
    assert mixed_run.request_ids["good"] == "ops-test.request:1"
    bad = mixed_run.request_ids["bad"]
    assert re.fullmatch(r"[0-9a-f]{32}", bad)
    for request_id in mixed_run.request_ids.values():
        (entry,) = [e for e in lines if e["request_id"] == request_id]
        assert entry["method"] == "POST"
        assert entry["path"] == "/v1/events"
        assert entry["status"] == 202
        assert entry["duration_ms"] >= 0
    # every POST /v1/events got exactly one line
    posts = [e for e in lines if e["path"] == "/v1/events" and e["method"] == "POST"]
    assert len(posts) == mixed_run.db["events"]
    assert len({e["request_id"] for e in lines}) == len(lines)


def test_each_attempt_logs_one_json_line_with_its_context(mixed_run: Run) -> None:
    lines = [e for e in _json_lines(mixed_run.worker_log) if e.get("msg") == "attempt"]
    assert len(lines) == mixed_run.db["attempt_rows"]
    results = Counter(e["result"] for e in lines)
    assert results == Counter(mixed_run.db["attempts"])
    for entry in lines:
        for key in ("tenant_id", "event_id", "delivery_id", "subscription_id"):
            uuid.UUID(entry[key])
        assert entry["attempt"] >= 1
        assert entry["duration_ms"] >= 0
        assert "status_code" in entry
    dead = [e for e in lines if e["subscription_id"] == mixed_run.subscriptions["dead"]]
    assert [e["attempt"] for e in dead] == [1, 2, 3]
    assert {e["status_code"] for e in lines if e["result"] == "http_error"} == {500, 503}


def test_logs_hold_no_secret_api_key_or_payload(mixed_run: Run) -> None:
    for output in (mixed_run.api_log, mixed_run.worker_log):
        assert MARKER not in output
        assert mixed_run.api_key not in output
        for secret in mixed_run.secrets:
            assert secret.removeprefix("whsec_") not in output
