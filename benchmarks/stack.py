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
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from scripts.harness import (
    BIN,
    ROOT,
    STOP,
    Process,
    check_stop,
    interrupt,
    procfile_command,
    wait_http,
)

# Re-exported for benchmarks.run and benchmarks.routing: the harness owns them.
__all__ = ["BIN", "ROOT", "STOP", "Stack", "check_stop", "interrupt"]


class Stack:
    """PostgreSQL, Redis, the receiver, and the service's processes, all on loopback."""

    def __init__(self, workdir: Path, durable_pg: bool = True):
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # Durable by default (fsync and synchronous commit on), as production runs.
        self.pg = EmbeddedPostgres(workdir / "postgres", fast=not durable_pg)
        self.redis = EmbeddedRedis(workdir / "redis")
        self.procs: list[Process] = []
        self.env: dict[str, str] = {}
        self.receiver_port = 0
        self.receiver: Process | None = None
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
        self.receiver = self.spawn(
            "receiver", [sys.executable, "-m", "benchmarks.receiver", str(self.receiver_port)]
        )
        self.receiver.wait_for_log("receiver ready")

    def server_pids(self) -> dict[str, int]:
        """The PIDs of PostgreSQL, Redis and the receiver, by name."""
        assert self.receiver is not None
        return {
            "postgres": self.pg.proc.pid,
            "redis": self.redis.proc.pid,
            "receiver": self.receiver.proc.pid,
        }

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        self.redis.stop()
        self.pg.stop()

    def spawn(self, name: str, args: list[str], **env: str) -> Process:
        proc = Process(args, {**self.env, **env}, self.logs / f"{name}.log", name=name)
        self.procs.append(proc)
        return proc

    def kill(self, proc: Process) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    # -- the service's processes, as the Procfile runs them ----------------------------------
    def procfile_command(self, name: str) -> list[str]:
        return procfile_command(name)

    @contextmanager
    def web(self, app: str = "webhooks.wsgi:app", **env: str) -> Iterator[int]:
        """Run gunicorn as the Procfile's `web` does (optionally another app); yield its port."""
        port = free_port()
        args = self.procfile_command("web")
        args = [str(BIN / args[0]), *args[1:-1], app]
        proc = self.spawn(f"web-{app.split(':')[0]}", args, PORT=str(port), **env)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
            yield port
        finally:
            self.kill(proc)

    def worker(self, pool: str, concurrency: int, include: str = "", **env: str) -> Process:
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
        from webhooks.scheduler import PREFIX

        with get_engine().begin() as conn:
            conn.execute(text("TRUNCATE subscriptions, events, deliveries, attempts CASCADE"))
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        # The running workers' announcements survive: without them the scheduler's window is
        # its default (4 slots, so a tenant cap of 3) until each worker's next one, up to 5 s
        # into the next phase, which then measures that as much as the service.
        workers = client.hgetall(PREFIX + "workers")
        client.flushdb()
        if workers:
            client.hset(PREFIX + "workers", mapping=workers)
        from benchmarks.load import post_json

        post_json(self.receiver_port, "/_reset", {})

    def receiver_stats(self, latencies: bool = False) -> dict[str, Any]:
        from benchmarks.load import get_json

        return dict(get_json(self.receiver_port, "/_stats?lat=1" if latencies else "/_stats"))


def _wait_ping(name: str, proc: Process, timeout: float = 90) -> None:
    """Wait until the worker answers a control ping (at any log level)."""
    from webhooks import dispatch

    control = dispatch._producer_app().control
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        check_stop()
        if control.ping(destination=[name], timeout=0.5):
            return
    raise RuntimeError(f"{proc.name} not ready:\n{proc.output()[-3000:]}")


def cpu_seconds(roots: dict[str, int], alone: Collection[str] = ()) -> dict[str, dict[int, float]]:
    """Return the CPU seconds (user + system) used so far by each process tree, by PID; the
    processes named in `alone` without their children."""
    import psutil

    out: dict[str, dict[int, float]] = {}
    for name, pid in roots.items():
        seen: dict[int, float] = {}
        try:
            root = psutil.Process(pid)
            tree = [] if name in alone else root.children(recursive=True)
            for proc in [root, *tree]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    seen[proc.pid] = times.user + times.system
        except psutil.Error:
            pass
        out[name] = seen
    return out


def cpu_ms_per_unit(
    roots: dict[str, int],
    before: dict[str, dict[int, float]],
    units: int,
    alone: Collection[str] = (),
) -> dict[str, float]:
    """Return the CPU milliseconds each process tree spent per unit of work (a request, a
    delivery) since `before` (processes that ended meanwhile are not counted)."""
    after = cpu_seconds(roots, alone)
    return {
        name: 1000
        * sum(now - before[name].get(pid, 0.0) for pid, now in after[name].items())
        / max(1, units)
        for name in after
    }
