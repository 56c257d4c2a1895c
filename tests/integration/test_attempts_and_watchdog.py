"""The attempt state machine and the watchdog called in this process, against real PostgreSQL,
Redis and a loopback receiver: each outcome of `run()` and the rows it leaves.

No worker runs here: a worker would only call `attempt()` for us, later and with sleeps. What
needs worker processes (crashes, restarts, two workers racing) is in test_reliability.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from config import get_settings
from scripts.harness import Reply
from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import delivery_ids, one_slot_backlog, run_attempt, sql
from webhooks import scheduler
from webhooks.db import state_engine
from webhooks.runtime import get_breaker, get_scheduler
from webhooks.services import delivery, watchdog

pytestmark = pytest.mark.usefixtures("fast_attempts")
run = run_attempt


def _settings(monkeypatch: pytest.MonkeyPatch, **env: Any) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    reset_settings()


_ids = delivery_ids


def _row(delivery_id: str) -> Any:
    (row,) = sql(
        "SELECT status, attempt_count, failures, parked, last_error, lease_expires_at,"
        " delivered_at, dispatched_at,"
        " extract(epoch FROM next_attempt_at - now()) AS due_in FROM deliveries WHERE id = :id",
        id=delivery_id,
    )
    return row


def _attempts(delivery_id: str) -> list[Any]:
    return sql(
        "SELECT number, result, status_code, error, response_body, response_truncated"
        " FROM attempts WHERE delivery_id = :id ORDER BY number",
        id=delivery_id,
    )


def _make_due(delivery_id: str) -> None:
    """Skip a retry's wait (the scheduler would hold the delivery until then)."""
    sql("UPDATE deliveries SET next_attempt_at = now() WHERE id = :id", id=delivery_id)


def _one(client: Any, tenant: dict[str, Any], url: str, **extra: Any) -> tuple[dict, str]:
    sub = subscribe(client, tenant, url, **extra)
    assert publish(client, tenant, "order.created", {"n": 1}).status_code == 202
    (delivery_id,) = _ids(sub["id"])
    return sub, delivery_id


def test_an_attempt_stalled_since_its_claim_gives_it_back_unsent(
    client, tenant, receiver, monkeypatch
):
    """Past half the lease margin since the claim, another worker may soon send it: a copy
    sent now could overlap that one (and reorder a fifo lane). Nothing is sent or spent."""
    import itertools
    import types

    from webhooks.services import delivery as module

    _, delivery_id = _one(client, tenant, receiver.url("/stalled"))
    clock = itertools.count(0, 1000.0)  # every reading a thousand seconds after the last
    # The delivery module's clock only (the HTTP client, the pools keep the real one).
    fake = types.SimpleNamespace(monotonic=lambda: next(clock), time=time.time)
    monkeypatch.setattr(module, "time", fake)

    step = run(delivery_id)

    monkeypatch.undo()
    assert step.retry_at is not None
    assert receiver.at("/stalled") == []
    row = _row(delivery_id)
    assert (row.status, row.attempt_count, row.lease_expires_at) == ("pending", 0, None)
    assert _attempts(delivery_id) == []
    assert run(delivery_id).outcome == scheduler.OK  # and the next attempt sends it
    assert len(receiver.at("/stalled")) == 1


def test_success_delivers_once_signed_and_a_second_attempt_sends_nothing(client, tenant, receiver):
    sub, delivery_id = _one(client, tenant, receiver.url("/ok"))

    step = run(delivery_id)

    assert (step.outcome, step.retry_at, step.circuit_closed) == (scheduler.OK, None, False)
    assert step.subscription_id == sub["id"]
    (got,) = receiver.at("/ok")
    Webhook(sub["secret"]).verify(got.body, got.headers)
    assert got.webhook_id == delivery_id
    row = _row(delivery_id)
    assert (row.status, row.attempt_count, row.failures) == ("delivered", 1, 0)
    assert row.delivered_at is not None and row.lease_expires_at is None
    assert [(a.number, a.result, a.status_code) for a in _attempts(delivery_id)] == [
        (1, "success", 204)
    ]
    # A duplicate message for it (a redelivered task) claims nothing and sends nothing.
    assert run(delivery_id) is delivery.DONE
    assert len(receiver.received) == 1
    assert len(_attempts(delivery_id)) == 1


BIG = b"E" * 10_240


@pytest.mark.parametrize(
    ("kind", "reply", "result", "status_code", "outcome", "error"),
    [
        ("http_500", Reply(500, body=BIG), "http_error", 500, scheduler.FAILED, "HTTP 500"),
        ("redirect", Reply(302, headers={"Location": "/elsewhere"}), "http_error", 302,
         scheduler.FAILED, "redirect"),
        ("429", Reply(429), "http_error", 429, scheduler.THROTTLED, "HTTP 429"),
        ("503", Reply(503), "http_error", 503, scheduler.THROTTLED, "HTTP 503"),
        ("timeout", Reply(204, delay=2.0), "timeout", None, scheduler.THROTTLED, "within 0.5 s"),
        ("connection", None, "connection_error", None, scheduler.FAILED, ""),
        ("refused", None, "refused", None, scheduler.FAILED, ""),
    ],
)  # fmt: skip
def test_each_failure_kind_is_recorded_and_retried_on_schedule(
    client, tenant, receiver, monkeypatch, kind, reply, result, status_code, outcome, error
):
    _settings(monkeypatch, WEBHOOKS_HTTP_TIMEOUT_SECONDS=0.5)
    url = "http://127.0.0.1:9/closed" if kind == "connection" else receiver.url("/x")
    if reply is not None:
        receiver.plan("/x", reply, then=Reply(204))
    sub, delivery_id = _one(client, tenant, url)
    if kind == "refused":  # loopback, which the service refuses unless allowed
        _settings(monkeypatch, WEBHOOKS_ALLOW_PRIVATE_TARGETS="false")

    before = time.time()
    step = run(delivery_id)

    assert step.outcome == outcome
    (attempt,) = _attempts(delivery_id)
    assert (attempt.number, attempt.result, attempt.status_code) == (1, result, status_code)
    assert error.lower() in attempt.error.lower()
    row = _row(delivery_id)
    assert (row.status, row.attempt_count, row.failures) == ("retrying", 1, 1)
    assert row.last_error == attempt.error and row.lease_expires_at is None
    # Due again after the first wait of the schedule (FAST_ENV: 0.5 s), here and in the step.
    assert 0 < row.due_in <= 0.5
    assert step.retry_at is not None and before + 0.5 <= step.retry_at <= time.time() + 0.5
    assert get_breaker().state(sub["id"])["consecutive_failures"] == 1
    if kind == "http_500":  # the response body is kept, cut to 4 KiB
        assert (attempt.response_body, attempt.response_truncated) == ("E" * 4096, True)
    if kind == "redirect":  # never followed
        assert [r.path for r in receiver.received] == ["/x"]


def test_failures_spend_the_schedule_then_fail_for_good_and_nothing_more_is_sent(
    client, tenant, receiver
):
    receiver.plan("/down", then=Reply(500))
    _, delivery_id = _one(client, tenant, receiver.url("/down"))

    steps = []
    for _ in range(3):  # FAST_ENV: two retries, so three attempts in all
        steps.append(run(delivery_id))
        _make_due(delivery_id)

    assert [s.retry_at is not None for s in steps] == [True, True, False]
    row = _row(delivery_id)
    assert (row.status, row.attempt_count, row.failures) == ("failed", 3, 3)
    assert row.last_error == "HTTP 500"
    assert [(a.number, a.result) for a in _attempts(delivery_id)] == [
        (1, "http_error"),
        (2, "http_error"),
        (3, "http_error"),
    ]
    # Failed is final: another message for it claims nothing.
    assert run(delivery_id) is delivery.DONE
    assert len(receiver.at("/down")) == 3


def test_a_redirect_is_retried_at_the_same_url_and_then_delivered(client, tenant, receiver):
    receiver.plan("/moved", Reply(302, headers={"Location": receiver.url("/elsewhere")}))
    _, delivery_id = _one(client, tenant, receiver.url("/moved"))

    run(delivery_id)
    _make_due(delivery_id)
    assert run(delivery_id).outcome == scheduler.OK

    assert [(a.number, a.status_code, a.result) for a in _attempts(delivery_id)] == [
        (1, 302, "http_error"),
        (2, 204, "success"),
    ]
    assert [r.path for r in receiver.received] == ["/moved", "/moved"]
    assert _row(delivery_id).status == "delivered"


def test_retry_after_is_honoured_within_the_clamp(client, tenant, receiver, monkeypatch):
    _settings(monkeypatch, WEBHOOKS_RETRY_AFTER_MAX_SECONDS=3)
    receiver.plan("/busy", Reply(429, headers={"Retry-After": "2"}))
    receiver.plan("/down", Reply(503, headers={"Retry-After": "86400"}))
    _, busy = _one(client, tenant, receiver.url("/busy"))
    _, down = _one(client, tenant, receiver.url("/down"))

    run(busy)
    run(down)

    # Our own wait is 0.5 s (FAST_ENV), so the longer ones are the subscriber's.
    assert 1.0 < _row(busy).due_in <= 2.0
    # A day is clamped to WEBHOOKS_RETRY_AFTER_MAX_SECONDS: the retry comes today.
    assert 2.0 < _row(down).due_in <= 3.0
    # Not due yet: a message that arrives early claims nothing.
    assert run(down) is delivery.DONE
    assert len(receiver.at("/down")) == 1


def test_binary_body_and_odd_retry_after_are_recorded_and_the_delivery_completes(
    client, tenant, receiver
):
    # A NUL byte cannot be stored in PostgreSQL text; a superscript digit is not a number.
    receiver.plan(
        "/odd",
        Reply(503, headers={"Retry-After": "\u00b2"}, body=b"busy\x00\xff"),
        then=Reply(200, body=b"ok\x00done"),
    )
    _, delivery_id = _one(client, tenant, receiver.url("/odd"))

    assert run(delivery_id).retry_at is not None
    assert 0 < _row(delivery_id).due_in <= 0.5  # the odd Retry-After is ignored
    _make_due(delivery_id)
    assert run(delivery_id).outcome == scheduler.OK

    first, second = _attempts(delivery_id)
    assert (first.result, first.status_code) == ("http_error", 503)
    assert "\x00" not in first.response_body and first.response_body.startswith("busy")
    assert (second.result, second.status_code) == ("success", 200)
    assert "\x00" not in second.response_body
    assert _row(delivery_id).status == "delivered"


def test_a_long_wait_stays_with_the_row_and_the_watchdog_hands_it_over_once_due(
    client, tenant, receiver
):
    """A retry far in the future (here an hour, from Retry-After) is kept in PostgreSQL with
    its due time; the watchdog leaves it alone until then, and hands it over after, even when
    Redis lost it."""
    receiver.plan("/later", Reply(503, headers={"Retry-After": "3600"}))
    _, delivery_id = _one(client, tenant, receiver.url("/later"))
    get_scheduler().client.flushdb()  # the message of the first attempt is spent

    step = run(delivery_id)

    assert step.retry_at is not None and step.retry_at > time.time() + 3500
    row = _row(delivery_id)
    assert row.status == "retrying" and 3500 < row.due_in <= 3600
    get_scheduler().client.flushdb()  # Redis loses the delayed retry
    report = watchdog.run()
    assert delivery_id not in report.sent  # not due: nothing to hand over
    assert run(delivery_id) is delivery.DONE  # nor to claim

    sql(
        "UPDATE deliveries SET next_attempt_at = now() - interval '1 hour',"
        " dispatched_at = now() - interval '1 hour' WHERE id = :id",
        id=delivery_id,
    )
    report = watchdog.run()
    assert report.sent == [delivery_id]
    assert run(delivery_id).outcome == scheduler.OK
    assert _row(delivery_id).status == "delivered"


@pytest.mark.parametrize("change", ["disabled", "deleted"])
def test_a_claim_on_a_disabled_or_deleted_subscription_fails_it_spending_nothing(
    client, tenant, receiver, change
):
    sub, delivery_id = _one(client, tenant, receiver.url("/off"))
    if change == "disabled":
        sql("UPDATE subscriptions SET status = 'disabled' WHERE id = :id", id=sub["id"])
    else:
        sql("UPDATE subscriptions SET deleted_at = now() WHERE id = :id", id=sub["id"])

    step = run(delivery_id)

    assert (step.outcome, step.retry_at) == (scheduler.NONE, None)
    row = _row(delivery_id)
    assert (row.status, row.attempt_count, row.failures) == ("failed", 0, 0)
    assert row.last_error == f"subscription {change}"
    assert _attempts(delivery_id) == []
    assert receiver.received == []


def test_410_disables_the_subscription_and_fails_its_other_deliveries(client, tenant, receiver):
    receiver.plan("/gone", Reply(410), then=Reply(204))
    gone = subscribe(client, tenant, receiver.url("/gone"))
    other = subscribe(client, tenant, receiver.url("/other"))
    for n in range(3):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    first, *rest = _ids(gone["id"])

    step = run(first)

    assert (step.outcome, step.retry_at) == (scheduler.FAILED, None)
    for delivery_id in (first, *rest):
        row = _row(delivery_id)
        assert row.status == "failed" and "410" in row.last_error, row
    assert [(a.status_code, a.result) for a in _attempts(first)] == [(410, "http_error")]
    (status, reason) = sql("SELECT status, disabled_reason FROM subscriptions WHERE id = :id",
                           id=gone["id"])[0]  # fmt: skip
    assert status == "disabled" and "410" in reason
    # Their messages claim nothing; the other subscription's deliveries go out as before.
    assert [run(d) for d in rest] == [delivery.DONE] * 2
    assert len(receiver.at("/gone")) == 1
    for delivery_id in _ids(other["id"]):
        assert run(delivery_id).outcome == scheduler.OK
    # New events no longer create deliveries for it.
    assert publish(client, tenant, "order.created", {"n": "after"}).get_json()["deliveries"] == 1


def test_open_circuit_parks_then_one_half_open_probe_and_its_success_closes_it(
    client, tenant, receiver, monkeypatch
):
    _settings(
        monkeypatch, WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD=3, WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS=30
    )
    receiver.plan("/sick", Reply(503), then=Reply(204))
    sub = subscribe(client, tenant, receiver.url("/sick"))
    for n in range(3):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    first, second, third = _ids(sub["id"])
    breaker = get_breaker()
    long_ago = time.time() - 60  # opened a cooldown ago and more: the next claim may probe
    for _ in range(3):
        breaker.record_failure(sub["id"], now=long_ago)
    assert breaker.state(sub["id"])["state"] == "open"

    # The probe fails: the circuit stays open and the delivery waits again, parked, its
    # attempt recorded but no retry spent.
    probe = run(first)
    assert probe.outcome == scheduler.THROTTLED
    row = _row(first)
    assert (row.status, row.parked, row.attempt_count, row.failures) == ("retrying", True, 1, 0)
    assert [(a.status_code, a.result) for a in _attempts(first)] == [(503, "http_error")]
    # Half-open with its probe out, then open again: the others park without a request.
    assert run(second).outcome == scheduler.NONE
    row = _row(second)
    assert (row.status, row.parked, row.attempt_count) == ("pending", True, 0)
    assert len(receiver.at("/sick")) == 1

    # A cooldown later the next probe succeeds and closes the circuit. (The park above also
    # parked what the scheduler held ready for it: the third delivery; unpark it.)
    sql("UPDATE deliveries SET parked = false WHERE id = :id", id=third)
    breaker.reset(sub["id"])
    for _ in range(3):
        breaker.record_failure(sub["id"], now=long_ago)
    closing = run(third)
    assert (closing.outcome, closing.circuit_closed) == (scheduler.RESTART, True)
    assert breaker.state(sub["id"])["state"] == "closed"
    assert _row(third).status == "delivered"
    assert len(receiver.at("/sick")) == 2


def test_an_unexpected_error_in_an_attempt_is_a_failed_attempt_counted_by_the_breaker(
    client, tenant, receiver
):
    sub, delivery_id = _one(client, tenant, receiver.url("/never"))
    # A secret sealed under a key this process does not hold: decrypting it raises.
    sql("UPDATE subscriptions SET secret_ciphertext = :junk", junk=b"\x00" * 40)

    step = run(delivery_id)

    row = _row(delivery_id)
    assert (row.status, row.failures) == ("retrying", 1)
    assert row.last_error.startswith("internal error")
    assert [a.result for a in _attempts(delivery_id)] == ["error"]
    assert step.retry_at is not None  # retried on its schedule, not lost with a worker
    assert get_breaker().state(sub["id"])["consecutive_failures"] == 1
    assert receiver.at("/never") == []


def test_a_backlog_waiting_in_the_scheduler_is_never_handed_over_twice(client, tenant):
    subscribe(client, tenant, "http://127.0.0.1:9/slow", max_in_flight=1)
    for n in range(30):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    # Older than WEBHOOKS_LOST_AFTER_SECONDS, as a long backlog's rows are: still held in Redis.
    sql(
        "UPDATE deliveries SET dispatched_at = now() - interval '1 hour',"
        " next_attempt_at = now() - interval '1 hour'"
    )
    before = get_scheduler().totals()
    assert before["ready"] + before["in_flight"] == 30

    report = watchdog.run()

    assert (report.lost, report.due, report.sent) == (0, 0, [])
    assert get_scheduler().totals() == before
    # Held a long while: looked at again after as long again, at most RECHECK_FACTOR x
    # lost_after (not every lost_after, which would make a long backlog a steady load).
    (later,) = sql(
        "SELECT min(extract(epoch FROM dispatched_at - now())) AS low,"
        " max(extract(epoch FROM dispatched_at - now())) AS high FROM deliveries"
    )
    most = watchdog.RECHECK_FACTOR * get_settings().lost_after
    assert most - 5 < later.low <= later.high <= most
    # ... and once Redis has lost them (and they are overdue again: the pass above marked them
    # checked), every one is handed over again, once.
    get_scheduler().client.flushdb()
    sql("UPDATE deliveries SET dispatched_at = now() - interval '1 hour'")
    report = watchdog.run()
    assert len(report.sent) == len(set(report.sent)) == 30
    after = get_scheduler().totals()
    assert after["ready"] + after["in_flight"] == 30


def _kill_other_backends() -> int:
    """Terminate every other connection to this database, as a PostgreSQL restart would."""
    return len(
        sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )


@pytest.fixture
def fresh_pools() -> Iterator[None]:
    """Let the next test start without the connections a test here killed (the API's pool
    would hand one used a moment ago out again, unpinged)."""
    yield
    from webhooks.db import get_engine, state_engine

    get_engine().dispose()
    state_engine().dispose()


def test_an_attempt_on_a_pooled_connection_that_died_still_delivers(
    client, tenant, receiver, fresh_pools
):
    """After a PostgreSQL restart every pooled connection is dead, several of them used a moment
    ago (not pinged): the claim made again after the first dead one must get a live one."""
    subscribe(client, tenant, receiver.url("/pooled"))
    for n in range(3):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    ids = [str(r.id) for r in sql("SELECT id FROM deliveries ORDER BY id")]
    run(ids[0])  # leaves a connection of the delivery pool behind
    with (  # and three more, as attempts at once leave them
        state_engine().connect() as a,
        state_engine().connect() as b,
        state_engine().connect() as c,
    ):
        for conn in (a, b, c):
            conn.exec_driver_sql("SELECT 1")

    # Killed a moment after their last use (no ping then): the claim finds one dead, and the
    # claim made again must not be handed another.
    assert _kill_other_backends() >= 1
    run(ids[1])
    # Killed after sitting idle: the ping on checkout finds it dead.
    time.sleep(1.2)
    assert _kill_other_backends() >= 1
    run(ids[2])

    statuses = sql("SELECT status FROM deliveries ORDER BY id")
    assert [s.status for s in statuses] == ["delivered"] * 3
    assert len(receiver.at("/pooled")) == 3


@pytest.mark.parametrize("continue_seconds", [30.0, 0.0])
def test_a_task_goes_on_with_the_deliveries_its_slot_is_given_while_its_time_lasts(
    client, tenant, receiver, monkeypatch, continue_seconds
):
    """The delivery task attempts its delivery, then those the scheduler gives its freed slot
    (fairly, within every limit), without a Celery message each, while CONTINUE_SECONDS last;
    past them the next is sent as a task, as before."""
    import tasks.delivery as task_module
    from config.celery import QUEUE

    monkeypatch.setattr(task_module, "CONTINUE_SECONDS", continue_seconds)
    ids = one_slot_backlog(client, tenant, receiver.url("/run"), 6)
    r = get_scheduler().client

    attempted = task_module.deliver.run(ids[0])

    if continue_seconds:
        assert attempted == ids  # one task, every delivery, in order
        assert sorted(got.webhook_id for got in receiver.at("/run")) == sorted(ids)
        assert r.llen(QUEUE) == 1  # nothing more sent
        assert get_scheduler().totals() == {"ready": 0, "delayed": 0, "in_flight": 0}
    else:
        assert attempted == ids[:1]
        assert [got.webhook_id for got in receiver.at("/run")] == ids[:1]
        assert r.llen(QUEUE) == 2  # the next one went out as a task
    delivered = sql("SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'")[0].n
    assert delivered == len(attempted)


def test_a_kept_delivery_whose_process_dies_before_its_claim_is_handed_over_again(
    client, tenant, receiver
):
    """The pick a finishing attempt keeps is in flight in the scheduler with a lease, as a
    sent task is: if its process dies before attempting it, the lease ends, the scheduler
    forgets it, and the watchdog hands the row (still due in PostgreSQL) over again."""
    get_scheduler().announce("one-slot", 1)  # a tenant cap of 1: the second waits
    sub = subscribe(client, tenant, receiver.url("/kept"))
    for n in range(2):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    first, second = _ids(sub["id"])

    kept = delivery.conclude(first, delivery.attempt(first), keep=True)

    assert kept == delivery.Kept(second, circuit_closed=True)
    # ... and its process dies here: nothing claimed, nothing sent.
    assert (_row(second).status, get_scheduler().known([second])) == ("pending", [True])
    assert get_scheduler().totals()["in_flight"] == 1
    overdue = "UPDATE deliveries SET dispatched_at = now() - interval '1 hour' WHERE id = :i"
    sql(overdue, i=second)  # the watchdog looks at it: held by the scheduler, not sent twice
    assert watchdog.run().sent == []

    # Its lease in the scheduler ends; the watchdog's next look (lost_after later) finds it.
    get_scheduler().pump(now=time.time() + get_scheduler().lease + 1)
    assert get_scheduler().known([second]) == [False]
    sql(overdue, i=second)
    assert watchdog.run().sent == [second]
    run(second)
    assert sorted(got.webhook_id for got in receiver.at("/kept")) == sorted([first, second])
    assert _row(second).status == "delivered"
