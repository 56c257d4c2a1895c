"""Where an ingest request's time goes: cProfile of the API in-process, against real servers.

    python -m benchmarks.profile [single|batch|delivery] [--count N] [--top N]

Runs the Flask app with its test client (no gunicorn, no network for the request itself) on
the bench's own embedded PostgreSQL and Redis, and prints the functions that take the most
time, then the time spent in each package and in the steps of a request (`STEPS`). The app
is set up as gunicorn serves it: metrics written to multiprocess files, and the JSON access
log at INFO (written to a file here). `delivery` profiles the delivery task's body
(`services.delivery.attempt` and `conclude`) against the bench receiver.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.stack import Stack, cpu_ms_per_unit, cpu_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["single", "batch", "delivery"])
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--fast-pg", action="store_true")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="no profiler: CPU milliseconds per item, of this process and of the servers",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="webhooks-profile-"))
    stack = Stack(workdir, durable_pg=not args.fast_pg)
    try:
        stack.start()
        _serve_like_gunicorn(workdir)
        from webhooks import create_app
        from webhooks.db import session_scope
        from webhooks.services.tenants import create_tenant

        with session_scope() as session:
            _, key = create_tenant(session, "profile")
        headers = {"Authorization": f"Bearer {key}"}
        client = create_app({"TESTING": True}).test_client()
        url = f"http://127.0.0.1:{stack.receiver_port}/p"
        resp = client.post(
            "/v1/subscriptions", json={"url": url, "event_types": ["*"]}, headers=headers
        )
        assert resp.status_code == 201, resp.get_json()
        payload = {
            "order_id": "ord_1",
            "amount": 1999,
            "currency": "EUR",
            "customer": {"id": "cus_1", "email": "buyer@example.com"},
        }

        if args.what == "single":
            count = args.count or 500
            body = {"event_type": "order.created", "payload": payload}

            def work() -> None:
                for _ in range(count):
                    assert client.post("/v1/events", json=body, headers=headers).status_code == 202
        elif args.what == "batch":
            count = args.count or 10
            body = {"events": [{"event_type": "order.created", "payload": payload}] * 500}
            raw = json.dumps(body)

            def work() -> None:
                for _ in range(count):
                    resp = client.post(
                        "/v1/events/batch",
                        data=raw,
                        headers=headers,
                        content_type="application/json",
                    )
                    assert resp.status_code == 202
        else:
            from sqlalchemy import text

            from webhooks.db import get_engine
            from webhooks.services import delivery

            count = args.count or 500
            events = [{"event_type": "order.created", "payload": payload}] * count
            for start in range(0, count, 500):
                client.post(
                    "/v1/events/batch",
                    json={"events": events[start : start + 500]},
                    headers=headers,
                )
            with get_engine().connect() as conn:
                ids = [str(i) for i in conn.execute(text("SELECT id FROM deliveries")).scalars()]

            def work() -> None:
                # The task's body, the attempt and its conclusion, as for a pick of this
                # healthy subscription (its circuit seen closed: no question to the breaker).
                for delivery_id in ids:
                    step = delivery.attempt(delivery_id, circuit_closed=True)
                    delivery.conclude(delivery_id, step)

        if args.cpu:
            print(_cpu(work, count, stack))
            return 0
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        work()
        profiler.disable()
        elapsed = time.perf_counter() - started
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
        if os.environ.get("PROFILE_CALLERS"):
            stats.print_callers(os.environ["PROFILE_CALLERS"])
        print(out.getvalue())
        print(_summary(stats, elapsed, count))
        print(f"{args.what}: {count} in {elapsed:.2f} s under the profiler")
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


# The steps of an ingest request, timed inclusively: label | file suffix | function. A "+"
# label adds that function to the step above; an indented label is a part of the step above.
STEPS_TABLE = """
authentication and rate limit (before the view) | webhooks/ratelimit.py | _gate
  of which the Redis round trip | webhooks/ratelimit.py | count
  of which the key lookup (cache misses) | webhooks/services/tenants.py | lookup
reading and validating the body (webargs) | webargs/core.py | parse
the ingest statement (with the connection checkout) | webhooks/services/ingest.py | _insert
its COMMIT | sqlalchemy/orm/session.py | commit
sending the delivery task | webhooks/dispatch.py | enqueue_deliveries
the answer (schema dump) | marshmallow/schema.py | dump
access log line | webhooks/__init__.py | _finish
request metrics (prometheus-flask-exporter) | prometheus_flask_exporter/__init__.py | after_request
+ | prometheus_flask_exporter/__init__.py | before_request
rate-limit headers | webhooks/ratelimit.py | _headers
closing the session | webhooks/api/common.py | close_db
"""
STEPS = [
    (label.rstrip(), path.strip(), name.strip())
    for label, path, name in (line.split("|") for line in STEPS_TABLE.strip("\n").splitlines())
]


def _cumulative(raw: dict[Any, Any], suffix: str, name: str) -> float:
    """Return the inclusive time of the outermost function of that name in that file."""
    times = [v[3] for (path, _, func), v in raw.items() if func == name and path.endswith(suffix)]
    return max(times, default=0.0)


def _summary(stats: pstats.Stats, elapsed: float, count: int) -> str:
    """Return the inclusive time of each step, per request and as a share of the request."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = elapsed / count
    lines = [f"{'step':<58} {'ms/request':>10} {'share':>6}"]
    shown = 0.0
    for i, (label, suffix, name) in enumerate(STEPS):
        cumulative = _cumulative(raw, suffix, name)
        if label == "+":  # added to the step above
            continue
        for extra_label, extra_suffix, extra_name in STEPS[i + 1 :]:
            if extra_label != "+":
                break
            cumulative += _cumulative(raw, extra_suffix, extra_name)
        ms = cumulative / count * 1000
        if not label.startswith("  "):
            shown += ms
        lines.append(f"{label:<58} {ms:>10.3f} {ms / (total * 1000):>6.0%}")
    rest = total * 1000 - shown
    label = "the rest (Flask, werkzeug, the test client)"
    lines.append(f"{label:<58} {rest:>10.3f} {rest / (total * 1000):>6.0%}")
    lines.append(f"{'whole request, under the profiler':<58} {total * 1000:>10.3f}")
    return "\n".join(lines)


def _cpu(work: Any, count: int, stack: Stack) -> str:
    """Run `work` without a profiler; return the CPU milliseconds per item of this process
    (where the code runs), PostgreSQL, Redis and the receiver, and the wall time per item."""
    # This process alone: PostgreSQL, Redis and the receiver are its children too.
    roots, alone = {"this process": os.getpid(), **stack.server_pids()}, ("this process",)
    before, started = cpu_seconds(roots, alone), time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    cpu = cpu_ms_per_unit(roots, before, count, alone)
    parts = ", ".join(f"{k} {v:.3f}" for k, v in cpu.items())
    return f"CPU ms per item: {parts}; wall {elapsed * 1000 / count:.3f} ms per item"


def _serve_like_gunicorn(workdir: Path) -> None:
    """Set up metrics and logs as config/gunicorn.py and the Procfile do."""
    import logging

    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["WEBHOOKS_LOG_LEVEL"] = "INFO"
    from webhooks.logs import JsonFormatter

    handler = logging.FileHandler(workdir / "access.log")  # closed with the process
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
