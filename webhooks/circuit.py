"""A circuit breaker per subscription, its state in a Redis hash changed only by Lua scripts.

States: closed (deliveries flow), open (deliveries park in PostgreSQL), half_open (one probe
delivery tests the subscriber). Losing the hash means closed, which is safe: the breaker
only protects capacity, PostgreSQL keeps every delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from webhooks.redis_client import ScriptCall, as_text, unix_time

log = logging.getLogger(__name__)

KEY_PREFIX = "wh:circuit:"
OPEN_SET = "wh:circuits:open"
# Idle hashes expire: a subscription not heard from for a week starts closed again.
TTL_SECONDS = 7 * 86_400

# The caller's clock (ARGV[1] of every script that needs one), so tests need no sleeps.
_NOW = "local now = tonumber(ARGV[1])\n"
# How many recent outcomes the breaker remembers, and the share of failures among them that,
# with `threshold` failures in a row, opens it. A dead subscriber fails everything, so it opens
# after `threshold` failures when the breaker knew nothing of it, and after 18 of the last 20
# when it was healthy before. A flaky one (a third of its requests fail) never gets there by
# chance (p < 1e-6 per window), so it is retried, not parked behind a cooldown.
WINDOW = 20
WINDOW_FAILURE_SHARE = 0.9
# Or: `threshold` failures in a row that have lasted as long as one delivery's retries up to the
# threshold (`failing_for`: the sum of the first threshold - 1 retry delays, 30 s by default),
# with no success between them. A subscriber that was healthy, then dies while its traffic is
# low, fails one delivery's attempts one by one and never fills the window with failures: this
# opens its circuit at the threshold-th, before that delivery spends its last retry. A flaky one
# (a third failing) at a request a second or more has a success within seconds, so its runs
# never last that long; at a request every few seconds a run of five failures lasting 30 s takes
# seven or more in a row (about one in 2,000), and parks it for one cooldown.
DEFAULT_FAILING_FOR_SECONDS = 30.0


def failing_for(retry_delays: tuple[float, ...], threshold: int) -> float:
    """How long `threshold` failures in a row must have lasted to open a circuit whatever the
    window says: as long as one delivery's first threshold - 1 retries wait (at least 1 s)."""
    return max(1.0, sum(retry_delays[: max(0, threshold - 1)]))


_RECORD = (
    "local function remember(bit)\n"
    "  local w = (redis.call('HGET', KEYS[1], 'window') or '') .. bit\n"
    f"  if #w > {WINDOW} then w = string.sub(w, -{WINDOW}) end\n"
    "  redis.call('HSET', KEYS[1], 'window', w)\n"
    "  local _, failed = string.gsub(w, '1', '')\n"
    "  return failed, #w\n"
    "end\n"
)

# KEYS: hash, open set. ARGV: now, cooldown, probe ttl, member, ttl.
# Returns {decision, state, until, transitioned}.
_ACQUIRE = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {'allow', 'closed', '0', '0'} end
if state == 'open' then
  local ready = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0') + tonumber(ARGV[2])
  if now < ready then return {'deny', 'open', tostring(ready), '0'} end
  local probe_until = tostring(now + tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', probe_until)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {'probe', 'half_open', tostring(now + tonumber(ARGV[3])), '1'}
end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe_until then return {'deny', 'half_open', tostring(probe_until), '0'} end
redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[3])))
return {'probe', 'half_open', tostring(now + tonumber(ARGV[3])), '0'}
"""
)

# KEYS: hash, open set. ARGV: member, ttl. Returns the state it left.
_SUCCESS = (
    _RECORD
    + """
remember('0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', '0')
  return 'closed'
end
if state == 'closed' and redis.call('HGET', KEYS[1], 'failures') == '0' then return 'closed' end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', '0')
redis.call('HDEL', KEYS[1], 'opened_at', 'probe_until', 'failing_since')
redis.call('SREM', KEYS[2], ARGV[1])
return state
"""
)

# KEYS: hash, open set. ARGV: now, threshold, member, ttl, failure share, failing for (s).
# Returns {state before, state after}.
_FAILURE = (
    _NOW
    + _RECORD
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local after = state
local failed, seen = remember('1')
if state == 'half_open' then
  after = 'open'
elseif state == 'closed' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if failures == 1 then redis.call('HSET', KEYS[1], 'failing_since', tostring(now)) end
  local since = tonumber(redis.call('HGET', KEYS[1], 'failing_since') or tostring(now))
  if failures >= tonumber(ARGV[2])
     and (failed >= tonumber(ARGV[5]) * seen or now - since >= tonumber(ARGV[6])) then
    after = 'open'
  else
    redis.call('HSET', KEYS[1], 'state', 'closed')
  end
end
if after == 'open' and state ~= 'open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', tostring(now))
  redis.call('HDEL', KEYS[1], 'probe_until')
  redis.call('SADD', KEYS[2], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {state, after}
"""
)


# KEYS: open set. ARGV: hash prefix. Drop the members whose circuit is not open any more (its
# hash expired or was lost: closed) and return the ones left.
_OPEN_MEMBERS = """
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local state = redis.call('HGET', ARGV[1] .. m, 'state')
  if state == 'open' or state == 'half_open' then out[#out + 1] = m
  else redis.call('SREM', KEYS[1], m) end
end
return out
"""


@dataclass(frozen=True)
class Decision:
    """What the breaker says about sending now."""

    allowed: bool
    state: str
    # For a denial: the unix time at which asking again may succeed.
    retry_at: float = 0.0
    probe: bool = False
    transitioned: bool = False


class CircuitBreaker:
    def __init__(
        self,
        client: redis.Redis,
        threshold: int,
        cooldown: float,
        probe_ttl: float,
        failing_for: float = DEFAULT_FAILING_FOR_SECONDS,
    ):
        self.client = client
        self.threshold = threshold
        self.failing_for = failing_for
        self.cooldown = cooldown
        self.probe_ttl = probe_ttl
        self._acquire = client.register_script(_ACQUIRE)
        self._success = client.register_script(_SUCCESS)
        self._failure = client.register_script(_FAILURE)
        self._open_members = client.register_script(_OPEN_MEMBERS)

    def _keys(self, subscription_id: str) -> list[str]:
        return [KEY_PREFIX + subscription_id, OPEN_SET]

    def acquire(self, subscription_id: str, now: float | None = None) -> Decision:
        """Ask whether a delivery to this subscription may be sent now (fails open)."""
        try:
            decision, state, until, moved = self._acquire(
                keys=self._keys(subscription_id),
                args=[unix_time(now), self.cooldown, self.probe_ttl, subscription_id, TTL_SECONDS],
            )
        except redis.RedisError as exc:
            log.warning("circuit state unavailable, treating as closed: %s", exc)
            return Decision(True, "closed")
        decision, state = as_text(decision), as_text(state)
        return Decision(
            allowed=decision != "deny",
            state=state,
            retry_at=float(until),
            probe=decision == "probe",
            transitioned=as_text(moved) == "1",
        )

    def record_success(self, subscription_id: str) -> str | None:
        """Close the circuit; return the state it left if that was not closed."""
        try:
            return self.success_call(subscription_id).run()
        except redis.RedisError as exc:
            log.warning("circuit state unavailable: %s", exc)
            return None

    def success_call(self, subscription_id: str) -> ScriptCall[str | None]:
        """record_success as a call to make together with others (redis_client.run_together)."""
        return ScriptCall(
            self._success, self._keys(subscription_id), [subscription_id, TTL_SECONDS], _left
        )

    def record_failure(self, subscription_id: str, now: float | None = None) -> bool:
        """Count a failure; return True if it opened the circuit."""
        try:
            return self.failure_call(subscription_id, now).run()
        except redis.RedisError as exc:
            log.warning("circuit state unavailable: %s", exc)
            return False

    def failure_call(self, subscription_id: str, now: float | None = None) -> ScriptCall[bool]:
        """record_failure as a call to make together with others (redis_client.run_together)."""
        args = [
            unix_time(now),
            self.threshold,
            subscription_id,
            TTL_SECONDS,
            WINDOW_FAILURE_SHARE,
            self.failing_for,
        ]
        return ScriptCall(self._failure, self._keys(subscription_id), args, _opened)

    def state(self, subscription_id: str) -> dict[str, Any]:
        """Return the circuit's state for the health endpoint (closed when unknown)."""
        try:
            raw = self.client.hgetall(KEY_PREFIX + subscription_id)
        except redis.RedisError:
            return {"state": "unknown", "consecutive_failures": None, "opened_at": None}
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        state = fields.get("state", "closed")
        opened_at = float(fields["opened_at"]) if "opened_at" in fields else None
        return {
            "state": state,
            "consecutive_failures": int(fields.get("failures", 0)),
            "opened_at": opened_at,
            "probe_at": opened_at + self.cooldown if opened_at and state == "open" else None,
            "probe_until": float(fields["probe_until"]) if "probe_until" in fields else None,
        }

    def open_circuits(self) -> list[str]:
        """The subscriptions whose circuit is open or half open. Members of the open set whose
        hash is gone (expired after a week unheard, or lost) are dropped from it on the way."""
        return [as_text(m) for m in self._open_members(keys=[OPEN_SET], args=[KEY_PREFIX])]

    def reset(self, subscription_id: str) -> None:
        """Forget a subscription's circuit (it closes); soft state, so never raise."""
        try:
            self.client.delete(KEY_PREFIX + subscription_id)
            self.client.srem(OPEN_SET, subscription_id)
        except redis.RedisError as exc:
            log.warning("circuit state unavailable: %s", exc)


def _left(answer: Any) -> str | None:
    """The state a success closed the circuit from, or None if it was closed already."""
    before = as_text(answer)
    return before if before != "closed" else None


def _opened(answer: Any) -> bool:
    """Whether a failure opened the circuit."""
    before, after = answer
    return as_text(after) == "open" and as_text(before) != "open"
