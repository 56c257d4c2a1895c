"""`make bench`: each figure of the service beside a ceiling measured in the same run.

    python -m benchmarks.run [--quick] [--pool prefork|threads] [--concurrency N]
                             [--only ingest,batch,delivery,isolation,latency,parked,routing]

Starts its own PostgreSQL, Redis and receiver, runs gunicorn and celery from the Procfile's
command lines, prints a table and writes benchmarks/results/latest.json. The machine is
shared and noisy, so a figure is judged by its ratio to the ceiling, not by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmarks.load import (
    MARKER,
    LoadResult,
    percentile,
    post_json,
    request_bytes,
    run_load,
    run_paced,
)
from benchmarks.stack import (
    BIN,
    ROOT,
    Stack,
    check_stop,
    cpu_ms_per_unit,
    cpu_seconds,
    interrupt,
)
from scripts.harness import worker_concurrency

RESULTS = ROOT / "benchmarks" / "results"
SCENARIOS = (
    "ingest",
    "batch",
    "delivery",
    "isolation",
    "fairness",
    "throttle",
    "recovery",
    "latency",
    "parked",
    "routing",
    "ordering",
)


def _size(full: float, quick: float) -> Any:
    """A scenario's size in a full run, and with --quick."""
    return field(default=full, metadata={"quick": quick})


# The CPU figures' process counted without its children: the worker's main process.
_MAIN = ("worker_main",)


@dataclass
class Sizes:
    ingest_seconds: float = _size(10, quick=3)
    batch_seconds: float = _size(10, quick=3)
    deliveries: int = _size(10_000, quick=2_000)
    isolation_events: int = _size(600, quick=200)
    fairness_events: int = _size(20_000, quick=4_000)
    throttle_backlog: int = _size(3_000, quick=600)
    recovery_lost: int = _size(50_000, quick=5_000)
    latency_seconds: float = _size(10, quick=4)
    parked: int = _size(20_000, quick=5_000)
    routing_seconds: float = _size(5, quick=2)
    routing_rounds: int = _size(2, quick=1)
    ordered: int = _size(5_000, quick=1_500)
    ordered_one_key: int = _size(1_000, quick=300)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(**{f.name: f.metadata["quick"] for f in fields(cls)})


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, stack: Stack, sizes: Sizes, pool: str, concurrency: int):
        self.stack = stack
        self.sizes = sizes
        self.pool = pool
        self.concurrency = concurrency
        self.figures: list[Figure] = []
        self.key = ""
        self.auth: dict[str, str] = {}

    # -- helpers -------------------------------------------------------------------------------
    def setup_tenant(self) -> None:
        from webhooks.db import session_scope
        from webhooks.services.tenants import create_tenant

        with session_scope() as session:
            _, self.key = create_tenant(session, "bench")
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def subscribe(self, port: int, path: str, event_types: list[str], **extra: Any) -> str:
        status, body = post_json(
            port,
            "/v1/subscriptions",
            {
                "url": f"http://127.0.0.1:{self.stack.receiver_port}{path}",
                "event_types": event_types,
                **extra,
            },
            self.auth,
        )
        assert status == 201, (status, body)
        return str(body["id"])

    def ingest_batches(self, port: int, event_type: str, count: int, keys: int = 0) -> None:
        """Publish `count` events through the batch endpoint, 500 at a time (with `keys`
        ordering keys in turn, if any)."""
        sent = 0
        while sent < count:
            n = min(500, count - sent)
            events = [{"event_type": event_type, "payload": _payload(sent + i)} for i in range(n)]
            if keys:
                for i, event in enumerate(events):
                    event["ordering_key"] = f"key-{(sent + i) % keys}"
            status, body = post_json(port, "/v1/events/batch", {"events": events}, self.auth)
            assert status == 202, (status, body)
            sent += n

    def queue_length(self) -> int:
        """Messages waiting: in Celery's queue, and ready in the scheduler (not yet tasks)."""
        client = _redis()
        queued = sum(client.llen(key) for key in client.keys("webhooks*"))
        return int(queued + int(client.get("wh:q:ready") or 0))

    def unacked(self) -> int:
        return int(_redis().hlen("unacked"))

    def wait_for_drain_start(self, total: int, timeout: float = 120) -> float:
        """Return the moment the queue of `total` messages starts to shrink."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check_stop()
            if self.queue_length() < total:
                return time.time()
            time.sleep(0.005)
        raise RuntimeError("the worker took no message")

    def wait_received(self, paths: list[str], each: int, timeout: float = 400) -> float:
        """Wait until every path has `each` distinct deliveries; return the last arrival."""
        deadline = time.monotonic() + timeout
        while True:
            check_stop()
            stats = self.stack.receiver_stats()
            got = [stats.get(p, {}).get("unique", 0) for p in paths]
            if all(g >= each for g in got):
                return max(stats[p]["last"] for p in paths)
            if time.monotonic() > deadline:
                raise RuntimeError(f"receiver has {got} of {each} at {paths}")
            time.sleep(0.05)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(_row(figure), flush=True)

    # -- 0: the receiver alone -----------------------------------------------------------------
    def receiver_alone(self) -> None:
        body = json.dumps(
            {
                "id": str(uuid.uuid4()),
                "type": "order.created",
                "timestamp": "2026-01-01T00:00:00Z",
                "data": _payload(1),
            }
        ).encode()
        req = request_bytes("/alone", body, {"webhook-id": "msg_1"})
        result = run_load(self.stack.receiver_port, [req], connections=8, seconds=2)
        self.add(
            Figure(
                "receiver alone (8 conns)",
                result.rate,
                "req/s",
                extra={"p99_ms": result.percentile(99)},
            )
        )
        self.stack.reset_data()

    # -- 1 and 2: ingest, single and batch ------------------------------------------------------
    def ingest(self, do_single: bool, do_batch: bool) -> None:
        singles = [
            request_bytes(
                "/v1/events",
                json.dumps({"event_type": "order.created", "payload": _payload(i)}).encode(),
                self.auth,
            )
            for i in range(16)
        ]
        batch = request_bytes(
            "/v1/events/batch",
            json.dumps(
                {
                    "events": [
                        {"event_type": "order.created", "payload": _payload(i)} for i in range(500)
                    ]
                }
            ).encode(),
            self.auth,
        )
        secs_single, secs_batch = self.sizes.ingest_seconds, self.sizes.batch_seconds

        bare: dict[str, LoadResult] = {}
        cpu: dict[str, dict[str, float]] = {}
        with self.stack.web("benchmarks.bare:app") as port:
            if do_single:
                run_load(port, singles, 32, 1)  # warm-up
                roots = {"web": self.stack.procs[-1].proc.pid}
                before = cpu_seconds(roots)
                bare["single"] = run_load(port, singles, 32, secs_single)
                cpu["bare"] = cpu_ms_per_unit(roots, before, bare["single"].answered)
            if do_batch:
                bare["batch"] = run_load(port, [batch], 4, secs_batch)
        real: dict[str, LoadResult] = {}
        with self.stack.web() as port:
            self.subscribe(port, "/ingest", ["order.created"])
            if do_single:
                run_load(port, singles, 32, 1)
                roots = {
                    "web": self.stack.procs[-1].proc.pid,
                    "postgres": self.stack.pg.proc.pid,
                    "redis": self.stack.redis.proc.pid,
                }
                before = cpu_seconds(roots)
                real["single"] = run_load(port, singles, 32, secs_single)
                cpu["real"] = cpu_ms_per_unit(roots, before, real["single"].answered)
            if do_batch:
                real["batch"] = run_load(port, [batch], 4, secs_batch)
        self.stack.reset_data()

        if do_single:
            r, b = real["single"], bare["single"]
            ratio = r.rate / b.rate
            p99 = r.percentile(99)
            self.add(
                Figure(
                    "ingest POST /v1/events, 32 conns",
                    r.rate,
                    "req/s",
                    b.rate,
                    "bare Flask",
                    ratio,
                    ">= 0.35, p99 < 50 ms",
                    ratio >= 0.35 and p99 < 50,
                    {
                        "p50_ms": r.percentile(50),
                        "p99_ms": p99,
                        "statuses": r.statuses,
                        "errors": r.errors,
                        "bare_p50_ms": b.percentile(50),
                        "bare_p99_ms": b.percentile(99),
                        "cpu_ms_per_request": cpu["real"],
                        "bare_cpu_ms_per_request": cpu["bare"],
                        # Less sensitive to other load on the machine than the rates: the bare
                        # app's CPU per request over the service's (web, PostgreSQL, Redis).
                        "cpu_ratio": cpu["bare"]["web"] / sum(cpu["real"].values()),
                    },
                )
            )
        if do_batch:
            r, b = real["batch"], bare["batch"]
            events, ceiling = r.rate * 500, b.rate * 500
            self.add(
                Figure(
                    "batch ingest, 500/request, 4 conns",
                    events,
                    "events/s",
                    ceiling,
                    "bare Flask, same body",
                    events / ceiling,
                    ">= 10,000 events/s",
                    events >= 10_000,
                    {
                        "p50_ms": r.percentile(50),
                        "p99_ms": r.percentile(99),
                        "statuses": r.statuses,
                        "errors": r.errors,
                    },
                )
            )

    # -- 3: delivery throughput ----------------------------------------------------------------
    def delivery(self, web_port: int) -> None:
        from webhooks import dispatch

        n = self.sizes.deliveries
        # The ceiling: no-op tasks through the same broker, settings and pool.
        dispatch.send("benchmarks.noop", [str(uuid.uuid4()) for _ in range(n)])
        assert self.queue_length() == n
        worker = self.stack.worker(self.pool, self.concurrency, include="benchmarks.noop")
        roots = self._delivery_roots(worker)
        started = self.wait_for_drain_start(n)
        before = cpu_seconds(roots, _MAIN)
        while self.queue_length() or self.unacked():
            check_stop()
            time.sleep(0.005)
        noop_rate = n / (time.time() - started)
        noop_cpu = cpu_ms_per_unit(roots, before, n, _MAIN)
        self.stack.kill(worker)
        self.stack.reset_data()

        self.subscribe(web_port, "/d", ["delivery.test"])
        self.ingest_batches(web_port, "delivery.test", n)
        assert self.queue_length() == n, self.queue_length()
        rss_before = 0
        worker = self.stack.worker(self.pool, self.concurrency)
        rss_before = worker.tree_rss()
        roots = self._delivery_roots(worker)
        started = self.wait_for_drain_start(n)
        before = cpu_seconds(roots, _MAIN)
        last = self.wait_received(["/d"], n)
        rate = n / (last - started)
        cpu = cpu_ms_per_unit(roots, before, n, _MAIN)
        rss_after = worker.tree_rss()
        self.stack.kill(worker)
        dupes = self.stack.receiver_stats()["/d"]["count"] - n
        self.stack.reset_data()
        ratio = rate / noop_rate
        self.add(
            Figure(
                f"deliveries/s, {n} queued",
                rate,
                "deliveries/s",
                noop_rate,
                "no-op Celery task",
                ratio,
                ">= 0.6",
                ratio >= 0.6,
                {
                    "duplicates": dupes,
                    "worker_rss_mb": rss_after / 2**20,
                    "worker_rss_start_mb": rss_before / 2**20,
                    # CPU per delivery and per no-op task, by process: less moved by other
                    # load on a shared machine than the rates are.
                    "cpu_ms_per_delivery": cpu,
                    "noop_cpu_ms_per_task": noop_cpu,
                },
            )
        )

    def _delivery_roots(self, worker: Any) -> dict[str, int]:
        """The processes a delivery costs CPU in: the worker's main process alone
        (`worker_main`), the worker with its pool processes, PostgreSQL, Redis, the receiver."""
        pid = worker.proc.pid
        return {"worker_main": pid, "worker": pid, **self.stack.server_pids()}

    # -- ordered delivery ----------------------------------------------------------------------
    def ordering(self, web_port: int) -> None:
        """The same receiver and subscription settings, unordered, then fifo with 50 keys and
        with 1 key: deliveries per second from the first receipt to the last."""

        def run(path: str, n: int, ordering: str, keys: int) -> float:
            self.subscribe(web_port, path, [f"ordered.{path[1:]}"], ordering=ordering)
            self.ingest_batches(web_port, f"ordered.{path[1:]}", n, keys)
            worker = self.stack.worker(self.pool, self.concurrency)
            self.wait_received([path], n)
            stats = self.stack.receiver_stats()[path]
            self.stack.kill(worker)
            self.stack.reset_data()
            return (n - 1) / (stats["last"] - stats["first"])

        n = self.sizes.ordered
        # The baseline before and after, so a drift of this shared machine weighs on both.
        before = run("/unordered", n, "none", 50)
        ordered = run("/fifo50", n, "fifo", 50)
        unordered = (before + run("/unordered2", n, "none", 50)) / 2
        ratio = ordered / unordered
        self.add(
            Figure(
                f"ordered deliveries/s, 50 keys, {n} queued",
                ordered,
                "deliveries/s",
                unordered,
                "unordered, same subscription",
                ratio,
                ">= 0.5",
                ratio >= 0.5,
                {"unordered_before": before},
            )
        )
        one = self.sizes.ordered_one_key
        single = run("/fifo1", one, "fifo", 1)
        self.add(
            Figure(
                f"ordered deliveries/s, 1 key, {one} queued",
                single,
                "deliveries/s",
                unordered,
                "unordered, same subscription",
                single / unordered,
                "reported (one at a time: bound by each attempt's round trip)",
                None,
            )
        )

    # -- 4: isolation ----------------------------------------------------------------------------
    def isolation(self, web_port: int) -> None:
        m = self.sizes.isolation_events
        healthy = [f"/h{i}" for i in range(9)]
        rates = {}
        extra: dict[str, Any] = {}
        for hanging in (False, True):
            paths = [*healthy, "/hang" if hanging else "/h9"]
            for path in paths:
                self.subscribe(web_port, path, ["iso.test"])
            self.ingest_batches(web_port, "iso.test", m)
            total = self.queue_length()
            worker = self.stack.worker(
                self.pool, self.concurrency, WEBHOOKS_HTTP_TIMEOUT_SECONDS="1"
            )
            started = self.wait_for_drain_start(total)
            last = self.wait_received(healthy, m)
            rates[hanging] = 9 * m / (last - started)
            if hanging:
                extra["hanging_requests"] = (
                    self.stack.receiver_stats().get("/hang", {}).get("count", 0)
                )
                extra["parked"] = _scalar("SELECT count(*) FROM deliveries WHERE parked")
            self.stack.kill(worker)
            self.stack.reset_data()
        ratio = rates[True] / rates[False]
        extra["events"] = m
        self.add(
            Figure(
                "healthy deliveries/s, 1 of 10 hangs",
                rates[True],
                "deliveries/s",
                rates[False],
                "same, all 10 healthy",
                ratio,
                ">= 0.8",
                ratio >= 0.8,
                extra,
            )
        )

    # -- 4b: fairness between tenants ------------------------------------------------------------
    def fairness(self, web_port: int) -> None:
        """Tenant A bursts a batch backlog while tenant B sends 4 events/s: B's p99 latency
        beside B's quiet p99, and A's drain rate beside A's drain rate alone."""
        from webhooks.db import session_scope
        from webhooks.services.tenants import create_tenant

        n = self.sizes.fairness_events
        with session_scope() as session:
            _, key_b = create_tenant(session, "bench-b")
        auth_b = {"Authorization": f"Bearer {key_b}"}
        body = b'{"event_type":"fair.b","payload":{"t":' + MARKER + b"}}"
        request_b = request_bytes("/v1/events", body, auth_b)

        def subscribe_b() -> None:
            status, _ = post_json(
                web_port,
                "/v1/subscriptions",
                {
                    "url": f"http://127.0.0.1:{self.stack.receiver_port}/lat-b",
                    "event_types": ["fair.b"],
                },
                auth_b,
            )
            assert status == 201

        worker = self.stack.worker(self.pool, self.concurrency)
        # B alone: its quiet latency.
        subscribe_b()
        quiet_sent = run_paced(web_port, request_b, 4, 15)
        self.wait_received(["/lat-b"], quiet_sent.requests)
        quiet = self.stack.receiver_stats(latencies=True)["/lat-b"]["latencies"]
        self.stack.reset_data()

        drain: dict[bool, list[float]] = {False: [], True: []}
        during: list[float] = []
        # A alone, with B, with B, A alone: a machine that speeds up or slows down over the run
        # (it is shared) then weighs on both sides alike.
        for with_b in (False, True, True, False):
            self.subscribe(web_port, "/fa", ["fair.a"])
            if with_b:
                subscribe_b()
            started = time.time()
            self.ingest_batches(web_port, "fair.a", n)
            if with_b:
                # B sends for as long as A's backlog drains (at least until it is half done).
                while self.stack.receiver_stats().get("/fa", {}).get("unique", 0) < n * 0.9:
                    check_stop()
                    run_paced(web_port, request_b, 4, 5)
            last = self.wait_received(["/fa"], n, timeout=900)
            drain[with_b].append(n / (last - started))
            if with_b:
                stats = self.stack.receiver_stats(latencies=True)
                during += stats["/lat-b"]["latencies"]
            self.stack.reset_data()
        self.stack.kill(worker)
        quiet_p99 = percentile(quiet, 99)
        busy_p99 = percentile(during, 99)
        met = busy_p99 <= quiet_p99 + 1.0
        self.add(
            Figure(
                f"tenant B p99 latency, tenant A bursting {n}",
                busy_p99 * 1000,
                "ms",
                quiet_p99 * 1000,
                "tenant B p99, quiet",
                None,
                "<= quiet + 1000 ms",
                met,
                {"b_events": len(during), "b_p50_ms": percentile(during, 50) * 1000},
            )
        )
        with_b, alone = statistics.mean(drain[True]), statistics.mean(drain[False])
        ratio = with_b / alone
        self.add(
            Figure(
                "tenant A drain rate, with tenant B",
                with_b,
                "deliveries/s",
                alone,
                "tenant A alone",
                ratio,
                ">= 0.9",
                ratio >= 0.9,
                {"with_b": drain[True], "alone": drain[False]},
            )
        )

    # -- 4c: throttle accuracy -------------------------------------------------------------------
    def throttle(self, web_port: int) -> None:
        """A backlog behind rate_limit 50: the most in any one-second window, and the mean."""
        n = self.sizes.throttle_backlog
        status, body = post_json(
            web_port,
            "/v1/subscriptions",
            {
                "url": f"http://127.0.0.1:{self.stack.receiver_port}/thr",
                "event_types": ["thr.test"],
                "rate_limit": 50,
                "max_in_flight": 100,
            },
            self.auth,
        )
        assert status == 201, body
        self.ingest_batches(web_port, "thr.test", n)
        worker = self.stack.worker(self.pool, self.concurrency)
        self.wait_received(["/thr"], n, timeout=n / 50 * 3 + 60)
        times = sorted(self.stack.receiver_stats(latencies=True)["/thr"]["arrivals"])
        self.stack.kill(worker)
        self.stack.reset_data()
        most, j = 0, 0
        for i, start in enumerate(times):
            while j < len(times) and times[j] < start + 1.0:
                j += 1
            most = max(most, j - i)
        mean = (len(times) - 1) / (times[-1] - times[0])
        self.add(
            Figure(
                "rate_limit 50: most in any 1 s",
                most,
                "deliveries",
                50,
                "the limit",
                None,
                "<= 55",
                most <= 55,
            )
        )
        self.add(
            Figure(
                "rate_limit 50: mean rate",
                mean,
                "deliveries/s",
                50,
                "the limit",
                mean / 50,
                ">= 45/s",
                mean >= 45,
                {"deliveries": len(times)},
            )
        )

    # -- 4d: recovery after Redis lost everything ---------------------------------------------
    def recovery(self, web_port: int) -> None:
        """Queue a backlog, wipe Redis, start a worker and beat: time until all is delivered
        again, beside the time the same backlog takes with nothing lost."""
        n = self.sizes.recovery_lost
        env = {"WEBHOOKS_WATCHDOG_INTERVAL_SECONDS": "5", "WEBHOOKS_LOST_AFTER_SECONDS": "10"}
        times: dict[bool, float] = {}
        for wiped in (False, True):
            self.subscribe(web_port, "/rec", ["rec.test"])
            self.ingest_batches(web_port, "rec.test", n)
            if wiped:
                _redis().flushdb()  # every queued message and the scheduler's state: gone
                time.sleep(10)  # the rows are now older than WEBHOOKS_LOST_AFTER_SECONDS
            started = time.time()
            worker = self.stack.worker(self.pool, self.concurrency, **env)
            beat = self.stack.spawn(
                "beat",
                [str(BIN / "celery"), "-A", "tasks", "beat", "-s", str(self.stack.logs / "sched")],
                **env,
            )
            last = self.wait_received(["/rec"], n, timeout=900)
            times[wiped] = last - started
            dupes = self.stack.receiver_stats()["/rec"]["count"] - n
            self.stack.kill(beat)
            self.stack.kill(worker)
            self.stack.reset_data()
        self.add(
            Figure(
                f"all {n} delivered after Redis lost them",
                times[True],
                "s",
                times[False],
                "same backlog, nothing lost",
                times[False] / times[True],
                "<= 120 s",
                times[True] <= 120,
                {"duplicates": dupes},
            )
        )

    # -- 5: latency at a steady rate -------------------------------------------------------------
    def latency(self, web_port: int) -> None:
        from webhooks import dispatch

        secs = self.sizes.latency_seconds
        self.subscribe(web_port, "/lat", ["latency.test"])
        worker = self.stack.worker(self.pool, self.concurrency, include="benchmarks.noop")
        body = b'{"event_type":"latency.test","payload":{"t":' + MARKER + b"}}"
        run_paced(web_port, request_bytes("/v1/events", body, self.auth), 50, 1)  # warm-up
        self.wait_received(["/lat"], 50)
        self.stack.reset_data()
        self.subscribe(web_port, "/lat", ["latency.test"])
        sent = run_paced(web_port, request_bytes("/v1/events", body, self.auth), 100, secs)
        self.wait_received(["/lat"], sent.requests)
        latencies = self.stack.receiver_stats(latencies=True)["/lat"]["latencies"]

        # The floor: one task hop and one plain POST, sent at the same pace.
        app = dispatch._producer_app()
        url = f"http://127.0.0.1:{self.stack.receiver_port}/lat-echo"
        count = int(secs * 100)
        with app.producer_or_acquire() as producer:
            start = time.time()
            for i in range(count):
                wait = start + i / 100 - time.time()
                if wait > 0:
                    time.sleep(wait)
                app.send_task(
                    "benchmarks.echo", args=[url, f"{time.time():.6f}"], producer=producer
                )
        self.wait_received(["/lat-echo"], 0)
        deadline = time.monotonic() + 60
        while self.stack.receiver_stats().get("/lat-echo", {}).get("count", 0) < count:
            check_stop()
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        floor = self.stack.receiver_stats(latencies=True).get("/lat-echo", {}).get("latencies", [])
        self.stack.kill(worker)
        self.stack.reset_data()

        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        self.add(
            Figure(
                "ingest-to-delivered at 100 events/s, p50",
                p50,
                "ms",
                percentile(floor, 50) * 1000,
                "task hop + plain POST",
                None,
                "< 50 ms",
                p50 < 50,
                {
                    "samples": len(latencies),
                    "ingest_p50_ms": sent.percentile(50),
                    "ingest_p99_ms": sent.percentile(99),
                },
            )
        )
        self.add(
            Figure(
                "ingest-to-delivered at 100 events/s, p99",
                p99,
                "ms",
                percentile(floor, 99) * 1000,
                "task hop + plain POST",
                None,
                "< 250 ms",
                p99 < 250,
                {"max_ms": max(latencies) * 1000 if latencies else None},
            )
        )

    # -- 6: memory with deliveries parked ------------------------------------------------------
    def routing(self, web_port: int) -> None:
        """Issue 11: a tenant's non-matching subscriptions must not cost its ingest."""
        from benchmarks.routing import measure

        report = measure(
            self.stack, web_port, self.sizes.routing_seconds, self.sizes.routing_rounds
        )
        for figure in _routing_figures(report):
            self.add(figure)

    def parked(self, web_port: int) -> None:
        from webhooks.runtime import get_breaker

        n = self.sizes.parked
        self.subscribe(web_port, "/warm", ["warm.test"])
        parked_sub = self.subscribe(web_port, "/parked", ["parked.test"])
        worker = self.stack.worker(
            self.pool, self.concurrency, WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS="3600"
        )
        # Warm up every code path the parked deliveries will take, then take the baseline.
        self.ingest_batches(web_port, "warm.test", 2000)
        self.wait_received(["/warm"], 2000)
        time.sleep(1)
        rss_before, redis_before = worker.tree_rss(), _redis_memory()

        breaker = get_breaker()
        for _ in range(breaker.threshold):
            breaker.record_failure(parked_sub)
        assert breaker.state(parked_sub)["state"] == "open"
        redis_peak = 0
        started = time.monotonic()
        self.ingest_batches(web_port, "parked.test", n)
        while _scalar("SELECT count(*) FROM deliveries WHERE parked") < n:
            check_stop()
            redis_peak = max(redis_peak, _redis_memory())
            if time.monotonic() - started > 300:
                raise RuntimeError("deliveries were not parked within 300 s")
            time.sleep(0.25)
        while self.queue_length() or self.unacked():
            check_stop()
            time.sleep(0.1)
        park_seconds = time.monotonic() - started
        time.sleep(1)
        rss_after, redis_after = worker.tree_rss(), _redis_memory()
        self.stack.kill(worker)
        self.stack.reset_data()
        rss_growth = (rss_after - rss_before) / 2**20
        redis_growth = (redis_after - redis_before) / 2**20
        self.add(
            Figure(
                f"worker RSS growth, {n} parked",
                rss_growth,
                "MB",
                rss_before / 2**20,
                "worker RSS before",
                None,
                "< 30 MB",
                rss_growth < 30,
                {"rss_after_mb": rss_after / 2**20, "park_seconds": park_seconds},
            )
        )
        self.add(
            Figure(
                f"Redis memory growth, {n} parked",
                redis_growth,
                "MB",
                redis_before / 2**20,
                "Redis used_memory before",
                None,
                "< 10 MB",
                redis_growth < 10,
                {"redis_after_mb": redis_after / 2**20, "redis_peak_mb": redis_peak / 2**20},
            )
        )


def _routing_figures(report: dict[str, Any]) -> list[Figure]:
    """The routing target (issue 11) as figures: the big tenant against the small one."""
    small, big = report["small"], report["big"]
    rate_ratio = big["rate"] / small["rate"] if small["rate"] else 0.0
    latency_ratio = big["sequential_p50_ms"] / small["sequential_p50_ms"]
    return [
        Figure(
            "ingest to 1 of 1,000 consumers (10,000 subs)",
            big["rate"],
            "events/s",
            small["rate"],
            "same, tenant with 10 subs",
            rate_ratio,
            ">= 0.67",
            rate_ratio >= 1 / 1.5,
            {"p50_ms": big["p50_ms"], "p99_ms": big["p99_ms"]},
        ),
        Figure(
            "ingest p50, 1 of 1,000 consumers, 1 conn",
            big["sequential_p50_ms"],
            "ms",
            small["sequential_p50_ms"],
            "same, tenant with 10 subs",
            latency_ratio,
            "<= 1.5",
            latency_ratio <= 1.5,
        ),
    ]


def _payload(i: int) -> dict[str, Any]:
    return {
        "order_id": f"ord_{i:08d}",
        "amount": 1999 + i % 100,
        "currency": "EUR",
        "customer": {"id": f"cus_{i % 977:05d}", "email": "buyer@example.com"},
        "items": [{"sku": "sku_1", "qty": 1}, {"sku": "sku_2", "qty": 2}],
    }


@lru_cache(maxsize=1)
def _redis() -> Any:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


def _redis_memory() -> int:
    return int(_redis().info("memory")["used_memory"])


def _scalar(sql: str) -> int:
    from sqlalchemy import text

    from webhooks.db import get_engine

    with get_engine().connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


# -- output ----------------------------------------------------------------------------------
def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


HEADER = f"{'figure':<42} {'measured':>18} {'ceiling (same run)':>34} {'ratio':>6}  target"


def _row(f: Figure) -> str:
    ceiling = f"{_fmt(f.ceiling)} ({f.ceiling_name})" if f.ceiling is not None else "-"
    ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
    met = {True: "met", False: "MISSED", None: ""}[f.met]
    line = f"{f.name:<42} {_fmt(f.value, f.unit):>18} {ceiling:>34} {ratio:>6}  {f.target} {met}"
    if "p50_ms" in f.extra:
        line += f"\n{'':<42} p50 {f.extra['p50_ms']:.1f} ms, p99 {f.extra['p99_ms']:.1f} ms"
    if "cpu_ms_per_delivery" in f.extra:
        for label, key in (("delivery", "cpu_ms_per_delivery"), ("no-op", "noop_cpu_ms_per_task")):
            cpu = f.extra[key]
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            total = sum(v for k, v in cpu.items() if k != "worker_main")
            line += f"\n{'':<42} CPU ms per {label}: {parts}; total {total:.2f}"
    if "cpu_ratio" in f.extra:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in f.extra["cpu_ms_per_request"].items())
        bare = f.extra["bare_cpu_ms_per_request"]["web"]
        line += (
            f"\n{'':<42} CPU ms/request: {parts}; bare {bare:.2f}; "
            f"CPU ratio {f.extra['cpu_ratio']:.2f}"
        )
    return line


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }


def markdown(report: dict[str, Any]) -> str:
    """Return the table as Markdown, for docs/performance.md."""
    lines = [
        "| figure | measured | ceiling (same run) | ratio | target | |",
        "|---|---:|---:|---:|---|---|",
    ]
    for f in report["figures"]:
        ceiling = f"{_fmt(f['ceiling'])} ({f['ceiling_name']})" if f["ceiling"] is not None else "-"
        ratio = f"{f['ratio']:.2f}" if f["ratio"] is not None else "-"
        met = {True: "met", False: "**missed**", None: ""}[f["met"]]
        value = _fmt(f["value"], f["unit"])
        if "p50_ms" in f["extra"] and f["unit"] != "ms":
            value += f" (p50 {f['extra']['p50_ms']:.0f} ms, p99 {f['extra']['p99_ms']:.0f} ms)"
        lines.append(f"| {f['name']} | {value} | {ceiling} | {ratio} | {f['target']} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--concurrency", type=int, default=worker_concurrency())
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help="comma-separated scenarios: " + ",".join(SCENARIOS),
    )
    parser.add_argument(
        "--fast-pg",
        action="store_true",
        help="PostgreSQL without fsync (default: durable, as in production)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    sizes = Sizes.quick() if args.quick else Sizes()
    workdir = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
    stack = Stack(workdir, durable_pg=not args.fast_pg)
    began = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "worker": {"pool": args.pool, "concurrency": args.concurrency},
        "durable_pg": not args.fast_pg,
    }
    ok = False
    try:
        stack.start()
        bench = Bench(stack, sizes, args.pool, args.concurrency)
        bench.setup_tenant()
        print(
            f"machine: {report['machine']}\nworker: {args.pool} x {args.concurrency}"
            f"{', quick' if args.quick else ''}\n\n{HEADER}",
            flush=True,
        )
        bench.receiver_alone()
        if only & {"ingest", "batch"}:
            bench.ingest("ingest" in only, "batch" in only)
        steps: list[tuple[str, Callable[[int], None]]] = [
            ("delivery", bench.delivery),
            ("isolation", bench.isolation),
            ("fairness", bench.fairness),
            ("throttle", bench.throttle),
            ("recovery", bench.recovery),
            ("latency", bench.latency),
            ("parked", bench.parked),
            ("routing", bench.routing),
            ("ordering", bench.ordering),
        ]
        if only & {name for name, _ in steps}:
            with stack.web() as port:
                for name, step in steps:
                    if name in only:
                        step(port)
        report["figures"] = [asdict(f) for f in bench.figures]
        report["seconds"] = round(time.monotonic() - began, 1)
        for f in report["figures"]:
            f["extra"].pop("latencies", None)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\n{markdown(report)}\n\nwrote {args.output} in {report['seconds']} s")
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr)
    finally:
        stack.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir / 'logs'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
