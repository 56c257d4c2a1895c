"""Ordered delivery: a fifo subscription's deliveries with one key go out one at a time, in
ingest order, through failures, crashes, Redis loss, parking and replay; other keys flow.

Every test runs two worker processes (as on two hosts) against one Redis and PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from scripts.harness import WORKER_READY, Received, Receiver, Reply, wait_until
from tests.integration.conftest import subscribe

# Enough attempts that a 30 % failure rate never exhausts one (0.3 ** 15 per delivery).
MANY_RETRIES = {
    "WEBHOOKS_RETRY_DELAYS": ",".join(["0.1", "0.2", "0.3"] + ["0.5"] * 12),
    "WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD": "100000",
}


def two_workers(start_worker: Any, start_beat: Any = None, **env: Any) -> list[Any]:
    """Start two workers, and beat if given `start_beat`, side by side (each takes over a
    second); return the workers once all of them run."""
    hosts = [start_worker(concurrency=2, name=n, wait=False, **env) for n in ("host-a", "host-b")]
    if start_beat is not None:
        start_beat(**env)
    for host in hosts:
        host.wait_for_log(WORKER_READY)
    return hosts


def flaky(receiver: Receiver, path: str, failure_rate: float, seed: int = 7) -> None:
    """Answer 500 to `failure_rate` of the requests at `path`, at random."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def reply(_: Received) -> Reply:
        with lock:
            return Reply(500) if rng.random() < failure_rate else Reply(204)

    receiver.plan(path, then=reply)


def ingest(app: Any, tenant: dict[str, Any], keys: list[str], per_key: int) -> None:
    """Publish events n = 0..per_key-1 for each key: keys in parallel (four clients), each
    key's events one after another, as single events and batches mixed. A key's ingest
    order is then known: each request commits before the next of that key is sent."""

    def run(my_keys: list[str]) -> None:
        client = app.test_client()
        for n in range(per_key):
            events = [
                {"event_type": "order.updated", "payload": {"key": k, "n": n}, "ordering_key": k}
                for k in my_keys
            ]
            if n % 2:
                resp = client.post(
                    "/v1/events/batch", json={"events": events}, headers=tenant["headers"]
                )
                assert resp.status_code == 202, resp.get_json()
            else:
                for event in events:
                    resp = client.post("/v1/events", json=event, headers=tenant["headers"])
                    assert resp.status_code == 202, resp.get_json()

    threads = [threading.Thread(target=run, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def by_key(receipts: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = defaultdict(list)
    for r in sorted(receipts, key=lambda r: r.at):
        out[r.json["data"]["key"]].append(r)
    return out


def delivered_in_order(receipts: list[Received], keys: list[str], per_key: int) -> bool:
    """Every key's events all got a 2xx; wait for this, then check `assert_in_order`."""
    ok = defaultdict(set)
    for r in receipts:
        if 200 <= r.status < 300:
            ok[r.json["data"]["key"]].add(r.json["data"]["n"])
    return all(ok[k] == set(range(per_key)) for k in keys)


def assert_in_order(receipts: list[Received], keys: list[str], per_key: int) -> None:
    """For each key: requests one at a time (each began after the one before was answered),
    never a later event before an earlier one, and the successes exactly 0..per_key-1 in order
    (a crash may repeat the one that was in flight, never an earlier one)."""
    lanes = by_key(receipts)
    assert sorted(lanes) == sorted(keys)
    for key, got in lanes.items():
        for before, after in itertools.pairwise(got):
            assert after.at >= before.ended, f"{key}: two requests at once"
        ns = [r.json["data"]["n"] for r in got]
        assert ns == sorted(ns), f"{key}: out of order: {ns}"
        successes = [r.json["data"]["n"] for r in got if 200 <= r.status < 300]
        once = [n for i, n in enumerate(successes) if i == 0 or successes[i - 1] != n]
        assert once == list(range(per_key)), f"{key}: {successes}"


def fifo(client: Any, tenant: dict[str, Any], url: str, **extra: Any) -> dict[str, Any]:
    sub = subscribe(client, tenant, url, ["order.updated"], ordering="fifo", **extra)
    assert sub["ordering"] == "fifo"
    return sub


# Keys and events per key of the two random runs. Ten keys keep all four worker slots (two
# hosts of two) busy with different lanes at once, and twenty events a key, ingested faster
# than they go out, keep every lane's next deliveries waiting behind its holder: a lane that
# let two out at once, or a retry overtaken by the next event, shows within a few of them.
# (Checked: with `ordering` left at "none" both runs fail, out of order or two at once.)
KEYS, PER_KEY = 10, 20


@pytest.mark.long
def test_each_keys_successes_arrive_in_ingest_order_through_random_failures(
    app, client, tenant, receiver: Receiver, start_worker
):
    keys = [f"k{i:02}" for i in range(KEYS)]
    flaky(receiver, "/o", 0.3)
    fifo(client, tenant, receiver.url("/o"))
    two_workers(start_worker, **MANY_RETRIES)
    ingest(app, tenant, keys, PER_KEY)
    wait_until(
        lambda: delivered_in_order(receiver.at("/o"), keys, PER_KEY),
        timeout=120,
        message=f"every key's {PER_KEY} events",
    )
    got = receiver.at("/o")
    # About 85 expected (0.3 / 0.7 of 200); 40 is far below any seed's share.
    assert sum(1 for r in got if r.status == 500) > 40, "the failures did not happen"
    assert_in_order(got, keys, PER_KEY)


@pytest.mark.long
def test_order_holds_through_killed_workers_and_redis_restarted_empty(
    app, client, tenant, receiver: Receiver, start_worker, start_beat, restartable_redis
):
    redis_server = restartable_redis
    env = {
        **MANY_RETRIES,
        "REDIS_URL": redis_server.url,
        "WEBHOOKS_LEASE_MARGIN_SECONDS": "1",
    }
    keys = [f"k{i:02}" for i in range(KEYS)]
    rng = random.Random(11)
    lock = threading.Lock()

    def reply(_: Received) -> Reply:
        # Slow enough that kills land in the middle of attempts.
        with lock:
            fail = rng.random() < 0.3
        return Reply(500 if fail else 204, delay=0.02)

    receiver.plan("/o", then=reply)
    fifo(client, tenant, receiver.url("/o"))
    a, b = two_workers(start_worker, start_beat, **env)
    feeder = threading.Thread(target=ingest, args=(app, tenant, keys, PER_KEY))
    feeder.start()

    def successes() -> int:
        return sum(1 for r in receiver.at("/o") if r.status == 204)

    # Each blow lands with a fifth of the events still to go, so every lane has deliveries
    # waiting behind the ones the blow hits.
    total = len(keys) * PER_KEY
    wait_until(lambda: successes() > total // 5, timeout=60, message="deliveries under way")
    os.kill(a.children()[0], 9)  # a pool process, mid-attempt
    wait_until(lambda: successes() > 2 * total // 5, timeout=60, message="after the child kill")
    b.kill()  # a whole worker: its prefetched and running tasks are lost
    start_worker(concurrency=2, name="host-c", **env)
    wait_until(lambda: successes() > 3 * total // 5, timeout=90, message="after the worker kill")
    redis_server.kill()
    time.sleep(1)
    redis_server.start()  # empty: no queue, no lanes' holders in the scheduler, no circuits
    feeder.join()
    wait_until(
        lambda: delivered_in_order(receiver.at("/o"), keys, PER_KEY),
        timeout=180,
        message=f"every key's {PER_KEY} events",
    )
    assert_in_order(receiver.at("/o"), keys, PER_KEY)


def _latencies(receipts: list[Received], sent: dict[tuple[str, int], float]) -> list[float]:
    firsts: dict[tuple[str, int], float] = {}
    for r in receipts:
        if r.status == 204:
            key = (r.json["data"]["key"], r.json["data"]["n"])
            firsts.setdefault(key, r.at)
    return [firsts[k] - at for k, at in sent.items()]


@pytest.mark.timing
def test_a_key_blocked_by_failures_holds_up_only_its_own_lane(
    client, tenant, receiver: Receiver, start_worker
):
    blocked_until = [0.0]

    def reply(item: Received) -> Reply:
        if item.json["data"]["key"] == "stuck" and time.time() < blocked_until[0]:
            return Reply(500)
        return Reply(204)

    receiver.plan("/o", then=reply)
    sub = fifo(client, tenant, receiver.url("/o"))
    env = {
        "WEBHOOKS_RETRY_DELAYS": ",".join(["0.5"] * 60),
        "WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD": "5",
    }
    two_workers(start_worker, **env)
    keys = [f"k{i}" for i in range(8)]

    def publish(key: str, n: int) -> None:
        event = {"event_type": "order.updated", "payload": {"key": key, "n": n}}
        resp = client.post(
            "/v1/events", json=event | {"ordering_key": key}, headers=tenant["headers"]
        )
        assert resp.status_code == 202, resp.get_json()

    def steady(seconds: float, start: int) -> dict[tuple[str, int], float]:
        """Every key one event per 0.4 s; return when each was sent."""
        sent: dict[tuple[str, int], float] = {}
        n = start
        end = time.time() + seconds
        while time.time() < end:
            for key in keys:
                sent[(key, n)] = time.time()
                publish(key, n)
            n += 1
            time.sleep(0.4)
        return sent

    # About ten rounds of every key to learn the quiet latency, then some twenty-five with one lane
    # blocked and retried every half second: its later events must wait, no other lane may.
    quiet = steady(4, 0)
    blocked_until[0] = time.time() + 10
    for n in range(3):
        publish("stuck", n)
    loaded = steady(5, 1000)
    # Half way: the blocked lane shows in the health.
    health = client.get(f"/v1/subscriptions/{sub['id']}/health", headers=tenant["headers"])
    assert health.get_json()["ordering"]["blocked_lanes"] == 1
    assert health.get_json()["ordering"]["oldest_blocked_since"] is not None
    loaded |= steady(blocked_until[0] - time.time(), 2000)
    wait_until(lambda: len(receiver.at("/o")) >= len(quiet) + len(loaded), timeout=30)
    quiet_worst = max(_latencies(receiver.at("/o"), quiet))
    loaded_worst = max(_latencies(receiver.at("/o"), loaded))
    assert loaded_worst < quiet_worst + 1.0, (quiet_worst, loaded_worst)

    # The stuck lane was tried again and again, its later events held back, then it resumed.
    stuck = [r for r in receiver.at("/o") if r.json["data"]["key"] == "stuck"]
    blocked = [r for r in stuck if r.at < blocked_until[0]]
    assert len(blocked) > 10 and {r.json["data"]["n"] for r in blocked} == {0}
    wait_until(
        lambda: delivered_in_order(receiver.at("/o"), ["stuck"], 3),
        timeout=30,
        message="the stuck lane resumed",
    )
    stuck = [r for r in receiver.at("/o") if r.json["data"]["key"] == "stuck"]
    assert_in_order(stuck, ["stuck"], 3)


@pytest.mark.long
def test_lanes_wait_behind_an_open_circuit_and_resume_in_order(
    app, client, tenant, receiver: Receiver, start_worker, start_beat
):
    down = threading.Event()
    down.set()
    receiver.plan("/o", then=lambda _: Reply(503) if down.is_set() else Reply(204))
    sub = fifo(client, tenant, receiver.url("/o"))
    env = {
        "WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS": "2",
        "WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD": "3",
        "WEBHOOKS_RETRY_DELAYS": ",".join(["0.5"] * 30),
    }
    two_workers(start_worker, start_beat, **env)
    keys = [f"k{i}" for i in range(5)]
    ingest(app, tenant, keys, 10)

    def health() -> dict[str, Any]:
        h = client.get(f"/v1/subscriptions/{sub['id']}/health", headers=tenant["headers"])
        return h.get_json()  # type: ignore[no-any-return]

    wait_until(lambda: health()["parked"] >= 1, timeout=30, message="the circuit opened, parked")
    # A probe fails while the lanes wait: it opens the circuit again, a new opened_at.
    opened_at = health()["circuit"]["opened_at"]
    wait_until(
        lambda: health()["circuit"]["opened_at"] not in (None, opened_at),
        timeout=30,
        message="a failed probe",
    )
    down.clear()
    wait_until(
        lambda: delivered_in_order(receiver.at("/o"), keys, 10),
        timeout=60,
        message="every key's events after the circuit closed",
    )
    assert_in_order(receiver.at("/o"), keys, 10)


def test_replay_sends_each_keys_deliveries_again_in_order(
    app, client, tenant, receiver: Receiver, start_worker
):
    sub = fifo(client, tenant, receiver.url("/o"))
    two_workers(start_worker)
    keys = [f"k{i}" for i in range(5)]
    since = datetime.now(UTC).isoformat()
    ingest(app, tenant, keys, 10)
    wait_until(lambda: delivered_in_order(receiver.at("/o"), keys, 10), timeout=60)
    first_round = len(receiver.at("/o"))
    # Delivered ones are not in flight: the replay requeues them all.
    wait_until(
        lambda: (
            client.get(
                f"/v1/subscriptions/{sub['id']}/health", headers=tenant["headers"]
            ).get_json()["deliveries"]["delivered"]
            == 50
        ),
        timeout=30,
    )
    resp = client.post(
        f"/v1/subscriptions/{sub['id']}/replay", json={"since": since}, headers=tenant["headers"]
    )
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["requeued"] == 50
    wait_until(lambda: len(receiver.at("/o")) >= first_round + 50, timeout=60)
    time.sleep(0.5)
    again = sorted(receiver.at("/o"), key=lambda r: r.at)[first_round:]
    assert len(again) == 50
    assert_in_order(again, keys, 10)


def test_fifo_fields_in_the_api(client, tenant, receiver: Receiver):
    sub = fifo(client, tenant, receiver.url("/o"))
    plain = subscribe(client, tenant, receiver.url("/p"), ["order.updated"])
    assert plain["ordering"] == "none"
    resp = client.post(
        "/v1/events",
        json={"event_type": "order.updated", "payload": {}, "ordering_key": "order-1"},
        headers=tenant["headers"],
    )
    assert resp.status_code == 202
    assert resp.get_json()["ordering_key"] == "order-1"
    detail = client.get(f"/v1/events/{resp.get_json()['id']}", headers=tenant["headers"])
    assert {d["ordering_key"] for d in detail.get_json()["deliveries"]} == {"order-1"}
    health = client.get(f"/v1/subscriptions/{sub['id']}/health", headers=tenant["headers"])
    assert health.get_json()["ordering"] == {
        "ordering": "fifo",
        "blocked_lanes": 0,
        "oldest_blocked_since": None,
    }
    for bad in ("", "x" * 201, 5):
        resp = client.post(
            "/v1/events",
            json={"event_type": "order.updated", "payload": {}, "ordering_key": bad},
            headers=tenant["headers"],
        )
        assert resp.status_code == 422, bad
        assert "ordering_key" in resp.get_json()["error"]["details"]["fields"]
    resp = client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"ordering": "lifo"}, headers=tenant["headers"]
    )
    assert resp.status_code == 422
    spec = client.get("/openapi.json").get_json()["components"]["schemas"]
    for schema, field in [
        ("EventCreate", "ordering_key"),
        ("BatchEvent", "ordering_key"),
        ("Event", "ordering_key"),
        ("Delivery", "ordering_key"),
        ("SubscriptionCreate", "ordering"),
        ("SubscriptionUpdate", "ordering"),
        ("Subscription", "ordering"),
        ("SubscriptionHealth", "ordering"),
    ]:
        assert field in spec[schema]["properties"], (schema, field)
    assert spec["SubscriptionCreate"]["properties"]["ordering"]["enum"] == ["none", "fifo"]


def test_only_each_lanes_holder_is_due_and_switching_to_none_releases_the_rest(
    client, tenant, receiver: Receiver
):
    sub = fifo(client, tenant, receiver.url("/o"))
    for key in ("a", "a", "a", "b"):
        event = {"event_type": "order.updated", "payload": {}, "ordering_key": key}
        assert client.post("/v1/events", json=event, headers=tenant["headers"]).status_code == 202

    def due() -> dict[str, int]:
        resp = client.get(
            f"/v1/deliveries?subscription_id={sub['id']}", headers=tenant["headers"]
        ).get_json()
        out: dict[str, int] = defaultdict(int)
        for d in resp["data"]:
            out[d["ordering_key"]] += d["next_attempt_at"] is not None
        return dict(out)

    # No worker: each lane's first delivery is due, the others wait for it.
    assert due() == {"a": 1, "b": 1}
    resp = client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"ordering": "none"}, headers=tenant["headers"]
    )
    assert resp.status_code == 200 and resp.get_json()["ordering"] == "none"
    assert due() == {"a": 3, "b": 1}


def test_a_keys_numbers_follow_the_order_of_commits(client, tenant, receiver: Receiver):
    """Two ingests of one key at once: the second waits for the first's commit to number its
    delivery, so the lane's order is the commits' order."""
    from sqlalchemy import text

    from webhooks.db import new_session, uuid7
    from webhooks.services import ingest

    sub = fifo(client, tenant, receiver.url("/o"))

    def event(n: int) -> dict[str, Any]:
        return {
            "id": str(uuid7()),
            "event_type": "order.updated",
            "payload": {"n": n},
            "channels": [],
            "ordering_key": "k",
        }

    first, second = new_session(), new_session()
    tid = first.execute(
        text("SELECT tenant_id FROM subscriptions WHERE id = :id"), {"id": sub["id"]}
    ).scalar_one()
    ingest.store(first, tid, [event(1)], datetime.now(UTC))  # numbered, not committed
    done = threading.Event()

    def later() -> None:
        ingest.store(second, tid, [event(2)], datetime.now(UTC))
        second.commit()
        done.set()

    thread = threading.Thread(target=later)
    thread.start()
    assert not done.wait(0.5), "the second ingest numbered its delivery before the first commit"
    first.commit()
    assert done.wait(10)
    thread.join()
    first.close()
    second.close()
    with new_session() as session:
        seqs = session.execute(
            text(
                "SELECT e.payload->>'n' AS n, d.lane_seq, d.next_attempt_at IS NOT NULL AS due"
                " FROM deliveries d JOIN events e ON e.id = d.event_id ORDER BY d.lane_seq"
            )
        ).all()
    assert [(r.n, r.lane_seq, r.due) for r in seqs] == [("1", 1, True), ("2", 2, False)]
