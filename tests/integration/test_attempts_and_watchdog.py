"""The attempt and the watchdog called in this process, against real PostgreSQL and Redis:
what an unexpected error in an attempt leaves, and what the watchdog hands over again."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tests.integration.conftest import publish, subscribe
from webhooks.db import get_engine
from webhooks.runtime import get_breaker, get_scheduler


def _rows(sql: str, **params: Any) -> list[Any]:
    with get_engine().begin() as conn:
        result = conn.execute(text(sql), params)
        return list(result) if result.returns_rows else []


def test_an_unexpected_error_in_an_attempt_is_a_failed_attempt_counted_by_the_breaker(
    client, tenant, receiver
):
    from webhooks.services import delivery

    sub = subscribe(client, tenant, receiver.url("/never"))
    assert publish(client, tenant, "order.created", {"n": 1}).status_code == 202
    # A secret sealed under a key this process does not hold: decrypting it raises.
    _rows("UPDATE subscriptions SET secret_ciphertext = :junk", junk=b"\x00" * 40)
    (delivery_id,) = _rows("SELECT id FROM deliveries")[0]

    step = delivery.attempt(str(delivery_id))
    delivery.conclude(str(delivery_id), step)  # the rest of the task: scheduler and breaker

    status, failures, error = _rows(
        "SELECT status, failures, last_error FROM deliveries WHERE id = :id", id=delivery_id
    )[0]
    assert (status, failures) == ("retrying", 1)
    assert error.startswith("internal error")
    attempts = _rows("SELECT result, error FROM attempts WHERE delivery_id = :id", id=delivery_id)
    assert [a.result for a in attempts] == ["error"]
    assert step.retry_at is not None  # retried on its schedule, not lost with a worker
    assert get_breaker().state(sub["id"])["consecutive_failures"] == 1
    assert receiver.at("/never") == []


def test_a_backlog_waiting_in_the_scheduler_is_never_handed_over_twice(client, tenant):
    from webhooks.services import watchdog

    subscribe(client, tenant, "http://127.0.0.1:9/slow", max_in_flight=1)
    for n in range(30):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    # Older than WEBHOOKS_LOST_AFTER_SECONDS, as a long backlog's rows are: still held in Redis.
    _rows("UPDATE deliveries SET dispatched_at = now() - interval '1 hour'")
    before = get_scheduler().totals()
    assert before["ready"] + before["in_flight"] == 30

    report = watchdog.run()

    assert (report.lost, report.due, report.sent) == (0, 0, [])
    assert get_scheduler().totals() == before
    # ... and once Redis has lost them (and they are overdue again: the pass above marked them
    # checked), every one is handed over again, once.
    get_scheduler().client.flushdb()
    _rows("UPDATE deliveries SET dispatched_at = now() - interval '1 hour'")
    report = watchdog.run()
    assert len(report.sent) == len(set(report.sent)) == 30
    after = get_scheduler().totals()
    assert after["ready"] + after["in_flight"] == 30


def _kill_other_backends() -> int:
    """Terminate every other connection to this database, as a PostgreSQL restart would."""
    return len(
        _rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )


def test_an_attempt_on_a_pooled_connection_that_died_still_delivers(client, tenant, receiver):
    import time

    from webhooks.services import delivery

    subscribe(client, tenant, receiver.url("/pooled"))
    for n in range(3):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    ids = [str(r.id) for r in _rows("SELECT id FROM deliveries ORDER BY id")]
    delivery.attempt(ids[0])  # leaves a connection of the delivery pool behind

    # Killed a moment after its last use (no ping then): the claim finds it dead.
    assert _kill_other_backends() >= 1
    delivery.attempt(ids[1])
    # Killed after sitting idle: the ping on checkout finds it dead.
    time.sleep(1.2)
    assert _kill_other_backends() >= 1
    delivery.attempt(ids[2])

    statuses = _rows("SELECT status FROM deliveries ORDER BY id")
    assert [s.status for s in statuses] == ["delivered"] * 3
    assert len(receiver.at("/pooled")) == 3
