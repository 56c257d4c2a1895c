"""The scheduler's Lua, run by fakeredis: fair turns, limits, timers, leases, known work."""

from __future__ import annotations

import fakeredis
import pytest

from webhooks.scheduler import Item, Picked, Scheduler

NOW = 1_000_000.0


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def make(client, **kwargs) -> Scheduler:
    kwargs.setdefault("lease", 30.0)
    kwargs.setdefault("tenant_cap", "100%")
    kwargs.setdefault("default_slots", 4)
    kwargs.setdefault("window_factor", 1.0)
    return Scheduler(client, **kwargs)


def finish(s: Scheduler, *args, **kwargs) -> Picked:
    return s.finish_call(*args, **kwargs).run()


def items(tenant: str, sub: str, n: int, start: int = 0, **limits) -> list[Item]:
    return [Item(f"{sub}-{i}", sub, tenant, **limits) for i in range(start, start + n)]


def test_window_follows_the_announced_slots(client):
    s = make(client)
    assert len(s.enqueue(items("A", "a", 20), now=NOW).ids) == 4  # nobody announced: default
    s.announce("w1", 3, now=NOW)
    s.announce("w2", 5, now=NOW)
    assert len(s.pump(now=NOW).ids) == 4  # 8 slots, 4 in flight
    # a worker that stops announcing drops out of the window
    s.announce("w2", 5, now=NOW - 100)
    for i in range(8):
        finish(s, f"a-{i}", "a", "A", "ok", now=NOW + 1)
    assert s.totals()["in_flight"] == 3


def test_a_backlog_of_one_tenant_does_not_hold_up_another(client):
    s = make(client, default_slots=2)
    first = s.enqueue(items("A", "a", 5000), now=NOW)
    assert first.ids == ["a-0", "a-1"]
    assert s.enqueue(items("B", "b", 1), now=NOW).ids == []  # the window is full
    # the next slot that frees goes to B, not to the 4998 of A that wait
    assert finish(s, "a-0", "a", "A", "ok", now=NOW + 0.1).ids == ["b-0"]
    assert finish(s, "a-1", "a", "A", "ok", now=NOW + 0.2).ids == ["a-2"]


def test_tenants_take_turns_and_subscriptions_take_turns_within_a_tenant(client):
    s = make(client, default_slots=6)
    s.announce("w", 0, now=NOW)  # announce nothing: default window
    s.enqueue(items("A", "a1", 10) + items("A", "a2", 10), now=NOW, max_picks=0)
    s.enqueue(items("B", "b1", 10), now=NOW, max_picks=0)
    picked = s.pump(now=NOW).ids
    assert sorted(p.split("-")[0] for p in picked) == ["a1", "a1", "a2", "b1", "b1", "b1"]


def test_tenant_cap_is_a_share_of_the_slots(client):
    s = make(client, tenant_cap="50%", default_slots=4, window_factor=2.0)
    picked = s.enqueue(items("A", "a1", 10) + items("A", "a2", 10), now=NOW)
    assert len(picked.ids) == 2
    assert picked.blocked.get("tenant_cap")
    assert len(s.enqueue(items("B", "b", 10), now=NOW).ids) == 2


def test_max_in_flight_is_never_exceeded_and_its_slot_returns_on_finish(client):
    s = make(client, default_slots=10)
    picked = s.enqueue(items("A", "a", 10, max_in_flight=2), now=NOW)
    assert picked.ids == ["a-0", "a-1"]
    assert picked.blocked == {"max_in_flight": 1}
    assert s.pump(now=NOW).ids == []
    assert finish(s, "a-0", "a", "A", "ok", now=NOW + 1).ids == ["a-2"]


def test_rate_limit_spaces_picks_and_a_timer_brings_the_subscription_back(client):
    s = make(client, default_slots=100)
    picked = s.enqueue(items("A", "a", 200, rate_limit=10, max_in_flight=500), now=NOW)
    assert picked.ids == ["a-0"]
    assert picked.blocked == {"rate_limit": 1}
    assert picked.wake_at == pytest.approx(NOW + 0.104)
    assert s.pump(now=NOW + 0.05).ids == []
    assert s.pump(now=NOW + 0.105).ids == ["a-1"]
    # over ten simulated seconds, picked about 10 a second, never more in any second
    times = []
    t = NOW + 0.105
    while t < NOW + 10.105:
        t += 0.01
        times += [t] * len(s.pump(now=t).ids)
    for start in times:
        assert sum(1 for x in times if start <= x < start + 1) <= 10
    assert 90 <= len(times) <= 100


def test_throttling_halves_the_window_and_the_rate_and_successes_restore_them(client):
    s = make(client, default_slots=100)
    s.enqueue(items("A", "a", 200, max_in_flight=8), now=NOW)
    assert s.subscription_state("a", 10, None)["effective_max_in_flight"] == 8
    finish(s, "a-0", "a", "A", "throttled", now=NOW + 0.5)
    state = s.subscription_state("a", 10, None)
    assert state["effective_max_in_flight"] == 4
    assert state["effective_rate_limit"] is not None
    first_rate = state["effective_rate_limit"]
    finish(s, "a-1", "a", "A", "throttled", now=NOW + 0.6)
    assert s.subscription_state("a", 10, None)["effective_max_in_flight"] == 2
    assert s.subscription_state("a", 10, None)["effective_rate_limit"] < first_rate
    for i in range(2, 200):
        finish(s, f"a-{i}", "a", "A", "ok", now=NOW + 1 + i / 100)
    state = s.subscription_state("a", 10, None)
    assert state["effective_max_in_flight"] == 8
    assert state["effective_rate_limit"] is None


def test_a_closed_circuit_restarts_from_a_window_of_one_and_doubles(client):
    s = make(client, default_slots=100)
    s.enqueue(items("A", "a", 1, max_in_flight=50), now=NOW)
    finish(s, "a-0", "a", "A", "restart", now=NOW)
    assert s.subscription_state("a", 10, None)["effective_max_in_flight"] == 1
    s.enqueue(items("A", "a", 60, start=1, max_in_flight=50), now=NOW)
    widths = []
    in_flight = ["a-1"]
    n = 0
    while in_flight and len(widths) < 5:
        widths.append(len(in_flight))
        nxt = []
        for d in in_flight:
            n += 1
            nxt += finish(s, d, "a", "A", "ok", now=NOW + n).ids
        in_flight = nxt
    assert widths[:4] == [1, 2, 4, 8]


def test_retries_wait_in_a_sorted_set_and_become_ready_when_due(client):
    s = make(client)
    s.enqueue(items("A", "a", 1), now=NOW)
    picked = finish(s, "a-0", "a", "A", "failed", retry_at=NOW + 5, now=NOW)
    assert picked.ids == [] and picked.wake_at == NOW + 5
    assert s.known(["a-0"]) == [True]
    assert s.pump(now=NOW + 4.9).ids == []
    assert s.pump(now=NOW + 5).ids == ["a-0"]
    finish(s, "a-0", "a", "A", "ok", now=NOW + 6)
    assert s.known(["a-0"]) == [False]


def test_an_expired_lease_frees_its_slot_and_forgets_the_delivery(client):
    s = make(client, default_slots=1, lease=10)
    assert s.enqueue(items("A", "a", 2), now=NOW).ids == ["a-0"]
    assert s.pump(now=NOW + 9).ids == []
    assert s.pump(now=NOW + 11).ids == ["a-1"]
    assert s.known(["a-0", "a-1"]) == [False, True]


def test_a_duplicate_of_a_delivery_in_flight_is_not_started_twice(client):
    s = make(client, default_slots=10)
    s.enqueue(items("A", "a", 1), now=NOW)
    assert s.enqueue(items("A", "a", 1), now=NOW).ids == []
    assert s.totals() == {"ready": 0, "delayed": 0, "in_flight": 1}


def test_lost_state_starts_empty_and_works(client):
    s = make(client)
    s.enqueue(items("A", "a", 3), now=NOW)
    client.flushall()
    assert s.totals() == {"ready": 0, "delayed": 0, "in_flight": 0}
    assert s.known(["a-0"]) == [False]
    assert finish(s, "a-0", "a", "A", "ok", now=NOW).ids == []
    assert s.enqueue(items("A", "a", 1, start=5), now=NOW).ids == ["a-5"]


def test_forgotten_picks_free_their_slots_and_leave_the_scheduler(client):
    s = make(client, default_slots=1)
    assert s.enqueue(items("A", "a", 2), now=NOW).ids == ["a-0"]
    s.forget(["a-0"])
    assert s.known(["a-0"]) == [False]
    assert s.pump(now=NOW).ids == ["a-1"]


def test_the_metrics_start_every_throttle_reason_at_zero():
    from webhooks import metrics
    from webhooks.scheduler import BLOCK_REASONS

    assert metrics.THROTTLE_REASONS == BLOCK_REASONS


def test_a_stale_message_leaves_no_trace(client):
    s = make(client)
    finish(s, "gone", "", "", "none", now=NOW)
    assert client.zcard("wh:q:tenants") == 0
    assert not client.exists("wh:q:ts:")


def test_a_pick_sends_the_message_celery_would_with_ids_of_its_own(client):
    """With the delivery task's template, the picking script itself pushes one task message per
    picked delivery: the message dispatch renders in Python (Celery's own, see test_batch),
    but for its unique IDs, and in the order picked."""
    import base64
    import json
    import uuid

    from webhooks import dispatch

    template = dispatch.template(dispatch.DELIVER_TASK)
    s = make(client, tasks=template, default_slots=3)
    ids = ["0192f6b1-aaaa-7bbb-8ccc-000000000001", "0192f6b1-aaaa-7bbb-8ccc-000000000002"]
    picked = s.enqueue([Item(i, "a", "A") for i in ids], now=NOW)
    assert picked.ids == ids and picked.sent
    pushed = [json.loads(m) for m in reversed(client.lrange(template.queue, 0, -1))]
    assert len(pushed) == 2
    # A subscription the breaker knows nothing of: its circuit is closed (see the next test).
    expected = [json.loads(template.render(i, circuit="closed")) for i in ids]
    unique = {"id", "root_id", "correlation_id", "delivery_tag"}

    def shape(message):
        headers = {k: v for k, v in message["headers"].items() if k not in unique}
        properties = {k: v for k, v in message["properties"].items() if k not in unique}
        return {**message, "headers": headers, "properties": properties}

    assert [shape(m) for m in pushed] == [shape(m) for m in expected]
    for message, delivery_id in zip(pushed, ids, strict=True):
        body = json.loads(base64.b64decode(message["body"]))
        assert body[0] == [delivery_id]
        assert message["headers"]["argsrepr"] == repr([delivery_id])
        task_id = message["headers"]["id"]
        assert uuid.UUID(task_id).version == 7
        assert uuid.UUID(message["properties"]["delivery_tag"]).version == 7
        assert task_id == message["headers"]["root_id"] == message["properties"]["correlation_id"]
    tags = {m["properties"]["delivery_tag"] for m in pushed}
    tasks = {m["headers"]["id"] for m in pushed}
    assert len(tags | tasks) == 4  # every ID unique
    # the next pick's IDs differ from these too
    finish(s, ids[0], "a", "A", "ok", now=NOW + 1)
    s.enqueue([Item("0192f6b1-aaaa-7bbb-8ccc-000000000003", "a", "A")], now=NOW + 1)
    third = json.loads(client.lrange(template.queue, 0, 0)[0])
    assert not {third["headers"]["id"], third["properties"]["delivery_tag"]} & (tags | tasks)
    # an ID whose length is no multiple of 3 (the body is then encoded whole)
    finish(s, ids[1], "a", "A", "ok", now=NOW + 2)
    s.enqueue([Item("d-10", "a", "A")], now=NOW + 2)
    other = json.loads(client.lrange(template.queue, 0, 0)[0])
    assert shape(other) == shape(json.loads(template.render("d-10", circuit="closed")))
    assert json.loads(base64.b64decode(other["body"]))[0] == ["d-10"]


def test_a_pick_tells_its_task_whether_the_circuit_was_closed_and_clean(client):
    """Only a circuit closed with no failure since its last success spares the task a question
    to the breaker; open, half-open or closed after a recent failure, the task asks."""
    import json

    from webhooks import dispatch
    from webhooks.circuit import KEY_PREFIX

    template = dispatch.template(dispatch.DELIVER_TASK)
    s = make(client, tasks=template, default_slots=10)
    client.hset(KEY_PREFIX + "healed", mapping={"state": "closed", "failures": "0"})
    client.hset(KEY_PREFIX + "failing", mapping={"state": "closed", "failures": "1"})
    client.hset(KEY_PREFIX + "open", mapping={"state": "open", "failures": "5"})
    client.hset(KEY_PREFIX + "probing", mapping={"state": "half_open", "failures": "5"})
    subs = ["unknown", "healed", "failing", "open", "probing"]
    s.enqueue([Item(f"{sub}-1", sub, "A") for sub in subs], now=NOW)
    pushed = [json.loads(m) for m in reversed(client.lrange(template.queue, 0, -1))]
    seen = {m["headers"]["argsrepr"]: m["headers"][dispatch.CIRCUIT_HEADER] for m in pushed}
    assert seen == {
        "['unknown-1']": "closed",
        "['healed-1']": "closed",
        "['failing-1']": "",
        "['open-1']": "",
        "['probing-1']": "",
    }
    # Python's own sends (the watchdog's, a replay's) say nothing: the task asks.
    assert json.loads(template.render("x-1"))["headers"][dispatch.CIRCUIT_HEADER] == ""


def test_without_a_template_a_pick_sends_nothing(client):
    s = make(client)
    picked = s.enqueue(items("A", "a", 2), now=NOW)
    assert picked.ids == ["a-0", "a-1"] and not picked.sent
    assert client.keys("webhooks") == []


def test_a_finish_may_keep_its_first_pick_for_itself_instead_of_sending_it(client):
    """The process that ends an attempt goes on with the next delivery of its freed slot: the
    pick is answered as kept, in flight and known as any pick, and only the others are sent."""
    import json

    from webhooks import dispatch
    from webhooks.circuit import KEY_PREFIX

    template = dispatch.template(dispatch.DELIVER_TASK)
    s = make(client, tasks=template, default_slots=2)
    client.hset(KEY_PREFIX + "b", mapping={"state": "closed", "failures": "1"})
    s.enqueue(items("A", "a", 3), now=NOW)
    s.enqueue(items("B", "b", 3), now=NOW)  # the window (2) is full: B's wait
    client.delete(template.queue)
    s.announce("w", 3, now=NOW)  # a third slot: the next finish picks two
    picked = finish(s, "a-0", "a", "A", "ok", now=NOW + 0.1, keep="t1")
    # B's turn first (fairness holds for kept picks); its circuit had a failure: not "closed"
    assert (picked.kept, picked.kept_closed) == ("b-0", False)
    assert picked.ids == ["a-2"] and picked.sent
    sent = [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(template.queue, 0, -1)]
    assert sent == ["['a-2']"]
    assert s.known(["b-0", "a-2"]) == [True, True]
    assert s.totals()["in_flight"] == 3  # a-1, b-0 (kept) and a-2
    # without keep, the pick is sent as before
    picked = finish(s, "b-0", "b", "B", "ok", now=NOW + 0.2)
    assert (picked.kept, picked.ids) == (None, ["b-1"])
    assert s.known(["b-0"]) == [False]
    client.hset(KEY_PREFIX + "b", mapping={"state": "closed", "failures": "0"})
    picked = finish(s, "a-1", "a", "A", "ok", now=NOW + 0.3, keep="t2")
    assert (picked.kept, picked.kept_closed, picked.ids) == ("b-2", True, [])
    # with nothing left to pick, nothing is kept
    for done in ("a-2", "b-1", "b-2"):
        tenant = done[0].upper()
        assert finish(s, done, done[0], tenant, "ok", now=NOW + 0.4, keep="t3").kept is None
    assert s.totals() == {"ready": 0, "delayed": 0, "in_flight": 0}


def test_a_finish_adds_the_ready_deliveries_it_carries_and_may_keep_one(client):
    """An ordered lane's next travels with the finish of the attempt that freed it."""
    s = make(client, default_slots=1)
    assert s.enqueue(items("A", "a", 1), now=NOW).ids == ["a-0"]
    nxt = Item("a-1", "a", "A", max_in_flight=3, rate_limit=7)
    picked = finish(s, "a-0", "a", "A", "ok", now=NOW + 0.1, keep="t", ready=[nxt])
    assert (picked.kept, picked.ids) == ("a-1", [])
    assert s.known(["a-1"]) == [True]
    assert client.hmget("wh:q:s:a", "limit", "rate") == [b"3", b"7"]


def test_unkeep_sends_what_that_finish_kept_and_adds_what_it_did_not(client):
    """After a finish whose answer was lost: its kept pick gets its task (matched by the
    finish's own token, never by an older finish's), and ready deliveries it carried that the
    scheduler does not hold are added (the finish did not run), those it holds are not."""
    import json

    from webhooks import dispatch

    template = dispatch.template(dispatch.DELIVER_TASK)
    s = make(client, tasks=template, default_slots=2)
    s.enqueue(items("A", "x", 1) + items("B", "k", 2), now=NOW)  # x-0, k-0 in flight
    client.delete(template.queue)

    def sent() -> list[str]:
        queued = client.lrange(template.queue, 0, -1)
        client.delete(template.queue)
        return sorted(json.loads(m)["headers"]["argsrepr"] for m in queued)

    # An older finish kept k-1 and its process is attempting it (it got its answer).
    assert finish(s, "k-0", "k", "B", "ok", now=NOW + 0.1, keep="old").kept == "k-1"
    # x-0's finish ran and kept x-1 (the lane's next it carried), but its answer was lost; its
    # process then asks: x-1's task is sent, not k-1's (the older finish's), and x-1, which the
    # scheduler holds (the finish ran), is not added again.
    lane_next = Item("x-1", "x", "A")
    kept = finish(s, "x-0", "x", "A", "ok", now=NOW + 0.2, keep="new", ready=[lane_next]).kept
    assert kept == "x-1"
    assert s.unkeep("new", [lane_next], now=NOW + 0.2).ids == ["x-1"]
    assert sent() == ["['x-1']"]
    assert client.llen("wh:q:r:x") == 0
    assert s.totals() == {"ready": 0, "delayed": 0, "in_flight": 2}  # k-1 and x-1

    # A finish that kept x-1 with token "lost" and whose answer was lost: x-1 is sent.
    s2 = make(fakeredis.FakeRedis(), tasks=template, default_slots=1)
    s2.enqueue(items("A", "a", 1), now=NOW)
    s2.client.delete(template.queue)
    lane = Item("a-1", "a", "A")
    assert finish(s2, "a-0", "a", "A", "ok", now=NOW + 0.1, keep="lost", ready=[lane]).kept
    assert s2.unkeep("lost", [lane], now=NOW + 0.1).ids == ["a-1"]
    assert [
        json.loads(m)["headers"]["argsrepr"] for m in s2.client.lrange(template.queue, 0, -1)
    ] == ["['a-1']"]

    # A finish that never ran: its lane's next is added (and picked at once, the slot free).
    s3 = make(fakeredis.FakeRedis(), tasks=template, default_slots=1)
    assert s3.unkeep("never", [Item("z-1", "z", "Z")], now=NOW).ids == ["z-1"]
    assert s3.known(["z-1"]) == [True]
