"""The circuit breaker's Lua logic, run by fakeredis (a Lua-capable in-memory Redis).

The scripts take the time as an argument: the tests that cross a cooldown pass a clock of
their own (`T0` and later) instead of sleeping.
"""

from __future__ import annotations

import fakeredis
import pytest

from webhooks.circuit import KEY_PREFIX, OPEN_SET, CircuitBreaker
from webhooks.redis_client import ScriptCall, run_together

SUB = "sub-1"
COOLDOWN = 0.3
PROBE_TTL = 5.0
T0 = 1_000_000.0  # the tests' own clock, in unix seconds


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def breaker(client) -> CircuitBreaker:
    return CircuitBreaker(client, threshold=3, cooldown=COOLDOWN, probe_ttl=PROBE_TTL)


def open_circuit(breaker: CircuitBreaker, now: float | None = None) -> None:
    for _ in range(breaker.threshold):
        breaker.record_failure(SUB, now=now)
    assert breaker.state(SUB)["state"] == "open"


def test_unknown_subscription_is_closed(breaker):
    decision = breaker.acquire(SUB)
    assert (decision.allowed, decision.state, decision.probe) == (True, "closed", False)
    assert breaker.state(SUB)["state"] == "closed"


def test_threshold_of_consecutive_failures_opens_the_circuit(breaker):
    assert breaker.record_failure(SUB, now=T0) is False
    assert breaker.record_failure(SUB, now=T0) is False
    assert breaker.acquire(SUB, now=T0).allowed
    assert breaker.record_failure(SUB, now=T0 + 1) is True
    decision = breaker.acquire(SUB, now=T0 + 1)
    assert (decision.allowed, decision.state) == (False, "open")
    assert decision.retry_at == pytest.approx(T0 + 1 + COOLDOWN)
    assert breaker.client.scard(OPEN_SET) == 1
    # Further failures while open do not count as opening it again.
    assert breaker.record_failure(SUB, now=T0 + 1) is False


def test_success_resets_the_count_of_consecutive_failures(breaker):
    breaker.record_failure(SUB)
    breaker.record_failure(SUB)
    assert breaker.record_success(SUB) is None  # it was closed, no transition
    breaker.record_failure(SUB)
    assert breaker.record_failure(SUB) is False
    assert breaker.acquire(SUB).allowed
    assert breaker.state(SUB)["consecutive_failures"] == 2


def test_circuits_are_per_subscription(breaker):
    open_circuit(breaker, now=T0)
    assert breaker.acquire("sub-2", now=T0).allowed
    assert not breaker.acquire(SUB, now=T0).allowed


def test_after_cooldown_exactly_one_probe_is_let_through(breaker):
    open_circuit(breaker, now=T0)
    early = breaker.acquire(SUB, now=T0 + COOLDOWN - 0.01)
    assert (early.allowed, early.state) == (False, "open")
    assert early.retry_at == pytest.approx(T0 + COOLDOWN)
    first = breaker.acquire(SUB, now=T0 + COOLDOWN)
    assert (first.allowed, first.probe, first.state, first.transitioned) == (
        True,
        True,
        "half_open",
        True,
    )
    for _ in range(5):
        other = breaker.acquire(SUB, now=T0 + COOLDOWN + 0.01)
        assert (other.allowed, other.state) == (False, "half_open")


def test_successful_probe_closes_the_circuit(breaker):
    open_circuit(breaker, now=T0)
    assert breaker.acquire(SUB, now=T0 + COOLDOWN).probe
    assert breaker.record_success(SUB) == "half_open"
    decision = breaker.acquire(SUB)
    assert (decision.allowed, decision.state, decision.probe) == (True, "closed", False)
    assert breaker.client.scard(OPEN_SET) == 0
    assert breaker.state(SUB)["consecutive_failures"] == 0


def test_failed_probe_reopens_the_circuit_for_another_cooldown(breaker):
    open_circuit(breaker, now=T0)
    assert breaker.acquire(SUB, now=T0 + COOLDOWN).probe
    reopened_at = T0 + COOLDOWN + 0.1
    assert breaker.record_failure(SUB, now=reopened_at) is True
    decision = breaker.acquire(SUB, now=reopened_at + 0.01)
    assert (decision.allowed, decision.state) == (False, "open")
    assert decision.retry_at == pytest.approx(reopened_at + COOLDOWN)
    assert breaker.client.scard(OPEN_SET) == 1


def test_probe_whose_outcome_never_arrives_is_replaced_after_its_ttl(client):
    breaker = CircuitBreaker(client, threshold=3, cooldown=COOLDOWN, probe_ttl=0.3)
    open_circuit(breaker, now=T0)
    probe_at = T0 + COOLDOWN
    assert breaker.acquire(SUB, now=probe_at).probe
    assert not breaker.acquire(SUB, now=probe_at + 0.29).allowed
    again = breaker.acquire(SUB, now=probe_at + 0.3)
    assert (again.allowed, again.probe, again.transitioned) == (True, True, False)


def test_lost_state_means_closed(breaker, client):
    open_circuit(breaker)
    client.delete(KEY_PREFIX + SUB)
    decision = breaker.acquire(SUB)
    assert (decision.allowed, decision.state) == (True, "closed")
    assert breaker.state(SUB)["state"] == "closed"


def test_circuit_state_expires_when_idle(breaker, client):
    open_circuit(breaker)
    assert 0 < client.ttl(KEY_PREFIX + SUB) <= 7 * 86_400


def test_reset_closes_the_circuit(breaker, client):
    open_circuit(breaker)
    breaker.reset(SUB)
    assert breaker.acquire(SUB).allowed
    assert not client.sismember(OPEN_SET, SUB)


def test_unreachable_redis_fails_open():
    server = fakeredis.FakeServer()
    server.connected = False
    breaker = CircuitBreaker(
        fakeredis.FakeRedis(server=server), threshold=1, cooldown=COOLDOWN, probe_ttl=PROBE_TTL
    )
    decision = breaker.acquire(SUB)
    assert (decision.allowed, decision.state) == (True, "closed")
    assert breaker.record_failure(SUB) is False
    assert breaker.record_success(SUB) is None
    assert breaker.state(SUB)["state"] == "unknown"


def test_outcomes_recorded_with_other_calls_in_one_round_trip_count_once(breaker, client):
    counter = client.register_script("return redis.call('INCR', KEYS[1])")
    bump = ScriptCall(counter, ["bumps"], [], int)
    for _ in range(breaker.threshold - 1):
        run_together(client, [breaker.failure_call(SUB), bump])
    client.script_flush()  # as after a Redis restart: every script must be loaded again
    opened, bumps = run_together(client, [breaker.failure_call(SUB), bump])

    assert opened is True
    assert bumps == breaker.threshold  # each call made exactly once, the reloaded ones too
    assert breaker.state(SUB)["consecutive_failures"] == breaker.threshold
    closed_from, _ = run_together(client, [breaker.success_call(SUB), bump])
    assert closed_from == "open"


def test_a_once_healthy_subscriber_failing_for_a_while_opens_at_the_threshold(client):
    """After a healthy history the window holds successes: failures spread over a delivery's
    retries (2, 4, 8, 16 s apart) still open the circuit at `threshold` in a row, once they have
    lasted as long as those retries wait; a burst of the same count within a second does not."""
    from webhooks.circuit import failing_for

    lasting = failing_for((2.0, 4.0, 8.0, 16.0, 32.0), 5)
    assert lasting == 30.0
    breaker = CircuitBreaker(client, threshold=5, cooldown=60, probe_ttl=PROBE_TTL)
    for _ in range(20):
        breaker.record_success(SUB)
    for i, at in enumerate([0.0, 0.1, 0.2, 0.3, 0.4]):  # five in a row, within half a second
        assert breaker.record_failure(SUB, now=T0 + at) is False, i
    breaker.record_success(SUB)
    times = [0.0, 2.0, 6.0, 14.0, 30.0]  # one delivery's attempts at the default delays
    assert times[-1] - times[0] >= lasting
    opened = [breaker.record_failure(SUB, now=T0 + 100 + at) for at in times]
    assert opened == [False, False, False, False, True]
    assert breaker.state(SUB)["state"] == "open"


def test_a_success_restarts_how_long_failures_have_lasted(client):
    breaker = CircuitBreaker(client, threshold=5, cooldown=60, probe_ttl=PROBE_TTL)
    for _ in range(20):
        breaker.record_success(SUB)
    for at in (0.0, 20.0, 40.0):
        assert breaker.record_failure(SUB, now=T0 + at) is False
    breaker.record_success(SUB)  # long failing, but not in a row
    opened = [breaker.record_failure(SUB, now=T0 + 41 + at) for at in (0.0, 0.2, 0.4, 0.6, 0.8)]
    assert opened == [False] * 5
