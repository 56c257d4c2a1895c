"""Session set-up: settings for tests, and real PostgreSQL and Redis when a test asks."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TEST_SECRET_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
_TMP = Path(tempfile.mkdtemp(prefix="webhooks-tests-"))

# Settings every process of the suite shares; integration tests add the server URLs.
BASE_ENV = {
    "WEBHOOKS_ENV": "development",
    "WEBHOOKS_SECRET_KEY": TEST_SECRET_KEY,
    "WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
    "WEBHOOKS_VAR_DIR": str(_TMP / "var"),
    "WEBHOOKS_LOG_LEVEL": "WARNING",
    "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}
os.environ.update(BASE_ENV)
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist the test processes share files named by the run's id (tests/support.py).
    # Choose it here, in the process that starts them, so that it can remove them at the end.
    controller = config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput")
    if controller and config.getoption("testrunuid", None) is None:
        config.option.testrunuid = uuid.uuid4().hex


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_TMP, ignore_errors=True)
    run = session.config.getoption("testrunuid", None)
    if run and not hasattr(session.config, "workerinput"):
        for path in Path(tempfile.gettempdir()).glob(f"webhooks-tests-{run}-*"):
            path.unlink(missing_ok=True)


def reset_settings() -> None:
    """Forget every per-process cache built from settings, after the environment changed."""
    from webhooks import runtime

    runtime.reset()


@dataclass
class Servers:
    database_url: str
    redis_url: str
    pg: object | None
    redis: object | None
    tmp: Path


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """PostgreSQL and Redis for the session: TEST_DATABASE_URL/TEST_REDIS_URL, or embedded."""
    from scripts.embedded import EmbeddedPostgres, EmbeddedRedis

    pg = redis = None
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if (database_url or redis_url) and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        # Each test empties the tables and Redis: two processes on one server would collide.
        pytest.exit("TEST_DATABASE_URL/TEST_REDIS_URL serve one test process: use -n 0", 2)
    try:
        if not database_url:
            pg = EmbeddedPostgres(_TMP / "postgres", fast=True)
            pg.start()
            database_url = pg.create_database("webhooks_test")
        if not redis_url:
            redis = EmbeddedRedis(_TMP / "redis")
            redis_url = redis.start()
        os.environ["DATABASE_URL"] = database_url
        os.environ["REDIS_URL"] = redis_url
        reset_settings()
        _migrate()
        yield Servers(database_url, redis_url, pg, redis, _TMP)
    finally:
        from webhooks.db import get_engine

        with contextlib.suppress(Exception):  # never let clean-up hide the test's own error
            get_engine().dispose()
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.stop()


def _migrate() -> None:
    from alembic import command
    from sqlalchemy import text

    from tests.support import alembic_config
    from webhooks.db import get_engine

    with get_engine().begin() as conn:
        # A reused TEST_DATABASE_URL starts from an empty schema too.
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    command.upgrade(alembic_config(), "head")
