"""The benchmark's own stack: embedded PostgreSQL and Redis, the receiver, gunicorn, celery.

Every process starts in its own session and is stopped by its PID (its process group), also
when the run fails or is interrupted.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Set by Ctrl-C or SIGTERM. Some client libraries swallow the KeyboardInterrupt raised inside
# them (a Celery control ping does), so every wait loop checks this too.
STOP = threading.Event()


def interrupt(signum: int, frame: object) -> None:
    """Signal handler: stop the run, whatever it is waiting on."""
    STOP.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check_stop()
            if text in self.log.read_text(errors="replace"):
                return
            if not self.alive():
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} not ready (looked for {text!r}):\n{tail}")

    def tree_rss(self) -> int:
        """Return the resident memory of this process and all its descendants, in bytes."""
        return sum(_rss(pid) for pid in [self.pid, *_descendants(self.pid)])

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # pool children left behind
        self._out.close()


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    children = [int(p) for p in out.stdout.split()]
    return children + [g for c in children for g in _descendants(c)]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Stack:
    """PostgreSQL, Redis, the receiver, and the service's processes, all on loopback."""

    def __init__(self, workdir: Path, durable_pg: bool = True):
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # Durable by default (fsync and synchronous commit on), as production runs.
        self.pg = EmbeddedPostgres(workdir / "postgres", fast=not durable_pg)
        self.redis = EmbeddedRedis(workdir / "redis")
        self.procs: list[Proc] = []
        self.env: dict[str, str] = {}
        self.receiver_port = 0
        self.web_port = 0

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.pg.start()
        database_url = self.pg.create_database("webhooks_bench")
        redis_url = self.redis.start()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WEBHOOKS_SECRET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "WEBHOOKS_VAR_DIR": str(self.workdir / "var"),
            "WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
            # The bench measures throughput, not the per-key rate limit.
            "WEBHOOKS_RATE_LIMIT": "10000000/second",
            "WEBHOOKS_WORKER_METRICS_PORT": str(free_port()),
            "HOST": "127.0.0.1",
        }
        os.environ.update(
            {
                k: self.env[k]
                for k in (
                    "DATABASE_URL",
                    "REDIS_URL",
                    "WEBHOOKS_SECRET_KEY",
                    "WEBHOOKS_VAR_DIR",
                    "WEBHOOKS_ALLOW_PRIVATE_TARGETS",
                    "WEBHOOKS_RATE_LIMIT",
                )
            }
        )
        os.environ.setdefault("WEBHOOKS_LOG_LEVEL", "WARNING")  # this process's own logs
        subprocess.run(
            [str(BIN / "alembic"), "upgrade", "head"],
            env=self.env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.receiver_port = free_port()
        receiver = self.spawn(
            "receiver", [sys.executable, "-m", "benchmarks.receiver", str(self.receiver_port)]
        )
        receiver.wait_for_log("receiver ready")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        self.redis.stop()
        self.pg.stop()

    def spawn(self, name: str, args: list[str], **env: str) -> Proc:
        proc = Proc(name, args, {**self.env, **env}, self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    # -- the service's processes, as the Procfile runs them ----------------------------------
    def procfile_command(self, name: str) -> list[str]:
        for line in (ROOT / "Procfile").read_text().splitlines():
            key, _, command = line.partition(":")
            if key.strip() == name:
                words = shlex.split(os.path.expandvars(command.strip()))
                # Leading NAME=value words set the environment (the worker's metrics folder):
                # the callers set their own.
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words.pop(0)
                return words
        raise KeyError(name)

    @contextmanager
    def web(self, app: str = "webhooks.wsgi:app", **env: str) -> Iterator[int]:
        """Run gunicorn as the Procfile's `web` does (optionally another app); yield its port."""
        port = free_port()
        args = self.procfile_command("web")
        args = [str(BIN / args[0]), *args[1:-1], app]
        proc = self.spawn(f"web-{app.split(':')[0]}", args, PORT=str(port), **env)
        try:
            _wait_http(port, proc)
            yield port
        finally:
            self.kill(proc)

    def worker(self, pool: str, concurrency: int, include: str = "", **env: str) -> Proc:
        """Start a worker from the Procfile's `worker` line with this pool and concurrency."""
        args = self.procfile_command("worker")
        args = [str(BIN / args[0])] + [
            a for a in args[1:] if not a.startswith(("--pool", "--concurrency"))
        ]
        name = f"bench{len(self.procs)}@{socket.gethostname()}"
        args += [f"--pool={pool}", f"--concurrency={concurrency}", "-n", name]
        # For trying worker options by measurement, e.g. BENCH_WORKER_ARGS=--loglevel=WARNING.
        args += shlex.split(os.environ.get("BENCH_WORKER_ARGS", ""))
        if include:
            args += ["-I", include]
        # As the Procfile's line: a metrics folder of its own, set before celery starts.
        metrics = tempfile.mkdtemp(prefix="celery-", dir=self.logs)
        proc = self.spawn(f"worker{len(self.procs)}", args, PROMETHEUS_MULTIPROC_DIR=metrics, **env)
        _wait_ping(name, proc)
        return proc

    # -- data ---------------------------------------------------------------------------------
    def reset_data(self) -> None:
        """Empty the tables the scenarios fill, and Redis; keep tenants and API keys."""
        import redis
        from sqlalchemy import text

        from webhooks.db import get_engine

        with get_engine().begin() as conn:
            conn.execute(text("TRUNCATE subscriptions, events, deliveries, attempts CASCADE"))
        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        from benchmarks.load import post_json

        post_json(self.receiver_port, "/_reset", {})

    def receiver_stats(self, latencies: bool = False) -> dict[str, Any]:
        from benchmarks.load import get_json

        return dict(get_json(self.receiver_port, "/_stats?lat=1" if latencies else "/_stats"))


def _wait_ping(name: str, proc: Proc, timeout: float = 90) -> None:
    """Wait until the worker answers a control ping (at any log level)."""
    from webhooks import dispatch

    control = dispatch._producer_app().control
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        check_stop()
        if control.ping(destination=[name], timeout=0.5):
            return
    raise RuntimeError(f"{proc.name} not ready:\n{proc.log.read_text(errors='replace')[-3000:]}")


def _wait_http(port: int, proc: Proc, timeout: float = 60) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_stop()
        if not proc.alive():
            break
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"{proc.name} did not answer on {port}:\n{proc.log.read_text(errors='replace')[-3000:]}"
    )
