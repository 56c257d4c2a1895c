"""The delivery scheduler: fair shares and per-subscription limits across every worker.

Deliveries wait in Redis, not in the Celery queue. Each subscription has a ready list of
delivery IDs; tenants with work and, within a tenant, subscriptions with work take turns
(round robin over two sorted sets whose score is a global sequence). A delivery becomes a Celery
task only when it is picked, and a pick respects, all at once and atomically (Lua):

- the window: as many tasks in flight as the live workers have pool processes (workers
  announce their slots with a heartbeat);
- the tenant cap, WEBHOOKS_TENANT_MAX_IN_FLIGHT (a number, or a share of the slots);
- the subscription's `max_in_flight` and its adaptive concurrency window (AIMD: halved on
  429, 503 and timeouts, grown by successes, restarted at 1 after its circuit closes);
- the subscription's `rate_limit` and its adaptive rate, spaced evenly (GCRA with no burst).

A blocked subscription leaves its tenant's turn: it comes back when one of its attempts ends
(concurrency) or at a timer (rate). So a backlog of any size costs a pick O(log n), and a tenant
with a backlog delays another tenant's delivery by at most one pick.

Picks happen where capacity frees or work arrives: after ingest commits, after every attempt
(in the same script that records its end; the process that ended the attempt may keep the pick
and attempt it itself, see `finish_call`), and in each worker's pump thread, which also moves
due retries and rate timers along. Nothing here lives in one process's memory.

Redis may lose all of this: PostgreSQL still has every delivery, and the watchdog re-sends the
due rows that Redis no longer knows (the `known` set), and no others, so a backlog that waits
here is never duplicated by it. An in-flight entry carries a lease, so a killed worker's slot
comes back by itself.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from config import parse_tenant_cap
from webhooks.circuit import KEY_PREFIX as CIRCUIT_PREFIX
from webhooks.models.subscription import DEFAULT_MAX_IN_FLIGHT
from webhooks.redis_client import ScriptCall, as_text, unix_time

if TYPE_CHECKING:
    from webhooks.dispatch import Template

log = logging.getLogger(__name__)

PREFIX = "wh:q:"
# A worker's announced slots count for this long after its last heartbeat.
WORKER_TTL_SECONDS = 15.0
# With no worker announced yet (starting up, API alone), the window is this many tasks.
DEFAULT_SLOTS = 4
# Tasks in flight per slot. One: a pool process that ends an attempt goes on with the next
# delivery its slot is given (tasks/delivery.py), so none need wait queued for it; a task sent
# beyond the slots would only wait in the queue behind processes that go on.
WINDOW_FACTOR = 1.0
# Rate limits are spaced a little wider than 1/rate: what a subscriber receives in any one
# second then stays within its limit, even though the time from pick to send varies.
RATE_SPACING = 1.04
# The window over which a rate limit is counted at send time: a second, and a margin for the
# time between the count and the subscriber's receipt.
ADMIT_WINDOW_SECONDS = 1.05
# A subscription's or tenant's hash (limits, adaptive state, counts) not written for this long
# expires: a subscription deleted, or idle for a week, leaves nothing behind. Its limits come
# back with its next delivery; its adaptive state starts afresh.
IDLE_TTL_SECONDS = 7 * 86_400
# Ready deliveries taken out per drain script: a long backlog is drained in steps, so Redis
# is never held for long by one script.
DRAIN_CHUNK = 1000

# Outcomes of an attempt, as the scheduler's adaptive limits see them.
OK = "ok"  # a 2xx: grow the window and the rate
THROTTLED = "throttled"  # 429, 503 or a timeout: halve them
FAILED = "failed"  # any other failure: no change (the circuit breaker judges those)
NONE = "none"  # no attempt was made (stale message, parked, refused by the circuit)
RESTART = "restart"  # its circuit just closed: slow start from a window of 1

_LIB = (
    f"local CIRCUIT = '{CIRCUIT_PREFIX}'\nlocal IDLE_TTL = {int(IDLE_TTL_SECONDS)}\n"
    + """
local P = ARGV[1]
-- Times and rates as text with microseconds (tostring keeps 14 digits: 0.1 ms of a unix time,
-- which rounds a spacing of 1/7000 s by a third).
local function fmt(x) return string.format('%.6f', x) end
local function touch(sub, tenant)
  redis.call('EXPIRE', P .. 's:' .. sub, IDLE_TTL)
  redis.call('EXPIRE', P .. 't:' .. tenant, IDLE_TTL)
end
local function split(s)
  local out = {}
  for part in string.gmatch(s, '[^ ]+') do out[#out + 1] = part end
  return out
end
local function seq() return redis.call('INCR', P .. 'seq') end
-- Taking turns: a tenant (or subscription) that becomes runnable joins ahead of those that
-- have just been served, in the order they joined; once served it goes to the back. So work
-- that arrives while another tenant drains a backlog goes out at the next pick (as new flows
-- do in FQ-CoDel), and a backlog is served round robin.
local NEW = 1e15
local function runnable(sub, tenant)
  local n = seq() - NEW
  redis.call('ZADD', P .. 'ts:' .. tenant, 'NX', n, sub)
  redis.call('ZADD', P .. 'tenants', 'NX', n, tenant)
end
-- End an in-flight entry; return its subscription and tenant, or nil if it was not one.
local function release(id)
  local v = redis.call('HGET', P .. 'if', id)
  if not v then
    -- its lease may outlive the entry (Redis lost part of its state): never re-read it
    redis.call('ZREM', P .. 'ifexp', id)
    return nil
  end
  local st = split(v)
  redis.call('HDEL', P .. 'if', id)
  redis.call('ZREM', P .. 'ifexp', id)
  if tonumber(redis.call('HINCRBY', P .. 's:' .. st[1], 'inflight', -1)) < 0 then
    redis.call('HSET', P .. 's:' .. st[1], 'inflight', 0)
  end
  if tonumber(redis.call('HINCRBY', P .. 't:' .. st[2], 'inflight', -1)) < 0 then
    redis.call('HSET', P .. 't:' .. st[2], 'inflight', 0)
  end
  touch(st[1], st[2])
  runnable(st[1], st[2])
  return st
end
local function push_ready(id, sub, tenant)
  redis.call('RPUSH', P .. 'r:' .. sub, id)
  redis.call('INCR', P .. 'ready')
  redis.call('SADD', P .. 'known', id)
  runnable(sub, tenant)
end
-- Move along what time has made ready: expired leases, due retries, rate timers.
local function housekeeping(now)
  local expired = redis.call('ZRANGEBYSCORE', P .. 'ifexp', '-inf', now, 'LIMIT', 0, 200)
  for _, id in ipairs(expired) do
    release(id)
    redis.call('SREM', P .. 'known', id)
  end
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, 2000)
  for _, m in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', m)
    local f = split(m)
    push_ready(f[1], f[2], f[3])
  end
  local timers = redis.call('ZRANGEBYSCORE', P .. 'timers', '-inf', now, 'LIMIT', 0, 2000)
  for _, m in ipairs(timers) do
    redis.call('ZREM', P .. 'timers', m)
    local f = split(m)
    runnable(f[1], f[2])
  end
end
local function slots(now, default)
  local total = 0
  local all = redis.call('HGETALL', P .. 'workers')
  for i = 1, #all, 2 do
    local f = split(all[i + 1])
    if tonumber(f[2]) > now then total = total + tonumber(f[1])
    else redis.call('HDEL', P .. 'workers', all[i]) end
  end
  if total == 0 then return default end
  return total
end
local function num(v, default)
  if v == false or v == nil then return default end
  return tonumber(v)
end
-- The subscription's limits now: concurrency (an integer >= 1) and rate (0 = none).
local function limits(h)
  local limit = num(h[1], 10)
  local cwnd = num(h[3], limit)
  local conc = math.max(1, math.min(limit, math.floor(cwnd)))
  local rate = num(h[2], 0)
  local arate = num(h[4], 0)
  if arate > 0 and (rate == 0 or arate < rate) then rate = arate end
  return conc, rate
end
-- "closed" if a subscription's circuit is closed with no failure since its last success:
-- its task need not ask the breaker before sending (webhooks.services.delivery.attempt).
local function circuit(sub)
  local h = redis.call('HMGET', CIRCUIT .. sub, 'state', 'failures')
  if (h[1] == false or h[1] == 'closed') and (h[2] == false or h[2] == '0') then
    return 'closed'
  end
  return ''
end
-- Hand out up to `max` deliveries, fairly, within every limit. Returns {ids, blocked counts,
-- each one's circuit (see `circuit`)}. `keep` (a token, or nil): the first one's in-flight
-- entry carries it (see pick_and_answer).
local function pick(now, max, lease, cap_abs, cap_share, default_slots, factor, spacing, keep)
  housekeeping(now)
  local s = slots(now, default_slots)
  local window = math.ceil(s * factor)
  local cap = cap_abs
  if cap <= 0 then cap = math.max(1, math.floor(s * cap_share + 0.0001)) end
  local inflight = redis.call('HLEN', P .. 'if')
  local picked = {}
  local circuits = {}
  local blocked = {0, 0, 0}
  local guard = 0
  while #picked < max and inflight < window and guard < 20000 do
    guard = guard + 1
    local t = redis.call('ZRANGE', P .. 'tenants', 0, 0)[1]
    if not t then break end
    local tif = num(redis.call('HGET', P .. 't:' .. t, 'inflight'), 0)
    local sub = nil
    if tif >= cap then
      redis.call('ZREM', P .. 'tenants', t)
      blocked[3] = blocked[3] + 1
    else
      sub = redis.call('ZRANGE', P .. 'ts:' .. t, 0, 0)[1]
      if not sub then redis.call('ZREM', P .. 'tenants', t) end
    end
    if sub then
      local sk = P .. 's:' .. sub
      local h = redis.call('HMGET', sk, 'limit', 'rate', 'cwnd', 'arate', 'next_at', 'inflight')
      local conc, rate = limits(h)
      local next_at = num(h[5], 0)
      local id = nil
      if num(h[6], 0) >= conc then
        redis.call('ZREM', P .. 'ts:' .. t, sub)
        blocked[1] = blocked[1] + 1
      elseif rate > 0 and next_at > now then
        redis.call('ZREM', P .. 'ts:' .. t, sub)
        redis.call('ZADD', P .. 'timers', next_at, sub .. ' ' .. t)
        blocked[2] = blocked[2] + 1
      else
        id = redis.call('LPOP', P .. 'r:' .. sub)
        if not id then redis.call('ZREM', P .. 'ts:' .. t, sub) end
      end
      if id then
        redis.call('DECR', P .. 'ready')
        if redis.call('HEXISTS', P .. 'if', id) == 0 then
          if rate > 0 then
            redis.call('HSET', sk, 'next_at', fmt(math.max(now, next_at) + spacing / rate))
          end
          redis.call('HINCRBY', sk, 'inflight', 1)
          redis.call('HINCRBY', P .. 't:' .. t, 'inflight', 1)
          touch(sub, t)
          local entry = sub .. ' ' .. t
          if keep and #picked == 0 then entry = entry .. ' ' .. keep end
          redis.call('HSET', P .. 'if', id, entry)
          redis.call('ZADD', P .. 'ifexp', now + lease, id)
          inflight = inflight + 1
          picked[#picked + 1] = id
          circuits[#picked] = circuit(sub)
        end
        -- to the back of the line, within the tenant and among the tenants
        local n = seq()
        redis.call('ZADD', P .. 'ts:' .. t, 'XX', n, sub)
        redis.call('ZADD', P .. 'tenants', 'XX', n, t)
      end
    end
  end
  return {picked, blocked, circuits}
end
local function next_wake()
  local best = -1
  for _, k in ipairs({'delayed', 'timers', 'ifexp'}) do
    local first = redis.call('ZRANGE', P .. k, 0, 0, 'WITHSCORES')
    if first[2] and (best < 0 or tonumber(first[2]) < best) then best = tonumber(first[2]) end
  end
  return fmt(best)
end
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local d = {math.floor(n / 262144) % 64, math.floor(n / 4096) % 64,
               math.floor(n / 64) % 64, n % 64}
    out[#out + 1] = string.sub(B64, d[1] + 1, d[1] + 1) .. string.sub(B64, d[2] + 1, d[2] + 1)
      .. (b and string.sub(B64, d[3] + 1, d[3] + 1) or '=')
      .. (c and string.sub(B64, d[4] + 1, d[4] + 1) or '=')
  end
  return table.concat(out)
end
-- A UUID (version 7's layout) unique in this Redis: the time in ms and a counter.
local function uid(ms, n)
  return string.format('%08x-%04x-7000-8000-%012x', math.floor(ms / 65536), ms % 65536, n)
end
-- The base64 of the message body: ARGV[12] .. id .. ARGV[13]. When the ID starts and ends on
-- a 3-byte boundary (a UUID after '[["'), only the ID is encoded here: ARGV[14] and [15] are
-- the encoded prefix and suffix.
local function body(id)
  if #ARGV[12] % 3 == 0 and #id % 3 == 0 then return ARGV[14] .. base64(id) .. ARGV[15] end
  return base64(ARGV[12] .. id .. ARGV[13])
end
-- Send a Celery task for each picked delivery: the message template that webhooks.dispatch
-- built with Celery (ARGV[10] the queue, [11] the template, [12] and [13] what comes before
-- and after the ID in the body, [14] and [15] their base64), filled in. No template: the
-- caller sends them.
local function push_tasks(ids, circuits, now)
  local queue, template = ARGV[10], ARGV[11]
  if template == '' or #ids == 0 then return 0 end
  local n = redis.call('INCRBY', P .. 'msg', 2 * #ids) - 2 * #ids
  local ms = math.floor(now * 1000)
  for i, id in ipairs(ids) do
    local m = string.gsub(template, '@@ARG@@', id)
    m = string.gsub(m, '@@TASK@@', uid(ms, n + 2 * i - 1))
    m = string.gsub(m, '@@TAG@@', uid(ms, n + 2 * i))
    m = string.gsub(m, '@@BODY@@', body(id))
    m = string.gsub(m, '@@CIRCUIT@@', circuits[i])
    redis.call('LPUSH', queue, m)
  end
  return 1
end
-- Add ready deliveries given as ARGV[at] (a count), then per item: id, subscription, tenant,
-- limit, rate (0 = none). A subscription's limits are written with its first item. With
-- `unknown_only`, only those the scheduler does not hold already.
local function add_items(at, unknown_only)
  local n = tonumber(ARGV[at] or '0')
  local seen = {}
  for i = 0, n - 1 do
    local b = at + 1 + i * 5
    local id, sub, tenant = ARGV[b], ARGV[b + 1], ARGV[b + 2]
    if not (unknown_only and redis.call('SISMEMBER', P .. 'known', id) == 1) then
      if not seen[sub] then
        seen[sub] = true
        redis.call('HSET', P .. 's:' .. sub, 'tenant', tenant,
                   'limit', ARGV[b + 3], 'rate', ARGV[b + 4])
        redis.call('EXPIRE', P .. 's:' .. sub, IDLE_TTL)
      end
      push_ready(id, sub, tenant)
    end
  end
end
-- What every picking script ends with: a pick with the common arguments (ARGV[2] to [9]),
-- its tasks sent (ARGV[10] to [15]), answered as {picked ids, blocked counts, next wake-up,
-- 1 if the tasks were sent, the kept id or '', its circuit}. `keep` (a token, or nil): the
-- first pick is not sent as a task but answered as kept, for the caller to attempt itself (a
-- finishing attempt's process goes on with the delivery that its freed slot was given).
local function pick_and_answer(keep)
  local now = tonumber(ARGV[2])
  local r = pick(now, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
                 tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]),
                 keep)
  local ids, circuits = r[1], r[3]
  local kept, kept_circuit = '', ''
  if keep and #ids > 0 then
    -- Its in-flight entry carries the keep's token (one per finish, written by the pick):
    -- should this answer be lost, the process that asked sends its task after all (_UNKEEP).
    kept = table.remove(ids, 1)
    kept_circuit = table.remove(circuits, 1)
  end
  return {ids, r[2], next_wake(), push_tasks(ids, circuits, now), kept, kept_circuit}
end
"""
)

# ARGV: the common ones (Scheduler._common), then the items (see add_items).
_ENQUEUE = (
    _LIB
    + """
add_items(16)
return pick_and_answer()
"""
)

# ARGV: the common ones (Scheduler._common), id, subscription, tenant, outcome,
# retry_at (or ''), keep (a token, unique to this call: answer the first pick as kept instead
# of sending its task; '' not to), then ready deliveries to add before the pick (add_items:
# an ordered lane's next).
_FINISH = (
    _LIB
    + """
local now = tonumber(ARGV[2])
local id, sub, tenant, outcome, retry_at = ARGV[16], ARGV[17], ARGV[18], ARGV[19], ARGV[20]
-- (a stale message names no subscription: nothing to make runnable)
if release(id) == nil and sub ~= '' then runnable(sub, tenant) end
if retry_at ~= '' then
  redis.call('ZADD', P .. 'delayed', tonumber(retry_at), id .. ' ' .. sub .. ' ' .. tenant)
  redis.call('SADD', P .. 'known', id)
else
  redis.call('SREM', P .. 'known', id)
end
local sk = P .. 's:' .. sub
if outcome ~= 'none' and outcome ~= 'failed' then
  local h = redis.call('HMGET', sk, 'limit', 'cwnd', 'ssthresh', 'arate', 'rate')
  local limit = num(h[1], 10)
  local cwnd = num(h[2], limit)
  local ssthresh = num(h[3], limit)
  local arate = num(h[4], 0)
  local rate = num(h[5], 0)
  if outcome == 'ok' then
    if cwnd < ssthresh then cwnd = cwnd + 1 else cwnd = cwnd + 1 / math.max(1, cwnd) end
    if arate > 0 then
      arate = arate + 1
      -- back to its configured rate, or to the rate it had when throttled: no adaptive rate
      if (rate > 0 and arate >= rate) or arate >= num(redis.call('HGET', sk, 'abase'), 0) then
        arate = 0
      end
    end
  elseif outcome == 'throttled' then
    cwnd = math.max(1, math.floor(cwnd / 2))
    ssthresh = cwnd
    -- the rate it was sent at, halved: from the spacing of its last picks
    local current = arate
    if current <= 0 then
      current = rate
      local gap = num(redis.call('HGET', sk, 'gap'), 0)
      if current <= 0 and gap > 0 then current = 1 / gap end
      if current <= 0 then current = 2 * cwnd end
    end
    if num(h[4], 0) <= 0 then redis.call('HSET', sk, 'abase', tostring(current)) end
    arate = math.max(1, current / 2)
  elseif outcome == 'restart' then
    ssthresh = math.max(cwnd, 2)
    cwnd = 1
  end
  if cwnd > limit then cwnd = limit end
  redis.call('HSET', sk, 'cwnd', tostring(cwnd), 'ssthresh', tostring(ssthresh),
             'arate', tostring(arate))
end
if outcome ~= 'none' then
  -- the spacing of this subscription's attempts (an average), for a first adaptive rate
  local last = num(redis.call('HGET', sk, 'last_end'), 0)
  if last > 0 then
    local gap = num(redis.call('HGET', sk, 'gap'), now - last)
    redis.call('HSET', sk, 'gap', tostring(0.8 * gap + 0.2 * (now - last)))
  end
  redis.call('HSET', sk, 'last_end', fmt(now))
end
-- written above even when its in-flight entry was gone (release did not touch it then)
if sub ~= '' then redis.call('EXPIRE', sk, IDLE_TTL) end
add_items(22)
if ARGV[21] == '' then return pick_and_answer() end
return pick_and_answer(ARGV[21])
"""
)

# ARGV: the common ones (Scheduler._common).
_PUMP = (
    _LIB
    + """
return pick_and_answer()
"""
)

# ARGV: prefix, then delivery IDs picked whose tasks could not be sent: free their slots and
# forget them, so the watchdog hands them over again.
_FORGET = (
    _LIB
    + """
for i = 2, #ARGV do
  release(ARGV[i])
  redis.call('SREM', P .. 'known', ARGV[i])
end
return 1
"""
)

# ARGV: the common ones (Scheduler._common), the keep token of a finish whose answer was lost
# (or ''), then the ready deliveries it was to add (add_items). Its caller cannot know whether
# that script ran: this adds those ready deliveries the scheduler does not hold (it did not
# run), sends the task of the pick it kept with that token (it ran), and picks as usual.
_UNKEEP = (
    _LIB
    + """
local token = ARGV[16]
add_items(17, true)
local ids, circuits = {}, {}
if token ~= '' then
  local all = redis.call('HGETALL', P .. 'if')
  for i = 1, #all, 2 do
    local f = split(all[i + 1])
    if f[3] == token then
      ids[#ids + 1] = all[i]
      circuits[#circuits + 1] = ''
      redis.call('HSET', P .. 'if', all[i], f[1] .. ' ' .. f[2])
    end
  end
end
push_tasks(ids, circuits, tonumber(ARGV[2]))
local r = pick_and_answer()
for _, id in ipairs(r[1]) do ids[#ids + 1] = id end
local sent = 0
if ARGV[11] ~= '' and #ids > 0 then sent = 1 end
return {ids, r[2], r[3], sent, '', ''}
"""
)

# ARGV: prefix, subscription, count. Take up to `count` ready deliveries of a subscription
# whose circuit is open out of the scheduler (they go back to PostgreSQL, parked) and return
# their IDs, oldest first.
_DRAIN = """
local key = ARGV[1] .. 'r:' .. ARGV[2]
local n = tonumber(ARGV[3])
local ids = redis.call('LRANGE', key, 0, n - 1)
redis.call('LTRIM', key, n, -1)
if #ids > 0 then
  redis.call('DECRBY', ARGV[1] .. 'ready', #ids)
  for _, id in ipairs(ids) do redis.call('SREM', ARGV[1] .. 'known', id) end
end
return ids
"""

# ARGV: prefix, then delivery IDs. Returns 1 or 0 for each: does the scheduler hold it?
_KNOWN = """
local out = {}
for i = 2, #ARGV do out[#out + 1] = redis.call('SISMEMBER', ARGV[1] .. 'known', ARGV[i]) end
return out
"""

# ARGV: prefix, subscription, rate, now, window, member. Returns {allowed, retry_at}.
# The last check before a rate-limited attempt is sent: picks are spaced already, but the time
# from pick to send varies, so what the subscriber receives is counted here, over a window a
# little wider than a second.
_ADMIT = """
local key = ARGV[1] .. 'sent:' .. ARGV[2]
local now, window, rate = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= rate then
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, tostring(tonumber(first[2]) + window)}
end
redis.call('ZADD', key, now, ARGV[6])
redis.call('EXPIRE', key, math.ceil(window) + 1)
return {1, '0'}
"""

# ARGV: prefix, subscription, limit, rate (0 = none), tenant.
_CONFIGURE = (
    _LIB
    + """
local sk = P .. 's:' .. ARGV[2]
redis.call('HSET', sk, 'limit', ARGV[3], 'rate', ARGV[4], 'tenant', ARGV[5])
redis.call('EXPIRE', sk, IDLE_TTL)
local cwnd = redis.call('HGET', sk, 'cwnd')
if cwnd and tonumber(cwnd) > tonumber(ARGV[3]) then redis.call('HSET', sk, 'cwnd', ARGV[3]) end
if redis.call('LLEN', P .. 'r:' .. ARGV[2]) > 0 then runnable(ARGV[2], ARGV[5]) end
return 1
"""
)


@dataclass(frozen=True)
class Item:
    """A delivery for the scheduler, with what it needs to know of its subscription."""

    delivery_id: str
    subscription_id: str
    tenant_id: str
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    rate_limit: int | None = None


@dataclass(frozen=True)
class Picked:
    """What one call handed out, and why others had to wait."""

    ids: list[str]
    # Subscriptions or tenants found at a limit: max_in_flight, rate_limit, tenant_cap.
    blocked: dict[str, int]
    # The unix time at which something becomes ready (a retry, a timer), or None.
    wake_at: float | None
    # Their Celery tasks were sent by the same script (the scheduler has a message template).
    sent: bool = False
    # A pick kept for the caller to attempt itself, not in `ids` and sent as no task
    # (`finish_call(keep=token)`), and whether its circuit was seen closed (see `circuit`).
    kept: str | None = None
    kept_closed: bool = False

    @classmethod
    def empty(cls) -> Picked:
        return cls([], {}, None)


BLOCK_REASONS = ("max_in_flight", "rate_limit", "tenant_cap")


class Scheduler:
    """The scheduler's operations; every one is one Lua script, so one round trip."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        lease: float,
        tenant_cap: str = "75%",
        default_slots: int = DEFAULT_SLOTS,
        window_factor: float = WINDOW_FACTOR,
        prefix: str = PREFIX,
        tasks: Template | None = None,
    ) -> None:
        """`tasks`: the delivery task's message template; with it, every pick sends its
        picked deliveries' tasks itself, in the same script (else the caller sends them)."""
        self.client = client
        self.lease = lease
        self.cap_abs, self.cap_share = parse_tenant_cap(tenant_cap)
        self.default_slots = default_slots
        self.window_factor = window_factor
        self.prefix = prefix
        self._tasks = [""] * 6 if tasks is None else tasks.script_args()
        self._enqueue = client.register_script(_ENQUEUE)
        self._finish = client.register_script(_FINISH)
        self._pump = client.register_script(_PUMP)
        self._known = client.register_script(_KNOWN)
        self._configure = client.register_script(_CONFIGURE)
        self._admit = client.register_script(_ADMIT)
        self._forget = client.register_script(_FORGET)
        self._unkeep = client.register_script(_UNKEEP)
        self._drain = client.register_script(_DRAIN)

    def _common(self, now: float | None, max_picks: int) -> list[Any]:
        return [
            self.prefix,
            unix_time(now),
            max_picks,
            self.lease,
            self.cap_abs,
            self.cap_share,
            self.default_slots,
            self.window_factor,
            RATE_SPACING,
            *self._tasks,
        ]

    def enqueue(
        self, items: Sequence[Item], now: float | None = None, max_picks: int = 1000
    ) -> Picked:
        """Add ready deliveries (in this order) and hand out what may start now."""
        args = self._common(now, max_picks) + _items(items)
        return _picked(self._enqueue(args=args))

    def finish_call(
        self,
        delivery_id: str,
        subscription_id: str,
        tenant_id: str,
        outcome: str,
        retry_at: float | None = None,
        now: float | None = None,
        max_picks: int = 100,
        keep: str = "",
        ready: Sequence[Item] = (),
    ) -> ScriptCall[Picked]:
        """End a delivery's turn (or schedule its retry at `retry_at`) and hand out the next:
        a call to make on its own (`.run()`) or with others (redis_client.run_together).
        `keep`, a token unique to this call (or ""): the first delivery picked is answered as
        `Picked.kept`, its task not sent: the caller attempts it itself, in the slot this
        attempt frees. If the answer is lost, `unkeep(token)` sends that task after all.
        `ready`: deliveries to add first, as `enqueue` does (the next of an ordered lane that
        this attempt freed)."""
        args = self._common(now, max_picks)
        args += [
            delivery_id,
            subscription_id,
            tenant_id,
            outcome,
            "" if retry_at is None else repr(retry_at),
            keep,
            *_items(ready),
        ]
        return ScriptCall(self._finish, [], args, _picked)

    def pump(self, now: float | None = None, max_picks: int = 1000) -> Picked:
        """Move due retries and timers along and hand out what may start now."""
        return _picked(self._pump(args=self._common(now, max_picks)))

    def unkeep(self, token: str, ready: Sequence[Item] = (), now: float | None = None) -> Picked:
        """After a `finish_call` whose answer was lost (it may or may not have run): send the
        task of the delivery it kept with `token` (it ran), add its `ready` deliveries that the
        scheduler does not hold (it did not run), and pick as usual."""
        args = [*self._common(now, 100), token, *_items(ready)]
        return _picked(self._unkeep(args=args))

    def forget(self, delivery_ids: Sequence[str]) -> None:
        """Free the slots of picked deliveries whose tasks were never sent, and forget them."""
        if delivery_ids:
            self._forget(args=[self.prefix, *delivery_ids])

    def drain(self, subscription_id: str, count: int = DRAIN_CHUNK) -> list[str]:
        """Take up to `count` of a subscription's ready deliveries out of the scheduler,
        oldest first; return their IDs (fewer than `count`: none are left)."""
        return [as_text(i) for i in self._drain(args=[self.prefix, subscription_id, count])]

    def known(self, delivery_ids: Sequence[str]) -> list[bool]:
        """Say for each delivery whether the scheduler holds it (ready, delayed or in flight)."""
        if not delivery_ids:
            return []
        return [bool(v) for v in self._known(args=[self.prefix, *delivery_ids])]

    def admit(
        self, subscription_id: str, rate_limit: int, delivery_id: str, now: float | None = None
    ) -> float | None:
        """Count an attempt against its subscription's rate just before it is sent; return
        None if it may go, or the unix time from which it may."""
        allowed, retry_at = self._admit(
            args=[
                self.prefix,
                subscription_id,
                rate_limit,
                unix_time(now),
                ADMIT_WINDOW_SECONDS,
                delivery_id,
            ]
        )
        return None if int(allowed) else float(as_text(retry_at))

    def configure(
        self, subscription_id: str, tenant_id: str, max_in_flight: int, rate_limit: int | None
    ) -> None:
        """Apply a subscription's new limits at once."""
        self._configure(
            args=[self.prefix, subscription_id, max_in_flight, rate_limit or 0, tenant_id]
        )

    def announce(self, worker: str, slots: int, now: float | None = None) -> None:
        """Count a worker's pool processes in the window for the next WORKER_TTL_SECONDS."""
        expires = (time.time() if now is None else now) + WORKER_TTL_SECONDS
        self.client.hset(self.prefix + "workers", worker, f"{slots} {expires!r}")

    def withdraw(self, worker: str) -> None:
        self.client.hdel(self.prefix + "workers", worker)

    def subscription_state(
        self, subscription_id: str, max_in_flight: int, rate_limit: int | None
    ) -> dict[str, Any]:
        """The limits in force for one subscription (given its configured ones, which the
        scheduler learns with its first delivery), and what waits for them."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.prefix + "s:" + subscription_id)
        pipe.llen(self.prefix + "r:" + subscription_id)
        raw, ready = pipe.execute()
        h = {as_text(k): as_text(v) for k, v in raw.items()}
        limit = int(float(h.get("limit", max_in_flight)))
        cwnd = float(h.get("cwnd", limit))
        rate = float(h.get("rate", rate_limit or 0) or 0)
        arate = float(h.get("arate", 0) or 0)
        effective_rate = arate if arate > 0 and (rate == 0 or arate < rate) else rate
        return {
            "effective_max_in_flight": max(1, min(limit, math.floor(cwnd))),
            "effective_rate_limit": round(effective_rate, 2) if effective_rate else None,
            "in_flight": max(0, int(h.get("inflight", 0))),
            "ready": int(ready),
        }

    def totals(self) -> dict[str, int]:
        """Deliveries ready to start, waiting for a retry, and in flight, across all tenants."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.prefix + "ready")
        pipe.zcard(self.prefix + "delayed")
        pipe.hlen(self.prefix + "if")
        ready, delayed, inflight = pipe.execute()
        return {
            "ready": max(0, int(ready or 0)),
            "delayed": int(delayed),
            "in_flight": int(inflight),
        }


def _items(items: Sequence[Item]) -> list[Any]:
    """Items as the scripts take them (add_items): a count, then five fields each."""
    args: list[Any] = [len(items)]
    for item in items:
        args += [
            item.delivery_id,
            item.subscription_id,
            item.tenant_id,
            item.max_in_flight,
            item.rate_limit or 0,
        ]
    return args


def _picked(raw: Any) -> Picked:
    ids, blocked, wake, sent, kept, kept_circuit = raw
    wake_at = float(as_text(wake))
    return Picked(
        [as_text(i) for i in ids],
        {reason: int(n) for reason, n in zip(BLOCK_REASONS, blocked, strict=True) if int(n)},
        wake_at if wake_at >= 0 else None,
        bool(int(sent)),
        as_text(kept) or None,
        as_text(kept_circuit) == "closed",
    )
