"""Fixtures for integration tests: a clean database, the API, tenants, receivers, workers."""

from __future__ import annotations

import contextlib
import graphlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from scripts.harness import Process, Receiver, celery
from tests.conftest import BASE_ENV, Servers, reset_settings
from tests.support import cores

# Retry waits short enough for tests, long enough to measure.
FAST_ENV = {
    "WEBHOOKS_RETRY_DELAYS": "0.5,1",
    "WEBHOOKS_RETRY_JITTER": "0",
    "WEBHOOKS_HTTP_TIMEOUT_SECONDS": "3",
    "WEBHOOKS_WATCHDOG_INTERVAL_SECONDS": "1",
    "WEBHOOKS_LOST_AFTER_SECONDS": "3",
    "WEBHOOKS_WORKER_METRICS_PORT": "0",
}


@pytest.fixture
def fast_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test process runs the attempts itself (tests.support.run_attempt): give it the
    workers' short retry waits and timeout."""
    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)
    reset_settings()


pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: every one sorts alike
        items[:] = _schedule(items)


def _schedule(items: list[pytest.Item]) -> list[pytest.Item]:
    """The order of the tests in every pytest-xdist process.

    xdist's `load` gives each process a first run of consecutive tests (an eighth of them,
    over a hundred), then hands out the rest in this order as they finish. The first process
    starts with the `alone` tests, while the other still starts its servers; then
    test_metrics.py's tests: its one mixed run is made there, and no other process waits for
    it to read it. Then the `timing` tests, each beside an in-process test; the other process
    runs in-process tests meanwhile, which need no lock, instead of waiting for the timing
    tests behind a test with processes of its own. Then the rest of the in-process tests; last
    those with processes, the `long` ones first, so that the last tests handed out are short
    ones and neither process is left alone long at the end.
    """
    alone = [i for i in items if i.get_closest_marker("alone")]
    timing = [i for i in items if i.get_closest_marker("timing") and i not in alone]
    shared = [i for i in items if "mixed_run" in i.fixturenames]
    first = {*alone, *timing, *shared}
    heavy = [i for i in items if i not in first and _HEAVY & set(i.fixturenames)]
    light = [i for i in items if i not in first and i not in heavy]
    heavy.sort(key=lambda i: i.get_closest_marker("long") is None)  # stable: long ones first
    paired = [i for pair in zip(timing, light, strict=False) for i in pair]
    ordered = alone + shared + paired + light[len(timing) :] + heavy
    assert sorted(map(id, ordered)) == sorted(map(id, items)), "a test lost or doubled"
    return ordered


def reset_state(servers: Servers) -> None:
    """Empty every table and Redis, and go back to the default settings."""
    import redis

    from webhooks.db import get_engine

    for key in FAST_ENV:
        os.environ.pop(key, None)
    os.environ.update(
        BASE_ENV | {"DATABASE_URL": servers.database_url, "REDIS_URL": servers.redis_url}
    )
    reset_settings()
    with get_engine().begin() as conn:
        # DELETE, not TRUNCATE: on the few rows a test leaves it is several times faster, as
        # TRUNCATE makes new files for every table and index. Children go first.
        for table in _tables_children_first(conn):
            conn.execute(text(f'DELETE FROM "{table}"'))  # noqa: S608 (names from the catalog)
    redis.Redis.from_url(servers.redis_url).flushdb()


def _tables_children_first(conn: Any) -> list[str]:
    """Every table of the schema but Alembic's, each before the tables it references."""
    tables = conn.execute(
        text(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
    ).scalars()
    edges = conn.execute(
        text(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
            " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
        )
    ).all()
    order = graphlib.TopologicalSorter({table: set() for table in tables})
    for child, parent in edges:
        if child != parent:
            order.add(parent, child)  # the parent is emptied after the child
    return list(order.static_order())


@pytest.fixture(autouse=True)
def clean(servers: Servers) -> Iterator[None]:
    """Start every test with empty tables, an empty Redis and the default settings."""
    reset_state(servers)
    yield


# Fixtures that run processes of their own beside the test process (test_metrics.py's mixed
# run holds the cores itself, once for the run).
_HEAVY = {"start_worker", "start_beat", "browser", "process_env", "own_processes", "mixed_run"}


@pytest.fixture
def own_processes() -> None:
    """Asked for by a test that starts processes of its own (gunicorn, say) without the
    fixtures that do: `_cores` shares the cores with it as with them, and it is sorted with
    them."""


@pytest.fixture(autouse=True)
def _cores(request: pytest.FixtureRequest) -> Iterator[None]:
    """A `timing` test runs alone with the cores; one with processes of its own shares them.
    An `alone` test runs while no other test runs at all (unit tests hold the same lock)."""
    alone = request.node.get_closest_marker("alone") is not None
    with contextlib.ExitStack() as held:
        held.enter_context(cores(exclusive=alone, lock="tests"))  # always first: no deadlock
        if alone or request.node.get_closest_marker("timing"):
            held.enter_context(cores(exclusive=True))
        elif _HEAVY & set(request.fixturenames):
            held.enter_context(cores(exclusive=False))
        yield


_APPS: dict[frozenset[tuple[str, str]], Any] = {}


@pytest.fixture
def app(servers: Servers) -> Any:
    """The app for the environment of this test.

    Building one compiles every URL rule, about 0.1 s, so tests with the same environment share
    it: every setting comes from the environment, no test changes an app, and the per-process
    state (caches, the rate limiter's fallback) lives outside it and is reset before each test.
    """
    from webhooks import create_app
    from webhooks.logs import configure_logging

    key = frozenset((k, v) for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST")
    if key not in _APPS:
        if len(_APPS) >= 8:
            _APPS.pop(next(iter(_APPS)))
        _APPS[key] = create_app({"TESTING": True})
    else:
        configure_logging()  # as create_app does: a test may have changed the log level
    return _APPS[key]


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Build an app (and its test client) under extra environment settings."""

    def build(**env: str) -> Any:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        from webhooks import create_app

        return create_app({"TESTING": True}).test_client()

    return build


def make_tenant(name: str = "acme") -> dict[str, Any]:
    from webhooks.db import session_scope
    from webhooks.services.tenants import create_tenant

    with session_scope() as session:
        tenant, key = create_tenant(session, name)
        tenant_id = tenant.id
    return {"id": tenant_id, "key": key, "headers": {"Authorization": f"Bearer {key}"}}


@pytest.fixture
def tenant() -> dict[str, Any]:
    return make_tenant("acme")


@pytest.fixture
def other_tenant() -> dict[str, Any]:
    return make_tenant("globex")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def process_env(servers: Servers) -> Callable[..., dict[str, str]]:
    """Build the environment of a worker or beat process, with overrides."""

    def build(**overrides: Any) -> dict[str, str]:
        env = dict(os.environ)
        env.update(BASE_ENV)
        env.update(FAST_ENV)
        env.update({"DATABASE_URL": servers.database_url, "REDIS_URL": servers.redis_url})
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    return build


@pytest.fixture
def start_worker(
    servers: Servers, process_env: Callable[..., dict[str, str]], tmp_path: Any
) -> Iterator[Callable[..., Process]]:
    """Start `celery worker` processes (prefork); all are killed at the end of the test.

    With `wait=False` it returns at once: start several, then `proc.wait_for_log(WORKER_READY)`.
    """
    started: list[Process] = []

    def start(
        concurrency: int = 2, name: str | None = None, wait: bool = True, **env: Any
    ) -> Process:
        name = name or f"w{len(started)}"
        proc = celery(
            "worker",
            process_env(**env),
            tmp_path / f"{name}.log",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "-Q",
            "webhooks,control",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            wait=wait,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()  # the test is over: no graceful shutdown to wait for


@pytest.fixture
def start_beat(
    servers: Servers, process_env: Callable[..., dict[str, str]], tmp_path: Any
) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(**env: Any) -> Process:
        n = len(started)
        proc = celery(
            "beat",
            process_env(**env),
            tmp_path / f"beat{n}.log",
            "-s",
            str(tmp_path / f"beat{n}-schedule"),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def deliver_here() -> None:
    """Attempt every due delivery once, in this process, as the worker's task does
    (tests.support.run_attempt) against the real receivers: for tests of who gets an event,
    which ingest settles. The way through Celery is test_pipeline.py's."""
    from tests.support import run_attempt, sql

    for row in sql("SELECT id FROM deliveries ORDER BY created_at, id"):
        run_attempt(row.id)


def publish(
    client: Any, tenant: dict[str, Any], event_type: str, payload: Any, **headers: str
) -> Any:
    return client.post(
        "/v1/events",
        json={"event_type": event_type, "payload": payload},
        headers=tenant["headers"] | headers,
    )


def subscribe(
    client: Any,
    tenant: dict[str, Any],
    url: str,
    event_types: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    resp = client.post(
        "/v1/subscriptions",
        json={"url": url, "event_types": event_types or ["*"], **extra},
        headers=tenant["headers"],
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


@pytest.fixture
def restartable_redis(servers: Servers, tmp_path: Any) -> Iterator[Any]:
    """The session's embedded Redis, or one of this test's own when TEST_REDIS_URL is in use."""
    from scripts.embedded import EmbeddedRedis

    if servers.redis is not None:
        yield servers.redis
        return
    own = EmbeddedRedis(tmp_path / "redis")
    url = own.start()
    saved = os.environ["REDIS_URL"]
    os.environ["REDIS_URL"] = url
    reset_settings()
    try:
        yield own
    finally:
        own.stop()
        os.environ["REDIS_URL"] = saved
        reset_settings()
