"""Routing fan-out: does a tenant's count of non-matching subscriptions cost its ingest?

    python -m benchmarks.routing [--seconds 5] [--rounds 2]

Two tenants in one run, through gunicorn as the Procfile runs it (durable PostgreSQL, Redis):
`small` has 10 subscriptions of one consumer; `big` has 10,000 over 1,000 consumers (10 each).
In both, half the subscriptions carry a payload filter, and every event names one consumer
and matches its 10 subscriptions: the same 10 deliveries per event. The issue's target (11):
single-event ingest to `big` within 1.5x the latency and rate of `small`. The tenants take
turns, `rounds` times each, so that the machine's noise falls on both.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.load import LoadResult, request_bytes, run_load
from benchmarks.stack import ROOT, Stack, interrupt

RESULTS = ROOT / "benchmarks" / "results"
PER_CONSUMER = 10
CONNECTIONS = 8


def populate(name: str, consumers: int) -> tuple[dict[str, str], list[str]]:
    """Create a tenant with `consumers` consumers of PER_CONSUMER subscriptions each, half of
    them filtered; return its auth header and its consumers' uids."""
    from sqlalchemy import text

    from webhooks.db import session_scope
    from webhooks.services.filters import compile_filter
    from webhooks.services.tenants import create_tenant

    with session_scope() as session:
        tenant, key = create_tenant(session, name)
        tenant_id = tenant.id
        session.execute(
            text(
                "INSERT INTO consumers (id, tenant_id, uid, name)"
                " SELECT gen_random_uuid(), :t, 'cus_' || n, 'Customer ' || n"
                " FROM generate_series(0, :n - 1) AS n"
            ),
            {"t": tenant_id, "n": consumers},
        )
        # Filters that hold for the bench's payloads, each its own compiled predicate.
        session.execute(
            text(
                """
INSERT INTO subscriptions (id, tenant_id, consumer_id, url, event_types, status, headers,
                           secret_ciphertext, filter, filter_path)
SELECT gen_random_uuid(), :t, c.id, 'http://127.0.0.1:9/' || c.uid || '/' || k,
       ARRAY['order.paid', 'order.refunded'], 'active', '{}', '\\x00',
       CASE WHEN k % 2 = 0 THEN jsonb_build_object('amount', jsonb_build_object('$gte', k))
       END,
       CASE WHEN k % 2 = 0 THEN replace(:path, '12345', k::text)::jsonpath END
  FROM consumers c, generate_series(0, :per - 1) AS k
 WHERE c.tenant_id = :t
"""
            ),
            {
                "t": tenant_id,
                "per": PER_CONSUMER,
                "path": compile_filter({"amount": {"$gte": 12345}}),
            },
        )
        session.execute(text("ANALYZE subscriptions; ANALYZE consumers"))
    uids = [f"cus_{n}" for n in range(consumers)]
    return {"Authorization": f"Bearer {key}"}, uids


def requests(auth: dict[str, str], uids: list[str], count: int = 64) -> list[bytes]:
    picked = random.Random(7).sample(uids, min(count, len(uids)))
    return [
        request_bytes(
            "/v1/events",
            json.dumps(
                {
                    "event_type": "order.paid",
                    "consumer": uid,
                    "payload": {"order_id": n, "amount": 1000, "currency": "EUR"},
                }
            ).encode(),
            auth,
        )
        for n, uid in enumerate(picked)
    ]


def deliveries_per_event() -> dict[str, float]:
    from sqlalchemy import text

    from webhooks.db import get_engine

    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.name, count(d.id)::float / count(DISTINCT e.id) FROM events e"
                " JOIN tenants t ON t.id = e.tenant_id"
                " LEFT JOIN deliveries d ON d.event_id = e.id GROUP BY t.name"
            )
        ).all()
    return {name: ratio for name, ratio in rows}


def explain(uid_of_big: str) -> list[str]:
    """The plans of ingest's two lookups for one consumer of the big tenant: the consumer by
    uid, and the `targets` part of the ingest statement."""
    from sqlalchemy import text

    from webhooks.db import get_engine

    plans: list[str] = []
    with get_engine().connect() as conn:
        tenant_id, consumer_id = conn.execute(
            text(
                "SELECT tenant_id, id FROM consumers WHERE uid = :uid AND tenant_id ="
                " (SELECT id FROM tenants WHERE name = 'big')"
            ),
            {"uid": uid_of_big},
        ).one()
        for sql, params in (
            (
                "SELECT uid, id FROM consumers WHERE tenant_id = :t AND deleted_at IS NULL"
                " AND uid IN (:uid)",
                {"t": tenant_id, "uid": uid_of_big},
            ),
            (
                "SELECT id FROM subscriptions WHERE tenant_id = :t AND status = 'active'"
                " AND deleted_at IS NULL AND consumer_id = ANY(CAST(:c AS uuid[]))"
                " AND event_types && CAST(:w AS varchar[])",
                {"t": tenant_id, "c": [str(consumer_id)], "w": ["order.paid", "*"]},
            ),
        ):
            rows = conn.execute(
                text("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql), params
            ).all()
            plans.append("\n".join(r[0] for r in rows))
    return plans


def measure(stack: Stack, port: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Populate both tenants on a running stack and measure them; return the report."""
    small_auth, small_uids = populate("small", 1)
    big_auth, big_uids = populate("big", 1000)
    loads = {"small": requests(small_auth, small_uids), "big": requests(big_auth, big_uids)}
    results: dict[str, list[LoadResult]] = {"small": [], "big": []}
    sequential: dict[str, list[LoadResult]] = {"small": [], "big": []}
    for name in loads:
        run_load(port, loads[name], CONNECTIONS, 1)  # warm-up (and prepared plans)
    for n in range(rounds):
        # Each tenant goes first in every other round: the noise falls on both.
        for name in sorted(loads, reverse=n % 2 == 1):
            reqs = loads[name]
            results[name].append(run_load(port, reqs, CONNECTIONS, seconds))
            sequential[name].append(run_load(port, reqs, 1, seconds / 2, 1))
    report: dict[str, Any] = {"deliveries_per_event": deliveries_per_event()}
    for name in loads:
        merged = LoadResult()
        for r in results[name]:
            merged.requests += r.requests
            merged.seconds += r.seconds
            merged.latencies += r.latencies
            merged.errors += r.errors
        alone = LoadResult()
        for r in sequential[name]:
            alone.latencies += r.latencies
        report[name] = {
            "rate": round(merged.rate, 1),
            "p50_ms": round(merged.percentile(50), 2),
            "p99_ms": round(merged.percentile(99), 2),
            "sequential_p50_ms": round(alone.percentile(50), 2),
            "errors": merged.errors,
        }
    small, big = report["small"], report["big"]
    report["ratios"] = {
        "rate (small / big)": round(small["rate"] / big["rate"], 3),
        "p50 (big / small)": round(big["p50_ms"] / small["p50_ms"], 3),
        "sequential p50 (big / small)": round(
            big["sequential_p50_ms"] / small["sequential_p50_ms"], 3
        ),
    }
    report["met"] = all(v <= 1.5 for v in report["ratios"].values())
    report["plan"] = explain(big_uids[500])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "routing.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    stack = Stack(Path(tempfile.mkdtemp(prefix="webhooks-bench-routing-")))
    try:
        stack.start()
        with stack.web() as port:
            report = measure(stack, port, args.seconds, args.rounds)
        print(json.dumps({k: v for k, v in report.items() if k != "plan"}, indent=2))
        print("\n\n".join(report["plan"]))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        return 0 if report["met"] else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    start = time.monotonic()
    code = main()
    print(f"took {time.monotonic() - start:.0f} s")
    raise SystemExit(code)
