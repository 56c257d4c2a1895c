"""Recovery by hand (retry, replay, dead letters, CLI) and retention, against real PG and Redis."""

from __future__ import annotations

import importlib.util
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select, update

from scripts.harness import Reply, wait_until
from tests.integration.conftest import publish, subscribe
from tests.support import counts
from webhooks.db import get_engine, session_scope
from webhooks.models import Attempt, Delivery, Event
from webhooks.services import recovery, retention

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


def _deliveries_of(client: Any, tenant: dict[str, Any], event_type: str, n: int) -> list[str]:
    """Publish `n` events; return their delivery IDs, oldest first."""
    ids = []
    for i in range(n):
        resp = publish(client, tenant, event_type, {"n": i})
        assert resp.status_code == 202, resp.get_json()
        event = client.get(f"/v1/events/{resp.get_json()['id']}", headers=tenant["headers"])
        ids += [d["id"] for d in event.get_json()["deliveries"]]
    return ids


def _set(delivery_id: str, created_at: datetime | None = None, **values: Any) -> None:
    """Move a delivery (and its event, for `created_at`) to a given state, as time would."""
    with session_scope() as session:
        if created_at is not None:
            values["created_at"] = created_at
            event_id = session.scalar(select(Delivery.event_id).where(Delivery.id == delivery_id))
            session.execute(update(Event).where(Event.id == event_id).values(created_at=created_at))
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


def _status(delivery_id: str) -> str:
    with session_scope() as session:
        return str(session.scalar(select(Delivery.status).where(Delivery.id == delivery_id)))


def _queued(servers: Any) -> int:
    """Count the deliveries waiting: as tasks in the broker, or ready in the scheduler."""
    client = redis.Redis.from_url(servers.redis_url)
    return int(client.llen("webhooks")) + int(client.get("wh:q:ready") or 0)


def _drop_queued(servers: Any) -> None:
    """Forget every queued delivery, as a Redis restarted empty would."""
    redis.Redis.from_url(servers.redis_url).flushdb()


def _finished(client: Any, tenant: dict[str, Any], servers: Any, n: int, status: str) -> Any:
    """A subscription with `n` deliveries made just now that ended as `status`, none of them
    queued any more: what a replay of the last hour finds to send again. Returns it."""
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x")
    for delivery_id in _deliveries_of(client, tenant, "order.created", n):
        _set(delivery_id, status=status)
    _drop_queued(servers)
    return sub


def _replay(client: Any, tenant: dict[str, Any], sub_id: str, **body: Any) -> Any:
    body = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in body.items()}
    return client.post(f"/v1/subscriptions/{sub_id}/replay", json=body, headers=tenant["headers"])


# --- retry -------------------------------------------------------------------------------


def test_retry_gives_a_failed_delivery_fresh_attempts_with_the_same_webhook_id(
    client, tenant, receiver, start_worker
):
    receiver.plan("/r", Reply(500), Reply(500), Reply(500), then=Reply(204))
    sub = subscribe(client, tenant, receiver.url("/r"))
    start_worker()
    (delivery_id,) = _deliveries_of(client, tenant, "order.created", 1)

    def dead_letters() -> list[dict[str, Any]]:
        resp = client.get("/v1/deliveries?status=failed", headers=tenant["headers"])
        return resp.get_json()["data"]

    (dead,) = wait_until(dead_letters, 30, message="the delivery failed")
    assert dead["id"] == delivery_id
    first = receiver.wait_for("/r", 3)

    resp = client.post(f"/v1/deliveries/{delivery_id}/retry", headers=tenant["headers"])
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["status"] == "pending"

    got = receiver.wait_for("/r", 4)
    assert {r.webhook_id for r in got} == {delivery_id}
    assert got[3].body == first[0].body

    def delivered() -> dict[str, Any] | None:
        body = client.get(f"/v1/deliveries/{delivery_id}", headers=tenant["headers"]).get_json()
        return body if body["status"] == "delivered" else None

    body = wait_until(delivered, 30, message="the retried delivery delivered")
    assert [a["number"] for a in body["attempts"]] == [1, 2, 3, 4]
    assert [a["status_code"] for a in body["attempts"]] == [500, 500, 500, 204]
    assert dead_letters() == []
    assert sub["id"] == body["subscription_id"]


def test_retry_refuses_a_delivery_in_progress_and_another_tenants(client, tenant, other_tenant):
    subscribe(client, tenant, "http://127.0.0.1:9/x")
    (delivery_id,) = _deliveries_of(client, tenant, "order.created", 1)

    resp = client.post(f"/v1/deliveries/{delivery_id}/retry", headers=tenant["headers"])
    assert resp.status_code == 409
    assert resp.get_json()["error"]["details"]["status"] == "pending"

    _set(delivery_id, status="failed")
    resp = client.post(f"/v1/deliveries/{delivery_id}/retry", headers=other_tenant["headers"])
    assert resp.status_code == 404
    assert _status(delivery_id) == "failed"


# --- replay ------------------------------------------------------------------------------


def test_replay_requeues_finished_deliveries_in_the_window_with_the_status(client, tenant, servers):
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x")
    d = _deliveries_of(client, tenant, "order.created", 6)
    hours = [5, 3, 3, 1, 3, 0]
    states = ["failed", "failed", "delivered", "failed", "pending", "failed"]
    for delivery_id, h, state in zip(d, hours, states, strict=True):
        _set(delivery_id, NOW - timedelta(hours=h, minutes=1), status=state, failures=3)
    _drop_queued(servers)

    resp = _replay(client, tenant, sub["id"], since=NOW - timedelta(hours=4),
                   until=NOW - timedelta(hours=2))  # fmt: skip
    assert resp.status_code == 202
    assert resp.get_json() == {"requeued": 2, "more": False}
    assert [_status(x) for x in d] == [
        "failed", "pending", "pending", "failed", "pending", "failed",
    ]  # fmt: skip
    assert _queued(servers) == 2
    with session_scope() as session:
        failures = session.scalar(select(Delivery.failures).where(Delivery.id == d[1]))
    assert failures == 0  # a fresh set of attempts

    resp = _replay(client, tenant, sub["id"], since=NOW - timedelta(hours=6), status="failed")
    assert resp.get_json() == {"requeued": 3, "more": False}
    assert [_status(x) for x in d] == ["pending"] * 6
    assert _queued(servers) == 5


def test_replay_is_idempotent_while_the_requeued_deliveries_are_pending(client, tenant, servers):
    sub = _finished(client, tenant, servers, 3, "delivered")
    since = NOW - timedelta(hours=1)

    assert _replay(client, tenant, sub["id"], since=since).get_json()["requeued"] == 3
    assert _replay(client, tenant, sub["id"], since=since).get_json()["requeued"] == 0
    assert _queued(servers) == 3


def test_replay_is_bounded_per_call_and_says_when_more_remain(client, tenant, servers, monkeypatch):
    monkeypatch.setattr(recovery, "REPLAY_LIMIT", 2)
    sub = _finished(client, tenant, servers, 5, "failed")
    since = NOW - timedelta(hours=1)

    answers = [_replay(client, tenant, sub["id"], since=since).get_json() for _ in range(4)]
    assert answers == [
        {"requeued": 2, "more": True},
        {"requeued": 2, "more": True},
        {"requeued": 1, "more": False},
        {"requeued": 0, "more": False},
    ]
    assert _queued(servers) == 5


def test_replay_is_tenant_scoped(client, tenant, other_tenant, servers):
    mine = subscribe(client, tenant, "http://127.0.0.1:9/x")
    theirs = subscribe(client, other_tenant, "http://127.0.0.1:9/y")
    (my_delivery,) = _deliveries_of(client, tenant, "order.created", 1)
    (their_delivery,) = _deliveries_of(client, other_tenant, "order.created", 1)
    for delivery_id in (my_delivery, their_delivery):
        _set(delivery_id, status="failed")
    since = NOW - timedelta(hours=1)

    resp = _replay(client, other_tenant, mine["id"], since=since)
    assert resp.status_code == 404
    assert _status(my_delivery) == "failed"

    assert _replay(client, tenant, mine["id"], since=since).get_json()["requeued"] == 1
    assert _status(their_delivery) == "failed"
    assert _replay(client, other_tenant, theirs["id"], since=since).get_json()["requeued"] == 1


def test_replay_of_a_disabled_subscription_conflicts(client, tenant):
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x")
    (delivery_id,) = _deliveries_of(client, tenant, "order.created", 1)
    _set(delivery_id, status="failed")
    client.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "disabled"},
                 headers=tenant["headers"])  # fmt: skip
    resp = _replay(client, tenant, sub["id"], since=NOW - timedelta(hours=1))
    assert resp.status_code == 409
    assert _status(delivery_id) == "failed"


def test_replay_rejects_a_request_without_since(client, tenant):
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x")
    resp = client.post(f"/v1/subscriptions/{sub['id']}/replay", json={},
                       headers=tenant["headers"])  # fmt: skip
    assert resp.status_code == 422
    assert "since" in resp.get_json()["error"]["details"]["fields"]


# --- dead letters ------------------------------------------------------------------------


def test_dead_letter_list_holds_only_the_tenants_failed_deliveries(client, tenant, other_tenant):
    subscribe(client, tenant, "http://127.0.0.1:9/x")
    subscribe(client, other_tenant, "http://127.0.0.1:9/y")
    mine = _deliveries_of(client, tenant, "order.created", 3)
    (theirs,) = _deliveries_of(client, other_tenant, "order.created", 1)
    for delivery_id in (mine[0], mine[2], theirs):
        _set(delivery_id, status="failed", last_error="HTTP 500")
    _set(mine[1], status="delivered")

    resp = client.get("/v1/deliveries?status=failed", headers=tenant["headers"])
    assert resp.status_code == 200
    data = resp.get_json()["data"]
    assert {x["id"] for x in data} == {mine[0], mine[2]}
    assert all(x["status"] == "failed" for x in data)
    other = client.get("/v1/deliveries?status=failed", headers=other_tenant["headers"])
    assert [x["id"] for x in other.get_json()["data"]] == [theirs]


# --- CLI ---------------------------------------------------------------------------------


def test_cli_lists_dead_letters_and_retries_and_replays_them(app, client, tenant, servers):
    sub = subscribe(client, tenant, "http://127.0.0.1:9/x")
    d = _deliveries_of(client, tenant, "order.created", 3)
    for delivery_id in d:
        _set(delivery_id, status="failed", last_error="HTTP 503")
    _drop_queued(servers)
    runner = app.test_cli_runner()

    listed = runner.invoke(args=["dead-letters"])
    assert listed.exit_code == 0, listed.output
    assert {line.split()[0] for line in listed.output.splitlines()} == set(d)
    assert "HTTP 503" in listed.output

    result = runner.invoke(args=["retry-delivery", d[0]])
    assert result.exit_code == 0, result.output
    assert _status(d[0]) == "pending"
    assert _queued(servers) == 1

    since = (NOW - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    args = ["replay", sub["id"], "--since", since, "--status", "failed", "--limit", "1"]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    assert "requeued 1 (more remain" in result.output
    result = runner.invoke(args=args)
    assert result.output.strip() == "requeued 1"
    assert [_status(x) for x in d] == ["pending"] * 3
    assert _queued(servers) == 3

    in_progress = runner.invoke(args=["retry-delivery", d[0]])
    assert in_progress.exit_code == 1
    assert "Error: the delivery is still in progress" in in_progress.output

    missing = runner.invoke(args=["retry-delivery", str(uuid.uuid4())])
    assert missing.exit_code != 0
    assert "no delivery" in missing.output


def test_cli_purge_deletes_events_past_the_retention_period(app, client, tenant):
    subscribe(client, tenant, "http://127.0.0.1:9/x")
    old, recent = _deliveries_of(client, tenant, "order.created", 2)
    _set(old, NOW - timedelta(days=40), status="delivered")
    _set(recent, NOW - timedelta(days=5), status="delivered")

    result = app.test_cli_runner().invoke(args=["purge", "--days", "30"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "deleted 1 events"
    assert _status(old) == "None"
    assert _status(recent) == "delivered"


# --- retention ---------------------------------------------------------------------------


def _add_attempts(delivery_id: str, n: int) -> None:
    with session_scope() as session:
        for number in range(1, n + 1):
            session.add(
                Attempt(delivery_id=uuid.UUID(delivery_id), number=number, result="http_error",
                        status_code=500, duration_ms=1.0, url="http://127.0.0.1:9/x")
            )  # fmt: skip


def test_retention_deletes_old_finished_events_with_deliveries_and_attempts_in_batches(
    client, tenant
):
    subscribe(client, tenant, "http://127.0.0.1:9/x")
    d = _deliveries_of(client, tenant, "order.created", 7)
    old_finished, old_unfinished, recent = d[:5], d[5], d[6]
    for i, delivery_id in enumerate(old_finished):
        _set(delivery_id, NOW - timedelta(days=31 + i), status=["delivered", "failed"][i % 2])
        _add_attempts(delivery_id, 2)
    _set(old_unfinished, NOW - timedelta(days=60), status="retrying")
    _add_attempts(old_unfinished, 1)
    _set(recent, NOW - timedelta(days=29), status="delivered")
    _add_attempts(recent, 1)
    assert counts("events", "deliveries", "attempts") == (7, 7, 12)

    # One batch of two: each batch is its own short transaction.
    assert retention.purge(days=30, batch=2, max_batches=1) == 2
    assert counts("events", "deliveries", "attempts") == (5, 5, 8)
    # The oldest go first.
    assert [_status(x) for x in old_finished[3:]] == ["None", "None"]

    assert retention.purge(days=30, batch=2) == 3
    assert counts("events", "deliveries", "attempts") == (2, 2, 2)
    assert _status(old_unfinished) == "retrying"
    assert _status(recent) == "delivered"
    assert retention.purge(days=30) == 0


def test_retention_defaults_to_webhooks_retention_days(client, tenant, monkeypatch):
    from tests.conftest import reset_settings

    subscribe(client, tenant, "http://127.0.0.1:9/x")
    eleven, nine = _deliveries_of(client, tenant, "order.created", 2)
    _set(eleven, NOW - timedelta(days=11), status="delivered")
    _set(nine, NOW - timedelta(days=9), status="delivered")
    monkeypatch.setenv("WEBHOOKS_RETENTION_DAYS", "10")
    reset_settings()

    assert retention.purge() == 1
    assert (_status(eleven), _status(nine)) == ("None", "delivered")


def test_retention_batch_does_not_block_ingest(client, tenant):
    subscribe(client, tenant, "http://127.0.0.1:9/x")
    (old,) = _deliveries_of(client, tenant, "order.created", 1)
    _set(old, NOW - timedelta(days=40), status="delivered")
    # Hold a purge batch's transaction open (its deletes and row locks uncommitted) ...
    with get_engine().connect() as conn:
        purging = conn.begin()
        deleted = conn.execute(retention._PURGE, {"days": 30, "batch": 500}).rowcount
        assert deleted == 1
        # ... while the API keeps accepting events for the same tenant and subscription.
        with ThreadPoolExecutor(1) as pool:
            resp = pool.submit(publish, client, tenant, "order.created", {"n": 1}).result(20)
        assert resp.status_code == 202
        purging.commit()
    assert counts("events", "deliveries", "attempts")[0] == 1


def test_retention_is_scheduled_hourly_by_beat() -> None:
    # Load the schedule module on its own: importing the tasks package would switch this
    # process's metrics to multiprocess storage.
    spec = importlib.util.spec_from_file_location("beat_schedule", ROOT / "tasks" / "schedule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from config import get_settings

    entries = [e for e in module.beat_schedule(get_settings()).values()
               if e["task"] == "tasks.retention"]  # fmt: skip
    assert len(entries) == 1
    assert entries[0]["schedule"] == 3600.0


def test_retention_task_runs_in_a_worker(client, tenant, servers, start_worker):
    from webhooks import dispatch

    subscribe(client, tenant, "http://127.0.0.1:9/x")
    old, recent = _deliveries_of(client, tenant, "order.created", 2)
    _set(old, NOW - timedelta(days=40), status="delivered")
    _set(recent, NOW, status="delivered")
    start_worker(concurrency=1)
    dispatch._producer_app().send_task("tasks.retention", queue="control")
    wait_until(
        lambda: counts("events", "deliveries", "attempts")[0] == 1,
        30,
        message="the retention task deleted the old event",
    )
    assert _status(recent) == "delivered"
