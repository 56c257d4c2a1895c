"""Where an ingest request's time goes: cProfile of the API in-process, against real servers.

    python -m benchmarks.profile [single|batch|delivery] [--count N] [--top N]

Runs the Flask app with its test client (no gunicorn, no network for the request itself) on
the bench's own embedded PostgreSQL and Redis, and prints the functions that take the most
time. `delivery` profiles `services.delivery.attempt` against the bench receiver.
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

from benchmarks.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["single", "batch", "delivery"])
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--fast-pg", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="webhooks-profile-"))
    stack = Stack(workdir, durable_pg=not args.fast_pg)
    try:
        stack.start()
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
                for delivery_id in ids:
                    delivery.attempt(delivery_id)

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
        print(f"{args.what}: {count} in {elapsed:.2f} s under the profiler")
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
