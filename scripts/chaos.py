"""`make chaos`: a long mixed run against real processes; prints lost, failed and duplicated.

It starts its own embedded PostgreSQL and Redis, the API under gunicorn (as the Procfile does),
celery workers, two beats (so two watchdogs run at once) and a receiver process. While thousands
of events arrive through the API it kills workers with SIGKILL and restarts them, restarts Redis
empty, kills PostgreSQL with SIGKILL and restarts it 7 s later, takes one subscriber down for a
while, and keeps one subscriber that fails the first two receipts of every message. Then it
waits for the backlog to drain and checks every delivery by webhook-id at the receiver and in
PostgreSQL.

A second phase parks 20,000 deliveries behind an open circuit and reports how much the workers'
memory (RSS summed over each worker's process tree) and Redis's used_memory grew.

    python -m scripts.chaos [--events 3000] [--rate 50] [--parked 20000] [--skip-parked]

Exits non-zero when a delivery was lost or failed, ingest answered 5xx (other than 503
"unavailable" with Retry-After while PostgreSQL was down), or a memory target
was missed. Every process it starts is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.embedded import EmbeddedPostgres, EmbeddedRedis, Server, free_port
from scripts.harness import BIN, ROOT, Process, Received, Receiver, Reply, wait_until

# Short waits so a few minutes hold many retries, outages and recoveries. The breaker's
# threshold is high because /flaky fails two requests in three: after the Redis restart the
# watchdog re-sends hundreds of its first attempts at once, which all fail, and a lower
# threshold opens its circuit; its deliveries then still all arrive, but a few per probe cycle
# (see docs/reliability.md). /outage fails every request, so even this threshold opens its
# circuit within seconds, long before a delivery spends its 7 retries (about a minute).
CHAOS_ENV = {
    "WEBHOOKS_RETRY_DELAYS": "0.5,1,2,4,8,15,30",
    "WEBHOOKS_RETRY_JITTER": "0.1",
    "WEBHOOKS_HTTP_TIMEOUT_SECONDS": "5",
    "WEBHOOKS_LEASE_MARGIN_SECONDS": "5",
    "WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD": "1000",
    "WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS": "3",
    "WEBHOOKS_WATCHDOG_INTERVAL_SECONDS": "1",
    "WEBHOOKS_LOST_AFTER_SECONDS": "10",
    "WEBHOOKS_WORKER_METRICS_PORT": "0",
    "WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
    "WEBHOOKS_RATE_LIMIT": "10000000/minute",
    "WEBHOOKS_LOG_LEVEL": "WARNING",
    "WEB_CONCURRENCY": "2",
}
PATHS = ("/healthy", "/flaky", "/outage")
PARKED_PATH = "/parked"
MIXED_TYPE = "order.created"
PARKED_TYPE = "parked.hold"
RSS_TARGET_MB = 30.0
REDIS_TARGET_MB = 10.0


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# The receiver ------------------------------------------------------------------------------


def serve_receiver(port: int) -> None:
    """Run the receiver: count receipts per webhook-id and path; answer as each path's role says.

    /healthy always answers 204, /flaky answers 500 to the first two receipts of each message,
    /outage and /parked answer 503 while marked down (POST /_down/<name>, /_up/<name>).
    GET /_stats returns {path: {webhook_id: [receipts, 2xx answers]}}.
    """
    lock = threading.Lock()
    seen: dict[str, dict[str, list[int]]] = {p: {} for p in (*PATHS, PARKED_PATH)}
    down: set[str] = set()

    def answer(item: Received) -> Reply:
        if item.path.startswith(("/_down/", "/_up/")):
            name = "/" + item.path.rsplit("/", 1)[1]
            with lock:
                (down.add if item.path.startswith("/_down/") else down.discard)(name)
            return Reply(204)
        with lock:
            counts = seen.setdefault(item.path, {}).setdefault(
                item.headers.get("webhook-id", ""), [0, 0]
            )
            counts[0] += 1
            if item.path in down:
                return Reply(503)
            if item.path == "/flaky" and counts[0] <= 2:
                return Reply(500)
            counts[1] += 1
        return Reply(204)

    def stats(path: str) -> Reply:
        with lock:
            return Reply(200, body=json.dumps(seen).encode())

    Receiver(port, default=answer, record=False, on_get=stats, backlog=256).serve_forever()


# Processes ---------------------------------------------------------------------------------


def _http(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    import urllib3

    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"content-type": "application/json", **(headers or {})}
    resp = _POOL.request(
        method, url, body=data, headers=hdrs, timeout=urllib3.Timeout(total=timeout), retries=False
    )
    try:
        payload = json.loads(resp.data) if resp.data else None
    except ValueError:
        payload = resp.data.decode(errors="replace")
    return resp.status, payload


def _unavailable(body: Any) -> bool:
    return isinstance(body, dict) and body.get("error", {}).get("code") == "unavailable"


def _pool() -> Any:
    import urllib3

    return urllib3.PoolManager(maxsize=16, block=False)


_POOL: Any = None


class Stopping(Exception):
    """The run is being stopped: start nothing new."""


@dataclass
class Stack:
    """Everything the run starts, stopped in reverse order by close()."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    pg: Any = None
    redis: Any = None
    api_url: str = ""
    receiver_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    procs: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    # Held while starting a process or restarting Redis, so close() never misses one that the
    # chaos thread is starting at that moment; after close() nothing starts any more.
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: bool = False

    def start(self, name: str, args: list[str], ready: str | None = None) -> Process:
        with self.lock:
            if self.closing:
                raise Stopping
            proc = Process(args, self.env, self.tmp / f"{name}.log", name=name)
            self.procs.append(proc)
        if ready:
            proc.wait_for_log(ready)
        return proc

    def worker(self, index: int, concurrency: int) -> Process:
        args = [
            str(BIN / "celery"),
            "-A",
            "tasks",
            "worker",
            "--loglevel=WARNING",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "-Q",
            "webhooks,control",
            "-n",
            f"chaos{index}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
        # Logging is at WARNING: the banner's queue list is the sign it started.
        return self.start(f"worker{index}", args, ready="[queues]")

    def restart(self, server: Server, down: float) -> None:
        """kill -9 an embedded server, wait, start it again: Redis comes back empty (it keeps
        no data), PostgreSQL through crash recovery."""
        with self.lock:
            if self.closing:
                raise Stopping
            server.kill()
            time.sleep(down)
            server.start()

    def close(self) -> None:
        with self.lock:
            self.closing = True
            procs = list(self.procs)
        for proc in reversed(procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {proc.name}: {exc}")
        if self.redis is not None:
            self.redis.kill()
        if self.pg is not None:
            self.pg.stop()


def start_stack(stack: Stack, args: argparse.Namespace) -> None:
    """Start the servers and processes; each is on `stack` as soon as it runs, for close()."""
    from scripts.run import create_tenant

    tmp = stack.tmp
    # Durable, as in production: the run kills PostgreSQL too, and every 202 must survive it.
    stack.pg = EmbeddedPostgres(tmp / "postgres")
    stack.pg.start()
    database_url = stack.pg.create_database("webhooks")
    stack.redis = EmbeddedRedis(tmp / "redis")  # no persistence: a restart comes back empty
    redis_url = stack.redis.start()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(CHAOS_ENV)
    env["WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD"] = str(args.threshold)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        WEBHOOKS_SECRET_KEY=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        WEBHOOKS_VAR_DIR=str(tmp / "var"),
        PORT=str(port),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    stack.env = env
    subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.headers = {"Authorization": f"Bearer {create_tenant(env, 'chaos')}"}

    receiver_port = free_port()
    stack.start(
        "receiver", [sys.executable, "-m", "scripts.chaos", "--serve-receiver", str(receiver_port)]
    )
    stack.receiver_url = f"http://127.0.0.1:{receiver_port}"
    stack.start(
        "web", [str(BIN / "gunicorn"), "--config", "config/gunicorn.py", "webhooks.wsgi:app"]
    )
    stack.api_url = f"http://127.0.0.1:{port}"
    _wait(lambda: _try_status(f"{stack.api_url}/healthz") == 200, 60, "the API")
    _wait(lambda: _try_status(f"{stack.receiver_url}/_stats", "GET") == 200, 30, "the receiver")

    for index in range(args.workers):
        stack.workers.append(stack.worker(index, args.concurrency))
    for index in range(2):  # two beats: two watchdogs run at once, as with two schedulers
        args = [str(BIN / "celery"), "-A", "tasks", "beat", "--loglevel=INFO"]
        stack.start(f"beat{index}", [*args, "-s", str(tmp / f"beat{index}")], "beat: Starting...")


def _try_status(url: str, method: str = "GET") -> int:
    try:
        return _http(method, url, timeout=2)[0]
    except Exception:
        return 0


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    try:
        return wait_until(predicate, timeout, interval, what)
    except AssertionError as exc:
        raise RuntimeError(str(exc)) from None


def _sql(stack: Stack, query: str, **params: Any) -> list[Any]:
    import psycopg

    with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _subscribe(stack: Stack, path: str, event_type: str) -> str:
    status, body = _http(
        "POST",
        f"{stack.api_url}/v1/subscriptions",
        stack.headers,
        {"url": stack.receiver_url + path, "event_types": [event_type]},
    )
    assert status == 201, body
    return str(body["id"])


def _set_down(stack: Stack, path: str, down: bool) -> None:
    _http("POST", f"{stack.receiver_url}/{'_down' if down else '_up'}{path}")


# Phase 1: the mixed run ---------------------------------------------------------------------


@dataclass
class Ingest:
    answers: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    accepted: list[tuple[str, int]] = field(default_factory=list)  # (event id, deliveries)
    unavailable: int = 0  # 503 "unavailable" while PostgreSQL was down
    lock: threading.Lock = field(default_factory=threading.Lock)


def publish_paced(stack: Stack, events: int, rate: float, threads: int = 6) -> Ingest:
    """POST `events` events at about `rate` per second from a few threads."""
    ingest = Ingest()
    start = time.monotonic()
    counter = iter(range(events))
    counter_lock = threading.Lock()

    def run() -> None:
        while True:
            with counter_lock:
                n = next(counter, None)
            if n is None:
                return
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                status, body = _http(
                    "POST",
                    f"{stack.api_url}/v1/events",
                    stack.headers,
                    {"event_type": MIXED_TYPE, "payload": {"n": n}},
                )
            except Exception as exc:
                with ingest.lock:
                    ingest.errors[type(exc).__name__] += 1
                continue
            with ingest.lock:
                if status == 503 and _unavailable(body):
                    # The database is down: refused with Retry-After, not accepted, not lost.
                    ingest.unavailable += 1
                    continue
                ingest.answers[status] += 1
                if status == 202:
                    ingest.accepted.append((body["id"], body["deliveries"]))

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return ingest


@dataclass
class Chaos:
    """What the chaos thread did: its kill -9s by target ("worker", "pool child", "Redis",
    "PostgreSQL"; the servers are started again) and how long /outage was down."""

    kills: Counter[str] = field(default_factory=Counter)
    outage_seconds: float = 0.0


def run_chaos(
    stack: Stack, args: argparse.Namespace, duration: float, stop: threading.Event, chaos: Chaos
) -> None:
    """Kill workers at random, restart Redis and PostgreSQL once, take /outage down a while."""
    # Stopping: the run is being stopped (Ctrl-C, an error), close() takes it from here.
    with contextlib.suppress(Stopping):
        _chaos_loop(stack, args, duration, stop, chaos)


def _chaos_loop(
    stack: Stack, args: argparse.Namespace, duration: float, stop: threading.Event, chaos: Chaos
) -> None:
    rng = random.Random(args.seed)
    started = time.monotonic()
    outage_at = started + 0.15 * duration
    outage_until = outage_at + args.outage
    redis_at = started + 0.45 * duration
    pg_at = started + 0.7 * duration
    next_kill = started + rng.uniform(4, 8)
    in_outage = False
    while not stop.is_set() and not stack.closing:
        now = time.monotonic()
        if not in_outage and outage_at <= now < outage_until:
            log(f"subscriber /outage goes down for {args.outage:g} s")
            _set_down(stack, "/outage", True)
            in_outage = True
        elif in_outage and now >= outage_until:
            log("subscriber /outage is back")
            _set_down(stack, "/outage", False)
            chaos.outage_seconds = now - outage_at
            in_outage = False
        if redis_at and now >= redis_at:
            log("Redis: kill -9, 3 s down, started again empty")
            stack.restart(stack.redis, down=3)
            chaos.kills["Redis"] += 1
            redis_at = 0.0
        if pg_at and now >= pg_at:
            log("PostgreSQL: kill -9, 7 s down, started again (crash recovery)")
            stack.restart(stack.pg, down=7)
            chaos.kills["PostgreSQL"] += 1
            pg_at = 0.0
        if now >= next_kill and now < started + duration:
            # Take turns, so every worker is hit; what is killed is left to chance.
            index = (chaos.kills["worker"] + chaos.kills["pool child"]) % len(stack.workers)
            worker = stack.workers[index]
            if rng.random() < 0.5:
                children = worker.children()
                if children:
                    os.kill(rng.choice(children), signal.SIGKILL)
                    chaos.kills["pool child"] += 1
                    log(f"kill -9 of a pool child of worker{index}")
            else:
                worker.kill()
                chaos.kills["worker"] += 1
                log(f"kill -9 of worker{index} (its whole process group); restarting it")
                time.sleep(rng.uniform(0.5, 2))
                stack.workers[index] = stack.worker(index, args.concurrency)
            next_kill = time.monotonic() + rng.uniform(5, 10)
        time.sleep(0.1)
    if in_outage and not stack.closing:
        _set_down(stack, "/outage", False)
        chaos.outage_seconds = time.monotonic() - outage_at


def mixed_run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    subs = {path: _subscribe(stack, path, MIXED_TYPE) for path in PATHS}
    duration = args.events / args.rate
    log(
        f"mixed run: {args.events} events at {args.rate:g}/s (~{duration:.0f} s) to "
        f"{len(subs)} subscriptions, {args.workers} workers x {args.concurrency}"
    )
    stop = threading.Event()
    chaos = Chaos()
    chaos_thread = threading.Thread(
        target=run_chaos, args=(stack, args, duration, stop, chaos), daemon=True
    )
    chaos_thread.start()
    started = time.monotonic()
    ingest = publish_paced(stack, args.events, args.rate)
    published_at = time.monotonic()
    stop.set()
    chaos_thread.join()
    log(
        f"published in {published_at - started:.0f} s: answers {dict(ingest.answers)}"
        f"{', errors ' + str(dict(ingest.errors)) if ingest.errors else ''}"
    )

    def unsettled() -> int:
        return _sql(
            stack, "SELECT count(*) FROM deliveries WHERE status NOT IN ('delivered', 'failed')"
        )[0][0]

    drained = True
    deadline = time.monotonic() + args.timeout
    next_report = time.monotonic() + 10
    path_of = {sub: path for path, sub in subs.items()}
    while (left := unsettled()) > 0:
        if time.monotonic() > deadline:
            drained = False
            log(f"not drained after {args.timeout:g} s: {left} deliveries unsettled")
            break
        if time.monotonic() > next_report:
            rows = _sql(
                stack,
                "SELECT subscription_id::text, status, parked, count(*)"
                " FROM deliveries WHERE status NOT IN ('delivered', 'failed')"
                " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            )
            waiting = ", ".join(
                f"{path_of.get(s, s)} {st}{' parked' if p else ''} {n}" for s, st, p, n in rows
            )
            log(f"draining: {left} left ({waiting})")
            next_report = time.monotonic() + 10
        time.sleep(0.5)
    drain_seconds = time.monotonic() - published_at
    return {
        "subs": subs,
        "ingest": ingest,
        "chaos": chaos,
        "drained": drained,
        "drain_seconds": drain_seconds,
        "publish_seconds": published_at - started,
    }


def check_mixed(stack: Stack, run: dict[str, Any]) -> dict[str, Any]:
    """Compare what the API accepted, what PostgreSQL holds and what the receiver saw."""
    ingest: Ingest = run["ingest"]
    path_of = {sub: path for path, sub in run["subs"].items()}
    rows = _sql(stack, "SELECT id::text, subscription_id::text, status FROM deliveries")
    stats = _http("GET", f"{stack.receiver_url}/_stats")[1]
    expected = sum(n for _, n in ingest.accepted)
    missing_rows = expected - len(rows)
    not_arrived = [r for r in rows if stats[path_of[r[1]]].get(r[0], [0, 0])[1] == 0]
    failed_db = sum(1 for r in rows if r[2] == "failed")
    failed_api = 0
    cursor = None
    while True:
        query = "status=failed&limit=500" + (f"&cursor={cursor}" if cursor else "")
        _, page = _http("GET", f"{stack.api_url}/v1/deliveries?{query}", stack.headers)
        failed_api += len(page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    healthy = stats["/healthy"]
    extra = {path: sum(c[0] - 1 for c in stats[path].values()) for path in PATHS}
    return {
        "accepted_events": len(ingest.accepted),
        "expected_deliveries": expected,
        "lost": max(0, missing_rows) + len(not_arrived),
        "failed": max(failed_db, failed_api),
        "duplicated": sum(c[0] - 1 for c in healthy.values()),
        "duplicated_2xx_flaky_outage": sum(
            max(0, c[1] - 1) for p in ("/flaky", "/outage") for c in stats[p].values()
        ),
        "receipts_beyond_first": extra,
        "ingest_5xx": sum(n for status, n in ingest.answers.items() if status >= 500),
        "ingest_unavailable": ingest.unavailable,
        "ingest_other": {s: n for s, n in ingest.answers.items() if s != 202 and s < 500},
        "ingest_errors": dict(ingest.errors),
    }


# Phase 2: memory while deliveries are parked ---------------------------------------------------


def _redis_used(stack: Stack) -> int:
    import redis

    return int(redis.Redis.from_url(stack.env["REDIS_URL"]).info("memory")["used_memory"])


def _all_parked(stack: Stack, sub: str, count: int) -> bool:
    """Whether `count` of the subscription's deliveries are parked and nothing else waits."""
    import redis

    # Not the "unacked" hash: workers killed earlier leave entries there until the visibility
    # timeout, and the watchdog has long re-sent their deliveries from PostgreSQL.
    if redis.Redis.from_url(stack.env["REDIS_URL"]).llen("webhooks"):
        return False
    parked, other = _sql(
        stack,
        "SELECT count(*) FILTER (WHERE parked), count(*) FILTER (WHERE NOT parked AND status IN"
        " ('pending', 'retrying', 'in_flight')) FROM deliveries WHERE subscription_id = %(s)s",
        s=sub,
    )[0]
    # A probe may be out of the parked set for a moment.
    return parked >= count - 1 and other <= 1


def _publish_batch(stack: Stack, count: int, start: int) -> None:
    for first in range(start, start + count, 500):
        size = min(500, start + count - first)
        events = [
            {"event_type": PARKED_TYPE, "payload": {"n": n}} for n in range(first, first + size)
        ]
        status, body = _http(
            "POST",
            f"{stack.api_url}/v1/events/batch",
            stack.headers,
            {"events": events},
            timeout=60,
        )
        if status != 202:
            raise RuntimeError(f"batch ingest answered {status}: {body}")


def _parked_count(stack: Stack, sub: str) -> int:
    return _sql(
        stack, "SELECT count(*) FROM deliveries WHERE subscription_id = %(s)s AND parked", s=sub
    )[0][0]


def _open_circuit(stack: Stack, sub: str, threshold: int) -> None:
    import redis

    from webhooks.circuit import CircuitBreaker

    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    breaker = CircuitBreaker(client, threshold, cooldown=3, probe_ttl=60, failing_for=0)
    for _ in range(threshold):
        breaker.record_failure(sub)


def parked_memory(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """Park `args.parked` deliveries behind an open circuit; measure worker and Redis growth."""
    sub = _subscribe(stack, PARKED_PATH, PARKED_TYPE)
    _set_down(stack, PARKED_PATH, True)
    health_url = f"{stack.api_url}/v1/subscriptions/{sub}/health"
    # Enough failing deliveries to open the circuit (the threshold counts consecutive
    # failures), which then park; they also warm the workers up before the baseline.
    warmup = max(1000, 2 * args.threshold)
    _publish_batch(stack, warmup, 0)
    # Its 503s halve its adaptive concurrency and rate (docs/scheduling.md), so `threshold`
    # failures in a row (1000 in this run, for /flaky's sake) would take many minutes: the
    # circuit is opened as that many failures would open it.
    _open_circuit(stack, sub, args.threshold)
    _wait(
        lambda: _http("GET", health_url, stack.headers)[1]["circuit"]["state"] != "closed",
        120,
        "the circuit to open",
    )
    _wait(
        lambda: _all_parked(stack, sub, warmup),
        180,
        "the warm-up deliveries to park",
    )
    time.sleep(2)
    rss_before = sum(w.tree_rss() for w in stack.workers)
    redis_before = _redis_used(stack)
    log(f"parking {args.parked} deliveries behind the open circuit of {PARKED_PATH}")
    started = time.monotonic()
    _publish_batch(stack, args.parked, warmup)
    total = warmup + args.parked
    _wait(
        lambda: _all_parked(stack, sub, total),
        600,
        "every delivery to park",
        interval=1,
    )
    park_seconds = time.monotonic() - started
    time.sleep(2)
    rss_after = sum(w.tree_rss() for w in stack.workers)
    redis_after = _redis_used(stack)
    result = {
        "parked": _parked_count(stack, sub),
        "park_seconds": park_seconds,
        "worker_rss_before_mb": rss_before / 2**20,
        "worker_rss_growth_mb": (rss_after - rss_before) / 2**20,
        "redis_before_mb": redis_before / 2**20,
        "redis_growth_mb": (redis_after - redis_before) / 2**20,
    }
    if args.drain_parked:
        log("subscriber /parked recovers: the next probe closes the circuit, all are released")
        _set_down(stack, PARKED_PATH, False)
        started = time.monotonic()
        _wait(
            lambda: (
                _sql(
                    stack,
                    "SELECT count(*) FROM deliveries WHERE subscription_id = %(s)s"
                    " AND status <> 'delivered'",
                    s=sub,
                )[0][0]
                == 0
            ),
            args.timeout,
            "the parked deliveries to drain",
            interval=1,
        )
        result["parked_drain_seconds"] = time.monotonic() - started
    return result


# Main --------------------------------------------------------------------------------------


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000, help="events in the mixed run")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="pool size of each worker")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds /outage is down")
    parser.add_argument(
        "--threshold", type=int, default=1000, help="WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD of the run"
    )
    parser.add_argument("--parked", type=int, default=20_000, help="deliveries to park")
    parser.add_argument(
        "--parked-memory", action="store_true", help="only the parked-memory phase, no mixed run"
    )
    parser.add_argument("--skip-parked", action="store_true", help="only the mixed run")
    parser.add_argument(
        "--drain-parked",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="deliver the parked deliveries at the end (default: yes)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait to drain")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the kills")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data folder")
    parser.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0

    global _POOL
    _POOL = _pool()
    # Ctrl-C and SIGTERM both end the run through the finally below, even when started in the
    # background by a shell (which would have it ignore SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    stack = Stack(Path(tempfile.mkdtemp(prefix="webhooks-chaos-")))
    ok = True
    try:
        start_stack(stack, args)
        log(f"started: API {stack.api_url}, receiver {stack.receiver_url}, logs in {stack.tmp}")
        if not args.parked_memory:
            run = mixed_run(stack, args)
            result = check_mixed(stack, run)
            chaos: Chaos = run["chaos"]
            print()
            print("mixed run")
            print(
                f"  events accepted       {result['accepted_events']}"
                f" ({result['expected_deliveries']} deliveries)"
            )
            print(
                f"  chaos                 {chaos.kills['worker']} worker kills,"
                f" {chaos.kills['pool child']} pool-child kills, {chaos.kills['Redis']} Redis"
                f" restart, {chaos.kills['PostgreSQL']} PostgreSQL restart,"
                f" /outage down {chaos.outage_seconds:.0f} s"
            )
            print(f"  lost                  {result['lost']}")
            print(f"  failed                {result['failed']}")
            print(
                f"  duplicated            {result['duplicated']} (receipts beyond the first"
                " per webhook-id at /healthy)"
            )
            print(f"  receipts beyond first {result['receipts_beyond_first']}")
            print(
                f"  ingest 5xx            {result['ingest_5xx']}"
                f"  503 while PostgreSQL was down {result['ingest_unavailable']}"
                f"  other {result['ingest_other'] or 0}  errors {result['ingest_errors'] or 0}"
            )
            print(f"  publish time          {run['publish_seconds']:.1f} s")
            print(
                f"  time to drain         {run['drain_seconds']:.1f} s after the last event"
                f"{'' if run['drained'] else ' (NOT DRAINED)'}"
            )
            ok &= result["lost"] == 0 and result["failed"] == 0 and result["ingest_5xx"] == 0
            ok &= run["drained"]
        if not args.skip_parked:
            mem = parked_memory(stack, args)
            print()
            print("parked deliveries")
            print(
                f"  parked                {mem['parked']} behind an open circuit"
                f" (in {mem['park_seconds']:.0f} s)"
            )
            print(
                f"  worker RSS growth     {mem['worker_rss_growth_mb']:+.1f} MB"
                f" (from {mem['worker_rss_before_mb']:.0f} MB; target < {RSS_TARGET_MB:g})"
            )
            print(
                f"  Redis memory growth   {mem['redis_growth_mb']:+.2f} MB"
                f" (from {mem['redis_before_mb']:.1f} MB; target < {REDIS_TARGET_MB:g})"
            )
            if "parked_drain_seconds" in mem:
                print(
                    f"  released and drained  in {mem['parked_drain_seconds']:.1f} s"
                    " after the subscriber recovered"
                )
            ok &= mem["worker_rss_growth_mb"] < RSS_TARGET_MB
            ok &= mem["redis_growth_mb"] < REDIS_TARGET_MB
        print()
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("stopping every process")
        stack.close()
        if args.keep:
            log(f"logs and data kept in {stack.tmp}")
        else:
            shutil.rmtree(stack.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
