"""Requests that race each other, and odd path values: each ends in a consistent state and a
clear answer (real PostgreSQL, requests in threads through Flask's test client)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.conftest import subscribe
from tests.support import sql

NOWHERE = "http://127.0.0.1:9/hook"


def _at_once(app: Any, calls: list[Callable[[Any], Any]]) -> list[Any]:
    """Run each call with its own test client, all released together."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[Any], Any]) -> Any:
        client = app.test_client()
        barrier.wait()
        return call(client)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _secrets(subscription_id: str) -> set[str]:
    from webhooks.crypto import decrypt_secret

    ((current, previous),) = sql(
        "SELECT secret_ciphertext, previous_secret_ciphertext FROM subscriptions WHERE id = :id",
        id=subscription_id,
    )
    associated = subscription_id.encode()
    return {decrypt_secret(c, associated) for c in (current, previous) if c is not None}


def test_two_rotations_at_once_each_hand_out_a_secret_that_signs(
    app: Any, client: Any, tenant: Any
) -> None:
    sub = subscribe(client, tenant, NOWHERE, ["a"])["id"]

    def rotate(c: Any) -> str:
        answer = c.post(f"/v1/subscriptions/{sub}/rotate-secret", headers=tenant["headers"])
        assert answer.status_code == 200
        return str(answer.get_json()["secret"])

    for _ in range(10):
        handed_out = _at_once(app, [rotate, rotate])
        # One is current, the other previous (signing too during the grace period).
        assert set(handed_out) == _secrets(sub)


def test_a_subscription_made_while_its_consumer_is_deleted_never_outlives_it(
    app: Any, client: Any, tenant: Any
) -> None:
    headers = tenant["headers"]
    for i in range(15):
        uid = f"cus_{i}"
        made = client.post("/v1/consumers", json={"uid": uid, "name": "x"}, headers=headers)
        assert made.status_code == 201
        body = {"url": NOWHERE, "event_types": ["*"], "consumer": uid}
        created, deleted = _at_once(
            app,
            [
                lambda c, b=body: c.post("/v1/subscriptions", json=b, headers=headers),
                lambda c, u=uid: c.delete(f"/v1/consumers/{u}", headers=headers),
            ],
        )
        assert created.status_code in (201, 422) and deleted.status_code == 204
    orphans = sql(
        "SELECT count(*) FROM subscriptions s JOIN consumers c ON c.id = s.consumer_id"
        " WHERE s.deleted_at IS NULL AND c.deleted_at IS NOT NULL"
    )[0][0]
    assert orphans == 0


def test_batches_sharing_keys_in_other_orders_are_all_accepted(
    app: Any, client: Any, tenant: Any
) -> None:
    """Each batch takes its keys in one order: no deadlock between two that share keys."""
    subscribe(client, tenant, NOWHERE, ["a"])

    def batch(keys: list[str]) -> Callable[[Any], Any]:
        events = [{"event_type": "a", "payload": {"k": k}, "idempotency_key": k} for k in keys]
        return lambda c: c.post(
            "/v1/events/batch", json={"events": events}, headers=tenant["headers"]
        )

    for round_ in range(4):
        keys = [f"r{round_}-k{i:03}" for i in range(200)]
        answers = _at_once(app, [batch(keys), batch(keys[::-1])])
        assert [a.status_code for a in answers] == [202, 202], [a.get_json() for a in answers]
        first, second = (a.get_json()["data"] for a in answers)
        # The same event for each key in both answers, each answer in its own order.
        assert [e["id"] for e in first] == [e["id"] for e in reversed(second)]
    assert sql("SELECT count(*) FROM events")[0][0] == 800


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/consumers/a%00b"),
        ("PATCH", "/v1/consumers/a%00b"),
        ("DELETE", "/v1/consumers/a%00b"),
        ("GET", "/v1/event-types/a%00b"),
        ("PATCH", "/v1/event-types/a%00b"),
        ("POST", "/v1/consumers/a%00b/portal-links"),
    ],
)
def test_a_nul_character_in_a_path_is_a_clear_4xx(
    client: Any, tenant: Any, method: str, path: str
) -> None:
    body = {} if method == "PATCH" else None
    answer = client.open(path, method=method, json=body, headers=tenant["headers"])
    assert 400 <= answer.status_code < 500
    assert answer.get_json()["error"]["code"]


def test_a_change_under_way_does_not_hold_up_ingest(app: Any, client: Any, tenant: Any) -> None:
    """A change locks its subscription FOR NO KEY UPDATE: ingest, whose new deliveries hold the
    row only through their foreign key, goes on meanwhile (FOR UPDATE would make it wait)."""
    from webhooks.db import session_scope
    from webhooks.services import subscriptions

    sub = subscribe(client, tenant, NOWHERE, ["a"])["id"]
    with session_scope() as session, ThreadPoolExecutor(1) as pool:
        subscriptions.get(session, tenant["id"], uuid.UUID(sub), lock="update")
        publishing = pool.submit(
            lambda: app.test_client().post(
                "/v1/events", json={"event_type": "a", "payload": {}}, headers=tenant["headers"]
            )
        )
        answer = publishing.result(timeout=10)  # while the lock is held
    assert answer.status_code == 202 and answer.get_json()["deliveries"] == 1


def test_single_events_that_arrive_together_share_one_commit_and_each_is_stored(
    app: Any, client: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit against PostgreSQL: the first event's flush is held until five more wait;
    those five are then stored by one statement and one COMMIT, and every answer is its own
    event, counted and stored with its delivery."""
    subscribe(client, tenant, NOWHERE, ["a"])
    sizes = _hold_first_flush(monkeypatch, lambda: _waiting() == 5)
    answers = _at_once(
        app,
        [
            lambda c, i=i: c.post(
                "/v1/events",
                json={"event_type": "a", "payload": {"n": i}},
                headers=tenant["headers"],
            )
            for i in range(6)
        ],
    )
    assert sizes == [1, 5]
    assert [a.status_code for a in answers] == [202] * 6
    bodies = [a.get_json() for a in answers]
    assert sorted(b["payload"]["n"] for b in bodies) == list(range(6))
    assert all(b["deliveries"] == 1 for b in bodies)
    stored = dict(
        sql(
            "SELECT e.payload->>'n', count(d.id) FROM events e"
            " JOIN deliveries d ON d.event_id = e.id WHERE e.id = ANY(CAST(:ids AS uuid[]))"
            " GROUP BY e.id, e.payload",
            ids=[b["id"] for b in bodies],
        )
    )
    assert stored == {str(i): 1 for i in range(6)}


def test_an_event_that_fails_in_a_group_fails_alone(
    app: Any, client: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event PostgreSQL refuses (here a type longer than its column, which the API would
    have refused first) fails its group's statement; the group is stored again one event at a
    time, so the others are stored and only the refused one answers an error."""
    from sqlalchemy.exc import DataError

    from webhooks.db import new_session
    from webhooks.services import ingest
    from webhooks.services.group_commit import Job

    subscribe(client, tenant, NOWHERE, ["a"])
    calls = _hold_first_flush(monkeypatch, lambda: _waiting() == 3)

    def publish(event_type: str, n: int) -> Any:
        event = ingest.NewEvent(event_type, {"n": n})
        row = ingest._rows([event], [0], [uuid.uuid4()], {})[0]
        session = new_session()
        try:
            return ingest._GROUP.publish(session, Job(tenant["id"], row))
        except DataError as exc:
            return exc
        finally:
            session.close()

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(publish, "a", 0)
        _until(lambda: calls == [1])
        rest = [pool.submit(publish, "a", 1), pool.submit(publish, "a" * 300, 2)]
        _until(lambda: _waiting() == 2)
        rest.append(pool.submit(publish, "a", 3))
        answers = [first.result(20)] + [f.result(20) for f in rest]
    assert calls == [1, 3, 1, 1, 1]
    assert isinstance(answers[2], DataError)
    assert all(isinstance(answers[i], Job) and answers[i].deliveries == 1 for i in (0, 1, 3))
    assert sorted(n for (n,) in sql("SELECT payload->>'n' FROM events")) == ["0", "1", "3"]
    assert sql("SELECT count(*) FROM deliveries") == [(3,)]


def _hold_first_flush(monkeypatch: pytest.MonkeyPatch, until: Callable[[], Any]) -> list[int]:
    """Make this process's group commit hold its first flush until `until()` is true; return
    the list of each flush's size, filled in as they come."""
    from webhooks.services import ingest

    group = ingest._GROUP
    real_store = group._store
    sizes: list[int] = []

    def store(session: Any, jobs: list[Any], now: Any) -> Any:
        sizes.append(len(jobs))
        if len(sizes) == 1:
            _until(until)
        return real_store(session, jobs, now)

    monkeypatch.setattr(group, "_store", store)
    return sizes


def _waiting() -> int:
    from webhooks.services import ingest

    return ingest._GROUP._waiting()


def _until(check: Callable[[], Any], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _lock_waiters(relation: str, mode: str) -> int:
    return int(
        sql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = :rel AND NOT l.granted AND l.mode = :mode",
            rel=relation,
            mode=mode,
        )[0][0]
    )


def test_a_request_waiting_in_a_group_holds_no_lock_a_migration_would_queue_behind(
    app: Any, client: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that read a table (its consumer) and then waited for its group's leader in
    that open transaction would hold the table's lock: a DDL would queue behind it, the
    leader's INSERT (whose foreign key needs the table) behind the DDL, and PostgreSQL could not
    see the wait in Python to break it. The request ends its transaction before it waits."""
    from sqlalchemy import text

    from webhooks.db import get_engine

    made = client.post(
        "/v1/consumers", json={"uid": "cus_1", "name": "x"}, headers=tenant["headers"]
    )
    assert made.status_code == 201
    subscribe(client, tenant, NOWHERE, ["a"])
    subscribe(client, tenant, NOWHERE, ["a"], consumer="cus_1")
    ddl_result: list[str] = []
    # The first flush waits until the two others wait, and the DDL is done or queued.
    calls = _hold_first_flush(
        monkeypatch,
        lambda: (
            _waiting() == 2
            and (ddl_result or _lock_waiters("consumers", "AccessExclusiveLock") == 1)
        ),
    )

    def ddl() -> None:
        with get_engine().connect() as conn:
            try:
                conn.execute(text("SET lock_timeout = '8s'"))
                conn.execute(text("ALTER TABLE consumers ADD COLUMN probe int"))
                ddl_result.append("done")
            except Exception as exc:  # the answer under test
                ddl_result.append(type(exc).__name__)
            finally:
                conn.rollback()

    def post(body: dict[str, Any]) -> Any:
        return app.test_client().post("/v1/events", json=body, headers=tenant["headers"])

    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, {"event_type": "a", "payload": {"n": 0}})
        _until(lambda: calls == [1])
        second = pool.submit(post, {"event_type": "a", "payload": {"n": 1}})
        _until(lambda: _waiting() == 1)
        third = pool.submit(post, {"event_type": "a", "payload": {"n": 2}, "consumer": "cus_1"})
        _until(lambda: _waiting() == 2)
        migration = threading.Thread(target=ddl)
        migration.start()
        answers = [f.result(30) for f in (first, second, third)]
        migration.join(30)
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert ddl_result == ["done"]
    assert time.monotonic() - started < 6, "the requests waited until the DDL gave up"


def test_one_tenants_lock_wait_does_not_hold_up_another_tenants_ingest(
    app: Any, client: Any, tenant: Any, other_tenant: Any
) -> None:
    """Tenant A's event waits for its fifo lane, locked by an ingest not yet committed (of
    another process, say). Groups are per tenant: tenant B's event is stored meanwhile."""
    from datetime import UTC, datetime

    from webhooks.db import new_session, uuid7
    from webhooks.services import ingest

    subscribe(client, tenant, NOWHERE, ["a"], ordering="fifo")
    subscribe(client, other_tenant, NOWHERE, ["a"])
    holder = new_session()
    row = {"id": str(uuid7()), "event_type": "a", "payload": {}, "ordering_key": "k"}
    ingest.store(holder, tenant["id"], [row], datetime.now(UTC))  # lane k locked until commit
    try:
        with ThreadPoolExecutor(2) as pool:
            try:
                a = pool.submit(
                    lambda: app.test_client().post(
                        "/v1/events",
                        json={"event_type": "a", "payload": {}, "ordering_key": "k"},
                        headers=tenant["headers"],
                    )
                )
                _until(
                    lambda: (
                        sql(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND datname = current_database()"
                        )[0][0]
                        >= 1
                    )
                )  # A's ingest waits for the lane
                b = app.test_client().post(
                    "/v1/events",
                    json={"event_type": "a", "payload": {}},
                    headers=other_tenant["headers"],
                )
                assert b.status_code == 202
                assert not a.done()
            finally:
                holder.commit()
            assert a.result(10).status_code == 202
    finally:
        holder.close()
