"""The operations side against bad arguments, bad settings and races: the CLI, retention,
settings and a downgrade. From an outside review; each test failed before its fix."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from config import ConfigError, get_settings
from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import counts, sql
from webhooks.db import get_engine, session_scope
from webhooks.models import Delivery, Event
from webhooks.services import recovery, retention

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


def _one_delivery(client, tenant) -> str:
    resp = publish(client, tenant, "order.created", {"n": 1})
    assert resp.status_code == 202
    event = client.get(f"/v1/events/{resp.get_json()['id']}", headers=tenant["headers"])
    (d,) = event.get_json()["deliveries"]
    return d["id"]


def _age(delivery_id: str, created_at: datetime, **values) -> None:
    with session_scope() as session:
        event_id = session.scalar(select(Delivery.event_id).where(Delivery.id == delivery_id))
        session.execute(update(Event).where(Event.id == event_id).values(created_at=created_at))
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(created_at=created_at, **values)
        )


def _status(delivery_id: str) -> str | None:
    with session_scope() as session:
        s = session.scalar(select(Delivery.status).where(Delivery.id == delivery_id))
        return None if s is None else str(s)


# --- 1. CLI: bad arguments end in a traceback, not a one-line error ------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["create-tenant", "x" * 201],
        ["create-tenant", "a\x00b"],
        ["create-key", "00000000-0000-7000-8000-000000000001"],
        ["dead-letters", "--limit", "-1"],
        ["purge", "--days", "1000000000"],
    ],
    ids=["long-name", "nul-name", "create-key-unknown-tenant", "negative-limit", "huge-days"],
)
def test_cli_bad_argument_is_a_clear_error_not_a_traceback(app, args):
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code != 0
    # click turns a handled refusal into SystemExit; anything else is an uncaught exception.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error" in result.output


def test_cli_create_key_for_an_unknown_tenant_is_a_one_line_error(process_env):
    env = process_env()
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/flask"), "--app", "webhooks", "create-key", str(uuid.uuid4())],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-600:]


# --- 2. purge --days 0 / negative deletes events that are not old at all -------------------


@pytest.mark.parametrize("days", ["0", "-1"])
def test_purge_refuses_days_below_one(app, client, tenant, days):
    subscribe(client, tenant, "http://127.0.0.1:9/x")
    fresh = _one_delivery(client, tenant)
    _age(fresh, datetime.now(UTC) - timedelta(seconds=1), status="delivered")

    result = app.test_cli_runner().invoke(args=["purge", "--days", days])
    # WEBHOOKS_RETENTION_DAYS refuses values below 1; `--days` should too.
    assert result.exit_code != 0, result.output
    assert _status(fresh) == "delivered", "an event delivered a second ago was purged"


# --- 3. settings accepted at start that break the service later ----------------------------


def test_huge_retention_days_is_refused_at_start_or_works(client, tenant, monkeypatch):
    monkeypatch.setenv("WEBHOOKS_RETENTION_DAYS", "1000000000")  # "keep (almost) for ever"
    reset_settings()
    try:
        get_settings()
    except ConfigError as exc:
        assert "WEBHOOKS_RETENTION_DAYS" in str(exc)
        return
    retention.purge()  # the hourly beat task: DataError "timestamp out of range"


@pytest.mark.parametrize("delays", ["nan", "inf"])
def test_non_finite_retry_delays_are_refused_at_start(client, tenant, monkeypatch, delays):
    from webhooks.services import delivery

    subscribe(client, tenant, "http://127.0.0.1:9/x")  # connection refused: a retry follows
    delivery_id = _one_delivery(client, tenant)
    monkeypatch.setenv("WEBHOOKS_RETRY_DELAYS", delays)
    reset_settings()
    try:
        get_settings()
    except ConfigError as exc:
        assert "WEBHOOKS_RETRY_DELAYS" in str(exc)
        return
    delivery.attempt(delivery_id)  # ValueError / OverflowError in timedelta(seconds=...)


# --- 4. retention deletes a delivery that a replay/retry has just made pending -------------


def test_retention_never_deletes_a_delivery_a_concurrent_replay_requeued(client, tenant):
    subscribe(client, tenant, "http://127.0.0.1:9/x")
    d = _one_delivery(client, tenant)
    _age(d, NOW - timedelta(days=40), status="failed")

    engine = get_engine()
    with session_scope() as replaying:
        # The replay's UPDATE ... status = 'pending' is made, not yet committed ...
        moved = recovery._restart(replaying, [uuid.UUID(d)])
        assert moved.ids
        # ... when the hourly retention pass starts.
        done: dict[str, int] = {}
        purge = threading.Thread(target=lambda: done.update(n=retention.purge(days=30)))
        purge.start()
        deadline = time.monotonic() + 10
        # Until the purge waits on the replay's lock, or has ended: one that skips the locked
        # rows ends at once, and nothing waiting longer could change what it did.
        while time.monotonic() < deadline and purge.is_alive():
            (waiting,) = sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%DELETE FROM%'",
                engine=engine,
            )[0]
            if waiting:
                break
            time.sleep(0.05)
        replaying.commit()  # the replay answers "requeued 1"
    purge.join(20)
    assert _status(d) == "pending", f"the requeued delivery was deleted (purged {done})"
    assert counts("events")[0] == 1


# --- 5. migrations ----------------------------------------------------------------------------


_SEED = """
INSERT INTO tenants (id, name) VALUES ('01900000-0000-7000-8000-000000000001', 't');
INSERT INTO subscriptions (id, tenant_id, url, event_types, status, secret_ciphertext {extra_cols})
  VALUES ('01900000-0000-7000-8000-000000000002', '01900000-0000-7000-8000-000000000001',
          'http://127.0.0.1:9/x', '{{*}}', 'active', '\\x00' {extra_vals});
INSERT INTO events (id, tenant_id, event_type, payload)
  VALUES ('01900000-0000-7000-8000-000000000003', '01900000-0000-7000-8000-000000000001',
          'order.created', '{{}}');
"""


def test_downgrade_below_ordering_does_not_strand_fifo_deliveries(servers):
    """0008's downgrade drops lane_id/lane_seq but leaves the deliveries waiting in a lane
    pending with next_attempt_at NULL: the code of 0007 never finds them due again (its claim
    and its watchdog both ask next_attempt_at <= now()). 0003's downgrade refuses for ed25519
    subscriptions that would stop being delivered; this one accepts silently."""
    from alembic import command

    from tests.support import alembic_config, scratch_database

    with scratch_database(servers, "review_ordering_down") as engine:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.begin() as conn:
            conn.execute(text(_SEED.format(extra_cols=", ordering", extra_vals=", 'fifo'")))
            lane = conn.execute(
                text(
                    "INSERT INTO lanes (subscription_id, ordering_key, last_seq)"
                    " VALUES ('01900000-0000-7000-8000-000000000002', 'k', 2) RETURNING id"
                )
            ).scalar()
            for n, (status, due) in enumerate((("in_flight", "now()"), ("pending", "NULL")), 1):
                conn.execute(
                    text(
                        "INSERT INTO deliveries (id, tenant_id, event_id, subscription_id, status,"  # noqa: S608 (the test's constants)
                        " attempt_count, failures, next_attempt_at, lane_id, lane_seq) VALUES"
                        f" (gen_random_uuid(), '01900000-0000-7000-8000-000000000001',"
                        f" '01900000-0000-7000-8000-000000000003',"
                        f" '01900000-0000-7000-8000-000000000002', '{status}', 0, 0, {due},"
                        f" :lane, {n})"
                    ),
                    {"lane": lane},
                )
        try:
            with engine.begin() as conn:
                command.downgrade(alembic_config(conn), "20261130_0007")
        except Exception:
            return
        (stranded,) = sql(
            "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'retrying')"
            " AND NOT parked AND next_attempt_at IS NULL",
            engine=engine,
        )[0]
        assert stranded == 0, f"{stranded} deliveries can never become due after the downgrade"
