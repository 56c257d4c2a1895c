"""Helpers shared by test modules (one copy each). Processes, receivers and waiting live in
scripts/harness.py, which the benchmarks and the chaos run use too."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import pickle
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("tenants", "api_keys", "subscriptions", "events", "deliveries", "attempts")
# A script tag: pages must show it as text, never run it.
SCRIPT = "<script>document.title='pwned'</script>"


@contextlib.contextmanager
def cores(exclusive: bool, lock: str = "cores") -> Iterator[None]:
    """Hold the machine's cores, shared or alone, against the suite's other test processes.

    Under pytest-xdist (`make test` runs two processes) a test that starts processes of its own
    (Celery workers, beat, a browser; the metrics module's gunicorn) holds the cores shared; a
    test that asserts a time bound (a latency, a drain time, a rate from below) holds them
    alone, so no other test's workers compete with its own meanwhile; the other process runs
    in-process tests only, which take nothing. Outside xdist this does nothing.

    `lock="tests"` is the one every test holds, shared: an `alone` test, whose bound is tight
    enough that even an in-process test beside it could break it, holds it alone.
    """
    base = _run_files(lock)
    if base is None:
        yield
        return
    with open(f"{base}.gate", "a") as gate, open(f"{base}.lock", "a") as lock:
        # Everyone passes the gate; one waiting to be alone holds it, so a stream of shared
        # holders from the other process cannot keep it waiting for ever.
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def once_per_run(name: str, make: Callable[[], Any]) -> Any:
    """Return `make()`, made once for the whole run: under pytest-xdist the first test process
    to ask makes it, the other waits and reads a pickled copy. A failed `make()` leaves nothing
    behind, so the next one to ask tries again (and fails the same way, in its own tests)."""
    base = _run_files(name)
    if base is None:
        return make()
    with open(f"{base}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            done = Path(f"{base}.pickle")
            if done.exists():
                return pickle.loads(done.read_bytes())  # noqa: S301 (written by this run)
            value = make()
            done.write_bytes(pickle.dumps(value))
            return value
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_files(name: str) -> Path | None:
    """Where the test processes of one pytest-xdist run share files (None outside xdist)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return Path(tempfile.gettempdir()) / f"webhooks-tests-{run}-{name}" if run else None


def alembic_config(connection: Any = None) -> Any:
    """Alembic's configuration of this project, on `connection` if one is given."""
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def counts(*tables: str) -> tuple[int, ...]:
    """Row counts of these tables (all of TABLES by default), in the order asked."""
    from webhooks.db import get_engine

    with get_engine().connect() as conn:
        return tuple(
            conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
            for table in tables or TABLES
        )


def sql(query: str, *, engine: Any = None, **params: Any) -> list[Any]:
    """Run one statement in its own transaction (on the service's database, or `engine`'s);
    return its rows, if any."""
    from webhooks.db import get_engine

    with (engine or get_engine()).begin() as conn:
        result = conn.execute(text(query), params)
        return list(result) if result.returns_rows else []


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Check the status and the error envelope; return the error object."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code, body
    return error


def get(client: Any, tenant: dict[str, Any], path: str) -> Any:
    """GET through the API as the tenant; assert 200 and return the JSON body."""
    resp = client.get(path, headers=tenant["headers"])
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def delivery(client: Any, tenant: dict[str, Any], event_id: str) -> Any:
    """The detail (with attempts) of the only delivery of an event."""
    (only,) = get(client, tenant, f"/v1/events/{event_id}")["deliveries"]
    return get(client, tenant, f"/v1/deliveries/{only['id']}")


def resource_calls(sub_id: str, event_id: str, delivery_id: str) -> list[tuple[str, str, Any]]:
    """Every call on one resource: (method, path, JSON body)."""
    return [
        ("GET", f"/v1/subscriptions/{sub_id}", None),
        ("PATCH", f"/v1/subscriptions/{sub_id}", {"description": "changed"}),
        ("DELETE", f"/v1/subscriptions/{sub_id}", None),
        ("GET", f"/v1/subscriptions/{sub_id}/health", None),
        ("POST", f"/v1/subscriptions/{sub_id}/rotate-secret", None),
        ("POST", f"/v1/subscriptions/{sub_id}/replay", {"since": "2020-01-01T00:00:00Z"}),
        ("GET", f"/v1/events/{event_id}", None),
        ("GET", f"/v1/deliveries/{delivery_id}", None),
        ("GET", f"/v1/deliveries/{delivery_id}/attempts", None),
        ("POST", f"/v1/deliveries/{delivery_id}/retry", None),
    ]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def add_attempt(
    delivery_id: str,
    number: int = 1,
    result: str = "success",
    status_code: int | None = 200,
    duration_ms: float = 10.0,
    body: str | None = None,
    seconds_ago: float = 0,
) -> None:
    """Record an attempt as the worker does (the trigger fills in its subscription)."""
    sql(
        "INSERT INTO attempts (delivery_id, number, result, status_code, duration_ms,"
        " response_body, created_at) VALUES (:d, :n, :r, :s, :ms, :b,"
        " now() - make_interval(secs => :ago))",
        d=delivery_id,
        n=number,
        r=result,
        s=status_code,
        ms=duration_ms,
        b=body,
        ago=seconds_ago,
    )


def set_status(status: str, delivery_id: str | None = None) -> None:
    if delivery_id:
        sql("UPDATE deliveries SET status = :s WHERE id = :id", s=status, id=delivery_id)
    else:
        sql("UPDATE deliveries SET status = :s", s=status)


def verify_v1a(public_key: str, body: bytes, headers: dict[str, str]) -> None:
    """A receiver's check, written from the Standard Webhooks spec with a separate Ed25519
    implementation (cryptography's), not with our signing code: accept if any v1a signature of
    "{id}.{timestamp}.{body}" verifies under the whpk_ key; raise otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("whpk_")))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    for item in headers["webhook-signature"].split(" "):
        version, _, signature = item.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(signature), content)
            return
        except InvalidSignature:
            continue
    raise AssertionError("no v1a signature verifies")


def defined_metric_names() -> set[str]:
    """The sample names the service exports, read from its code, no process running: our
    metrics (webhooks.metrics), the backlog gauges made at each scrape, and the request metrics
    of prometheus-flask-exporter as webhooks.web_metrics sets it up."""
    from flask import Flask
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_flask_exporter import PrometheusMetrics

    from webhooks import metrics

    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["_sum", "_count"],
    }
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + suffix for suffix in suffixes[family.type]}
    source = Path(metrics.__file__).read_text()
    names |= set(re.findall(r'GaugeMetricFamily\(\s*"(\w+)"', source))
    registry = CollectorRegistry()
    app = Flask("names")
    app.add_url_rule("/", "index", lambda: "")
    PrometheusMetrics(app, registry=registry, group_by="url_rule")
    app.test_client().get("/")
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names |= {sample.name for sample in family.samples}
    # A counter's creation time is not exported in multiprocess mode, as the service runs.
    return {name for name in names if not name.endswith("_created")}


def assert_uuid7(value: uuid.UUID, not_before_ms: int, not_after_ms: int) -> None:
    """Check an id's RFC 9562 version 7 layout: version, variant, and a 48-bit prefix of unix
    milliseconds within the given window."""
    assert value.version == 7, value
    assert value.variant == uuid.RFC_4122, value
    assert not_before_ms <= value.int >> 80 <= not_after_ms, (value, not_before_ms, not_after_ms)


class Listener:
    """A TCP server on loopback for scripted subscribers: each connection is served by
    `serve(conn)` (a subclass's) in a thread of its own. Set a subclass's own attributes before
    calling `__init__`: accepting starts there."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family, _, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        self.sock = socket.socket(family)
        self.sock.bind(address[:2])
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_attempt(delivery_id: Any) -> Any:
    """What the delivery task does: one attempt, then its end with the scheduler and the
    breaker; return the attempt's Step."""
    from webhooks.services import delivery

    step = delivery.attempt(str(delivery_id))
    delivery.conclude(str(delivery_id), step)
    return step


def delivery_ids(subscription_id: str) -> list[str]:
    """A subscription's deliveries, in the order of their events."""
    rows = sql(
        "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.subscription_id = :s ORDER BY e.created_at, d.id",
        s=subscription_id,
    )
    return [str(r.id) for r in rows]


def one_slot_backlog(client: Any, tenant: dict[str, Any], url: str, count: int) -> list[str]:
    """A subscription with `count` deliveries behind a scheduler window of one slot (so a
    tenant cap of one): ingest sent the first one's task, the others wait in the scheduler.
    Returns their IDs, in order."""
    from config.celery import QUEUE
    from tests.integration.conftest import publish, subscribe
    from webhooks.runtime import get_scheduler

    get_scheduler().announce("one-slot", 1)
    sub = subscribe(client, tenant, url)
    for n in range(count):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    assert get_scheduler().client.llen(QUEUE) == 1
    return delivery_ids(sub["id"])


@contextlib.contextmanager
def scratch_database(servers: Any, name: str) -> Iterator[Any]:
    """An empty database of the embedded PostgreSQL (skipped without it), as an engine without
    a pool; dropped afterwards, whatever its connections."""
    import psycopg
    from sqlalchemy import create_engine, pool

    from config import normalize_database_url

    if servers.pg is None:
        import pytest

        pytest.skip("needs the embedded PostgreSQL to create a scratch database")
    url = servers.pg.create_database(name)
    engine = create_engine(normalize_database_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:  # one left by an interrupted run starts empty too
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(servers.pg.url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
