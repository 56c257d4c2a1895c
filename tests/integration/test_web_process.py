"""The API's process under odd clients and a hung database, restarted with an operator's
metrics folder, and its log lines: from an outside review of observability; each test failed
before its fix."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.embedded import free_port
from scripts.harness import Process, gunicorn, wait_until
from tests.conftest import BASE_ENV, Servers


def _raw(port: int, method: str, path: str, timeout: float = 10) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _start_web(tmp: Path, **env: str) -> tuple[Process, int]:
    port = free_port()
    full = dict(os.environ) | BASE_ENV
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full.update(PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY="1", WEB_THREADS="4")
    full.update(env)
    return gunicorn(full, tmp / "web.log"), port


@pytest.fixture
def web(servers: Servers, tmp_path: Path, own_processes: None) -> Iterator[tuple[Process, int]]:
    proc, port = _start_web(
        tmp_path, DATABASE_URL=servers.database_url, REDIS_URL=servers.redis_url
    )
    try:
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/healthz"), 60, message="gunicorn")
        yield proc, port
    finally:
        proc.kill()  # a graceful stop takes a second or two; the test that needs one stops it


def test_request_metric_labels_stay_bounded_whatever_method_a_client_sends(web) -> None:
    """Anyone can send requests with made-up methods to an unauthenticated path; each one must
    not become a new time series on /metrics (docs/operations.md: labels are bounded)."""
    _, port = web
    for i in range(200):
        method = "X" + "".join(chr(ord("A") + (i // 26**k) % 26) for k in range(3))
        assert _raw(port, method, "/healthz") in (400, 405, 501)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    methods = set()
    series = 0
    for family in text_string_to_metric_families(text):
        if family.name.startswith("flask_http_request"):
            for s in family.samples:
                series += 1
                methods.add(s.labels.get("method"))
    assert len(methods) <= 10, (
        f"{len(methods)} distinct `method` label values, {series} flask_http_request_* series, "
        f"after 200 requests from one anonymous client"
    )


class _SilentPostgres:
    """A TCP server that accepts connections and never answers: PostgreSQL hung (SIGSTOP,
    a full disk, a saturated host) or a black-holing firewall that accepts the handshake."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_readyz_answers_not_ready_promptly_and_healthz_stays_up_when_postgres_hangs(
    servers: Servers, tmp_path: Path, own_processes: None
) -> None:
    silent = _SilentPostgres()
    proc, port = _start_web(
        tmp_path,
        DATABASE_URL=f"postgresql://u@127.0.0.1:{silent.port}/db",
        REDIS_URL=servers.redis_url,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ok(f"{base}/healthz"), 60, message="gunicorn")
        # 1. One readiness probe: must say 503 within a probe's usual timeout.
        started = time.monotonic()
        try:
            status: Any = requests.get(f"{base}/readyz", timeout=15).status_code
        except requests.Timeout:
            status = "no answer in 15 s"
        readyz_took = time.monotonic() - started
        # 2. A few probes/scrapes in a row (a kubelet every 10 s, Prometheus every 15 s):
        # the liveness probe must still answer.
        pool = ThreadPoolExecutor(8)
        for path in ["/readyz"] * 4 + ["/metrics"] * 4:
            pool.submit(lambda p=path: requests.get(f"{base}{p}", timeout=120))
        time.sleep(3)
        try:
            live: Any = requests.get(f"{base}/healthz", timeout=5).status_code
        except requests.RequestException as exc:
            live = type(exc).__name__
        assert (status, live) == (503, 200), (
            f"/readyz -> {status} after {readyz_took:.1f} s; /healthz with 4 readiness "
            f"probes and 4 scrapes waiting -> {live}"
        )
    finally:
        proc.kill()  # no graceful stop: the probes it would wait for hang on the silent server
        silent.close()
        pool.shutdown(wait=False, cancel_futures=True)


def test_web_restarts_when_the_operator_sets_prometheus_multiproc_dir(
    servers: Servers, tmp_path: Path, own_processes: None
) -> None:
    """A container image commonly sets PROMETHEUS_MULTIPROC_DIR itself (prometheus_client's
    documented way). config/gunicorn.py's on_exit then deletes that folder, and nothing makes it
    again at the next start."""
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = dict(
        DATABASE_URL=servers.database_url,
        REDIS_URL=servers.redis_url,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    for run in (1, 2):
        proc, port = _start_web(tmp_path, **env)
        try:
            wait_until(
                lambda p=proc, n=port: _ok(f"http://127.0.0.1:{n}/healthz") or not p.alive(),
                60,
                message="gunicorn",
            )
            assert _ok(f"http://127.0.0.1:{port}/metrics"), (
                f"run {run}: the API does not serve; folder exists: {metrics_dir.exists()}\n"
                + proc.output()[-1500:]
            )
        finally:
            proc.stop()


def test_gunicorn_worker_log_lines_are_not_lost_to_logging_errors(web) -> None:
    """webhooks/logs.py sets logging.logProcesses = False in every process that builds the app;
    gunicorn's own error log format is "[%(process)d] ...", so every line a gunicorn *worker*
    logs after that (worker exits, request handling errors) becomes a '--- Logging error ---'
    traceback instead of the message."""
    proc, port = web
    requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    proc.stop()
    out = proc.output()
    assert "--- Logging error ---" not in out, out[out.index("--- Logging error ---") :][:1500]


def test_a_second_embedded_redis_on_the_same_folder_stops_the_first(tmp_path: Path) -> None:
    """`make run` killed with -9 leaves its Redis running; the next run must not start a second
    one writing the same append-only file."""
    from scripts.embedded import EmbeddedRedis

    first = EmbeddedRedis(tmp_path / "redis", persistent=True)
    first.start()
    assert first.proc is not None
    left_behind = first.proc  # as if its owner were killed: never stopped
    # Reaped as soon as it ends (as init reaps a killed run's orphans), not left a zombie.
    reaper = threading.Thread(target=left_behind.wait, daemon=True)
    reaper.start()
    second = EmbeddedRedis(tmp_path / "redis", persistent=True)
    try:
        second.start()
        reaper.join(10)
        assert left_behind.returncode is not None  # the first one was stopped
    finally:
        second.stop()
        if left_behind.poll() is None:
            left_behind.kill()
            left_behind.wait(10)
