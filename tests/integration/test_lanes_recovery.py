"""Fifo lanes against manual recovery and subscription changes that race it, in-process
(attempts made by calling the task's body; real PostgreSQL, Redis and receiver). From an
outside review of the lanes: each test failed before its fix."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import reset_settings
from tests.integration.conftest import subscribe
from tests.support import run_attempt, sql
from webhooks.db import session_scope
from webhooks.services import lanes, watchdog

pytestmark = pytest.mark.usefixtures("fast_attempts")
run = run_attempt


def lane_rows(sub_id: str) -> list[Any]:
    return sql(
        "SELECT id, status, lane_id, lane_seq, next_attempt_at, parked FROM deliveries"
        " WHERE subscription_id = :s ORDER BY lane_seq",
        s=sub_id,
    )


def post(client: Any, tenant: dict[str, Any], key: str, n: int) -> None:
    event = {"event_type": "order.updated", "payload": {"n": n}, "ordering_key": key}
    assert client.post("/v1/events", json=event, headers=tenant["headers"]).status_code == 202


@pytest.mark.parametrize("change", [{"status": "disabled"}, {"ordering": "none"}])
def test_a_retry_racing_a_disable_or_a_switch_to_none_never_strands_its_delivery(
    app, client, tenant, receiver, monkeypatch, change
):
    """A PATCH (disable, or fifo -> none) made while a retry's transaction is open must wait
    for it: its bulk UPDATE would not see the retried row, and the retry's lanes.advance saw
    the old holder, so the row would stay pending with no due time in a lane with no holder,
    and nothing would ever move it."""
    sub = subscribe(client, tenant, receiver.url("/o"), ["order.updated"], ordering="fifo")
    post(client, tenant, "k", 1)
    post(client, tenant, "k", 2)
    first, second = (str(r.id) for r in lane_rows(sub["id"]))
    assert run(first).outcome == "ok"  # #1 delivered, #2 is now the lane's holder (pending)

    from webhooks.services import recovery

    advanced, go_on = threading.Event(), threading.Event()
    real_advance = lanes.advance

    def paused_advance(db: Any, lane_ids: Any) -> Any:
        out = real_advance(db, lane_ids)
        advanced.set()
        assert go_on.wait(10)
        return out

    monkeypatch.setattr(recovery.lanes, "advance", paused_advance)
    retry_client = app.test_client()
    answer: dict[str, Any] = {}

    def do_retry() -> None:
        resp = retry_client.post(f"/v1/deliveries/{first}/retry", headers=tenant["headers"])
        answer["status"] = resp.status_code

    thread = threading.Thread(target=do_retry)
    thread.start()
    assert advanced.wait(10)
    monkeypatch.setattr(recovery.lanes, "advance", real_advance)
    # The PATCH waits for the open retry transaction (a lock on the subscription).
    patch_client = app.test_client()

    def do_patch() -> None:
        resp = patch_client.patch(
            f"/v1/subscriptions/{sub['id']}", json=change, headers=tenant["headers"]
        )
        answer["patch"] = resp.status_code

    patcher = threading.Thread(target=do_patch)
    patcher.start()
    patcher.join(1.0)
    go_on.set()
    thread.join(10)
    patcher.join(10)
    assert answer["status"] == 202 and answer["patch"] == 200

    if "status" in change:  # re-enable: the retried delivery should now go out (or be failed)
        resp = client.patch(
            f"/v1/subscriptions/{sub['id']}", json={"status": "active"}, headers=tenant["headers"]
        )
        assert resp.status_code == 200
    # Give the service every chance: watchdog passes, any due row attempted.
    for _ in range(3):
        watchdog.run()
        for r in lane_rows(sub["id"]):
            if r.next_attempt_at is not None and r.status in ("pending", "retrying"):
                run(r.id)
        time.sleep(0.2)
    rows = {str(r.id): r for r in lane_rows(sub["id"])}
    stuck = rows[first]
    assert stuck.status not in ("pending", "retrying") or stuck.next_attempt_at is not None, (
        f"retried delivery stuck: status={stuck.status} next_attempt_at=None "
        f"lane_id={stuck.lane_id}; other={rows[second].status}"
    )


def test_a_park_never_makes_a_delivery_waiting_in_its_lane_a_second_holder(
    client, tenant, receiver, monkeypatch
):
    """A park drains the scheduler's ready entries of the subscription and parks their rows.
    A stale entry (left by a disable) of a delivery that a retry put back to wait in its lane
    must not park it: un-parking would make it due beside the lane's holder."""
    from scripts.harness import Reply
    from webhooks.runtime import get_breaker

    monkeypatch.setenv("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", "3")
    reset_settings()
    receiver.plan("/o", then=Reply(204, delay=1.0))
    sub = subscribe(
        client, tenant, receiver.url("/o"), ["order.updated"], ordering="fifo", max_in_flight=1
    )
    post(client, tenant, "a", 1)  # picked by the scheduler (in flight there, no worker)
    post(client, tenant, "b", 1)  # b1: its lane's holder, waits in the ready list (limit 1)
    url = f"/v1/subscriptions/{sub['id']}"
    assert (
        client.patch(url, json={"status": "disabled"}, headers=tenant["headers"]).status_code == 200
    )
    assert (
        client.patch(url, json={"status": "active"}, headers=tenant["headers"]).status_code == 200
    )
    post(client, tenant, "b", 2)  # b2: lane b's new holder
    b1, b2 = (
        str(r.id)
        for r in sql(
            "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE e.ordering_key = 'b' ORDER BY d.lane_seq"
        )
    )
    resp = client.post(f"/v1/deliveries/{b1}/retry", headers=tenant["headers"])
    assert resp.status_code == 202
    # b1 waits behind b2: only b2 is due.
    due = {
        str(r.id)
        for r in lane_rows(sub["id"])
        if r.next_attempt_at is not None and r.status in ("pending", "retrying")
    }
    assert due == {b2}

    breaker = get_breaker()
    for _ in range(3):
        breaker.record_failure(sub["id"])
    assert run(b2).outcome == "none"  # parked behind the open circuit
    breaker.reset(sub["id"])
    watchdog.run()  # closed circuit: the parked deliveries are released
    due = {
        str(r.id)
        for r in lane_rows(sub["id"])
        if r.next_attempt_at is not None and r.status in ("pending", "retrying")
    }
    # Both now due: send them as two workers would, at once.
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda d=d: results.setdefault(d, run(d))) for d in due]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(receiver.at("/o"), key=lambda r: r.at)
    overlap = len(got) >= 2 and got[1].at < got[0].ended
    assert due == {b2}, f"lane b has {len(due)} holders; overlapping requests: {overlap}"


def test_retention_removes_idle_lanes_and_a_replay_of_their_deliveries_still_goes_out(
    client, tenant, receiver
):
    """A lane numbers one ordering key for good; with keys such as order IDs there are as many
    lanes as orders. Retention removes a lane idle for its period with no unfinished delivery;
    a delivery of a removed lane that is replayed later goes out unordered, not stranded."""
    from webhooks.services import recovery, retention

    sub = subscribe(client, tenant, receiver.url("/o"), ["order.updated"], ordering="fifo")
    for key in ("old", "busy", "fresh"):
        post(client, tenant, key, 1)
    rows = {
        r.key: r
        for r in sql(
            "SELECT e.ordering_key AS key, d.id, d.lane_id FROM deliveries d"
            " JOIN events e ON e.id = d.event_id"
        )
    }
    sql("UPDATE deliveries SET status = 'delivered' WHERE id <> :busy", busy=rows["busy"].id)
    # Two lanes idle for longer than the period; one of them still has its delivery unfinished.
    sql(
        "UPDATE lanes SET updated_at = now() - interval '40 days' WHERE id IN (:a, :b)",
        a=rows["old"].lane_id,
        b=rows["busy"].lane_id,
    )
    retention.purge(days=30)
    left = {r.id for r in sql("SELECT id FROM lanes")}
    assert left == {rows["busy"].lane_id, rows["fresh"].lane_id}

    since = datetime(2000, 1, 1, tzinfo=UTC)
    with session_scope() as session:
        requeued, _ = recovery.replay(
            session, tenant["id"], uuid.UUID(sub["id"]), since, None, None
        )
    assert requeued == 2  # "old" (lane gone) and "fresh" (delivered, lane kept)
    (old,) = sql(
        "SELECT status, lane_id, next_attempt_at FROM deliveries WHERE id = :id", id=rows["old"].id
    )
    assert old.status == "pending" and old.lane_id is None and old.next_attempt_at is not None
    (fresh,) = sql(
        "SELECT lane_id, next_attempt_at FROM deliveries WHERE id = :id", id=rows["fresh"].id
    )
    assert fresh.lane_id == rows["fresh"].lane_id and fresh.next_attempt_at is not None
