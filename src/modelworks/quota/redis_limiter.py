"""The limiter on Redis: one Lua script checks and charges every window atomically, for all replicas.

Admissions asked for in the same turn of the event loop go to Redis together, in one script call that decides
them in order (each all or nothing, each after the charges of those before it).

Leases: when a limit is far from reached, a replica charges a little more than the request needs (at most 1/20
of the limit) and admits the next requests against that surplus locally, until the second in which Redis
charged it ends; what is left then goes back. Every admission is still charged in Redis first, so the limit
holds across replicas exactly as before; near the limit there is no surplus to lease and every request asks
Redis. What a lease costs the others: up to 1/20 of a limit held by one replica for under a second.

Each limited key is a Redis hash from second to amount, with the window's running total (`t`) and its oldest
live second (`o`): a check subtracts only the buckets that just left the window, so it costs the same however
busy the window is. Time comes from the Redis server, so replicas with skewed clocks still share one set of
windows.
"""

from __future__ import annotations

import asyncio
import logging

from modelworks.errors import Unavailable
from modelworks.quota.limiter import Check, Decision
from modelworks.quota.resp import RespClient, sha1

log = logging.getLogger("modelworks.quota")

_ACQUIRE = """
-- ARGV: requests, then for each request: checks, then for each check: key index, window, limit, amount, lease.
-- Requests are decided in order, each all or nothing, each seeing the charges of those before it; a check's
-- lease (a surplus to admit later requests locally) is charged too when it fits, else left out.
-- A key is read once per call and written once at its end, however many requests of the call it limits.
-- Reply: one string of integers: the server's second and microsecond, then per request "1" and for each check
-- "remaining leased", or "0 check retry".
local clock = redis.call('TIME')
local now = tonumber(clock[1])
local state = {}  -- key index -> {total, oldest, added, trimmed, window}
local function load(k, window)
  local s = state[k]
  if s then return s end
  local key = KEYS[k]
  local found = redis.call('HMGET', key, 't', 'o')
  local total = tonumber(found[1]) or 0
  local oldest = tonumber(found[2]) or now
  local cutoff = now - window
  local trimmed = found[2] == false
  if oldest <= cutoff then
    if cutoff - oldest >= window then
      redis.call('DEL', key)
      total = 0
    else
      for second = oldest, cutoff do
        local v = redis.call('HGET', key, second)
        if v then
          total = total - tonumber(v)
          redis.call('HDEL', key, second)
        end
      end
    end
    oldest = cutoff + 1
    trimmed = true
  end
  s = {total, oldest, 0, trimmed, window}
  state[k] = s
  return s
end
local pos = 1
local requests = tonumber(ARGV[pos]); pos = pos + 1
local out = {now, tonumber(clock[2])}
for r = 1, requests do
  local n = tonumber(ARGV[pos]); pos = pos + 1
  local checks = {}
  local refused = nil
  for i = 1, n do
    local k, window, limit, amount = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
    local lease = tonumber(ARGV[pos + 4])
    pos = pos + 5
    if not refused then
      local s = load(k, window)
      if s[1] + amount > limit then
        local retry = window
        if amount <= limit then
          local freed = 0
          for second = s[2], now do
            freed = freed + (tonumber(redis.call('HGET', KEYS[k], second)) or 0)
            if second == now then freed = freed + s[3] end
            if s[1] - freed + amount <= limit then
              retry = second + window - now + 1
              break
            end
          end
        end
        refused = {0, i, retry}
      else
        if s[1] + amount + lease > limit then lease = 0 end
        checks[i] = {s, limit, amount + lease, lease}
      end
    end
  end
  if refused then
    for _, v in ipairs(refused) do table.insert(out, v) end
  else
    table.insert(out, 1)
    for i = 1, n do
      local s, limit, amount = checks[i][1], checks[i][2], checks[i][3]
      s[1] = s[1] + amount
      s[3] = s[3] + amount
      table.insert(out, limit - s[1])
      table.insert(out, checks[i][4])
    end
  end
end
for k, s in pairs(state) do
  local key = KEYS[k]
  if s[3] ~= 0 then
    redis.call('HINCRBY', key, now, s[3])
    redis.call('HSET', key, 't', s[1], 'o', s[2])
    redis.call('EXPIRE', key, s[5] + 2)
  elseif s[4] then
    redis.call('HSET', key, 't', s[1], 'o', s[2])
    redis.call('EXPIRE', key, s[5] + 2)
  end
end
return table.concat(out, ' ')
"""

_ADJUST = """
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
local second = tonumber(ARGV[2])
if second <= now - window or redis.call('HEXISTS', KEYS[1], second) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], second, tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], 't', tonumber(ARGV[3]))
return 1
"""


class _Lease:
    """Surplus charged in Redis for one key, to admit this replica's next requests without asking."""

    __slots__ = ("window", "second", "deadline", "left", "remaining", "used")

    def __init__(self, window: int, second: int, deadline: float, left: int, remaining: int) -> None:
        self.window = window
        self.second = second      # the Redis second it was charged in (and the one its requests are charged in)
        self.deadline = deadline  # loop time by which that second has surely ended
        self.left = left
        self.remaining = remaining  # the window's room in Redis after the charge, surplus not counted
        self.used = 0


class RedisLimiter:
    """Admission: from a lease when one covers every check, else one script call per turn of the event loop.
    Corrections and returned leases are summed per bucket and sent together every `adjust_interval` seconds,
    off the request path (a correction arrives that much later, no more)."""

    LEASE_SHARE = 20  # a lease is at most 1/20 of the limit
    UNCONFIRMED_S = 10  # after replicas fell short of confirming, admissions go on without WAIT this long

    def __init__(self, url: str, prefix: str = "mw:rl:", adjust_interval: float = 0.2, leases: bool = True,
                 wait_replicas: int = 0, wait_timeout_ms: int = 100) -> None:
        # WAIT may block for its timeout: replies are awaited a while longer than that
        self.redis = RespClient(url, reply_timeout=max(5.0, wait_timeout_ms / 1000 + 2))
        self.wait_replicas = wait_replicas  # admit only once this many Redis replicas hold the charges
        self.wait_timeout_ms = wait_timeout_ms
        self._lagging_since = 0.0  # when a WAIT last fell short (logged once a minute)
        self._unreachable_logged = -1e9
        self._unconfirmed_until = 0.0  # until then, admissions do not wait for replicas (they fell short)
        self.prefix = prefix
        self.adjust_interval = adjust_interval
        self.leases = leases
        self._acquire_sha = sha1(_ACQUIRE)
        self._adjust_sha = sha1(_ADJUST)
        self._corrections: dict[tuple[str, int, int], int] = {}
        self._flusher: asyncio.Task | None = None
        self._correcting: asyncio.Future | None = None  # the corrections being sent by the last flush
        self._batch: list = []
        self._sending: set[asyncio.Task] = set()
        self._held: dict[str, _Lease] = {}
        self._asking: set[str] = set()   # keys with a lease on its way
        self._pace: dict[str, int] = {}  # key -> what its last lease admitted (sizes the next one)

    async def acquire(self, checks: list[Check]) -> Decision:
        """Locally from leases when they cover it; else joins this turn's script call."""
        loop = asyncio.get_running_loop()
        held = self._held
        if held:
            decision = self._from_leases(checks, loop.time())
            if decision is not None:
                return decision
        extras = [self._lease_size(c) for c in checks] if self.leases else None
        if extras and not all(extras):  # a check that cannot be leased sends every such request to Redis anyway
            extras = None
        if extras:
            self._asking.update(c.key for c in checks)
        future = loop.create_future()
        self._batch.append((checks, extras, future))
        if len(self._batch) == 1:
            loop.call_soon(self._send_batch)
        return await future

    def _from_leases(self, checks: list[Check], now: float) -> Decision | None:
        held = self._held
        second = None
        for c in checks:
            lease = held.get(c.key)
            if lease is None or lease.left < c.amount or lease.deadline <= now or (second is not None and lease.second != second):
                return None
            second = lease.second
        remaining = []
        for c in checks:
            lease = held[c.key]
            lease.left -= c.amount
            lease.used += c.amount
            remaining.append(lease.remaining + lease.left)
        return Decision(True, second, tuple(remaining))

    def _lease_size(self, check: Check) -> int:
        if check.key in self._asking:  # one lease on its way per key
            return 0
        size = min(check.limit // self.LEASE_SHARE, max(8 * check.amount, self._pace.get(check.key, 0)))
        return size if size >= max(1, check.amount) else 0  # else it would not cover one more such request

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._decide(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _decide(self, batch: list) -> None:
        keys: list[str] = []
        index: dict[str, int] = {}
        args: list = [len(batch)]
        for checks, extras, _ in batch:
            args.append(len(checks))
            for i, c in enumerate(checks):
                k = self.prefix + c.key
                if k not in index:
                    index[k] = len(keys) + 1
                    keys.append(k)
                args.extend((index[k], c.window, c.limit, c.amount, extras[i] if extras else 0))
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            if self.wait_replicas and sent >= self._unconfirmed_until:
                result, acked = await self.redis.eval_confirmed(_ACQUIRE, self._acquire_sha, keys, args,
                                                                self.wait_replicas, self.wait_timeout_ms)
                if acked < self.wait_replicas:
                    self._short_of_replicas(acked)
            else:
                result = await self.redis.eval_script(_ACQUIRE, self._acquire_sha, keys, args)
        except Exception as exc:  # noqa: BLE001 - every waiter gets the same answer
            self._unavailable(batch, exc)
            return
        values = result.split()
        now = int(values[0])
        deadline = sent + (1_000_000 - int(values[1])) / 1e6  # Redis read its clock after `sent`
        pos = 2
        for checks, extras, future in batch:
            if values[pos] == b"1":
                remaining = []
                for i, c in enumerate(checks):
                    left, leased = int(values[pos + 1 + 2 * i]), int(values[pos + 2 + 2 * i])
                    remaining.append(left + leased)
                    if extras and extras[i]:
                        self._asking.discard(c.key)
                        if leased:
                            self._hold(c.key, _Lease(c.window, now, deadline, leased, left), loop)
                decision = Decision(True, now, tuple(remaining))
                pos += 1 + 2 * len(checks)
            else:
                if extras:
                    self._asking.difference_update(c.key for c, e in zip(checks, extras) if e)
                decision = Decision(False, now, (), int(values[pos + 1]) - 1, float(values[pos + 2]))
                pos += 3
            if not future.done():
                future.set_result(decision)

    def _short_of_replicas(self, acked: int) -> None:
        """Fewer replicas confirmed than asked (one down or lagging, or none yet after a failover): the batch was
        admitted anyway, and the next ones are not held up for WAIT for a while. A WAIT blocks the one connection
        for its timeout, so one per batch would throttle admissions to a batch per timeout."""
        loop = asyncio.get_running_loop()
        self._unconfirmed_until = loop.time() + self.UNCONFIRMED_S
        if loop.time() - self._lagging_since > 60:
            self._lagging_since = loop.time()
            log.warning("only %d of %d Redis replicas confirmed the quota charges within %d ms: admitted anyway, "
                        "and for the next %d s without waiting (a failover meanwhile could lose charges)", acked,
                        self.wait_replicas, self.wait_timeout_ms, self.UNCONFIRMED_S)

    def _unavailable(self, batch: list, exc: BaseException) -> None:
        self._asking.clear()
        now = asyncio.get_running_loop().time()
        if now - self._unreachable_logged > 10:  # once in 10 s, not per batch
            self._unreachable_logged = now
            log.warning("quotas cannot be checked (answering 503 meanwhile): %s", exc)
        error = Unavailable("Quotas cannot be checked right now; retry shortly.", headers={"retry-after": "1"})
        for _, _, future in batch:
            if not future.done():
                future.set_exception(error)

    def _hold(self, key: str, lease: _Lease, loop) -> None:
        old = self._held.get(key)
        if old is not None:
            self._release(key, old)
        self._held[key] = lease
        loop.call_at(lease.deadline, self._expire, key, lease)

    def _expire(self, key: str, lease: _Lease) -> None:
        if self._held.get(key) is lease:
            del self._held[key]
            self._release(key, lease)

    def _release(self, key: str, lease: _Lease, later: bool = True) -> None:
        """Give back what a lease did not use. The next lease is sized from this one: what it admitted in its
        second, or twice its size when it ran short before the second ended."""
        self._pace[key] = lease.used if lease.deadline <= asyncio.get_running_loop().time() else 2 * (lease.used + lease.left)
        if lease.left:
            slot = (key, lease.window, lease.second)
            self._corrections[slot] = self._corrections.get(slot, 0) - lease.left
            lease.left = 0
            if later:
                self._flush_later()

    async def adjust(self, key: str, window: int, second: int, delta: int) -> None:
        slot = (key, window, second)
        self._corrections[slot] = self._corrections.get(slot, 0) + delta
        self._flush_later()

    def _flush_later(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def flush(self) -> None:
        """Send the corrections made so far; returns once Redis has them, those an earlier flush took included."""
        corrections, self._corrections = self._corrections, {}
        calls = [self.redis.eval_script(_ADJUST, self._adjust_sha, [self.prefix + key], [window, second, delta])
                 for (key, window, second), delta in corrections.items() if delta]
        earlier, sending = self._correcting, None
        if calls:  # sent back to back on the one connection: a pipeline
            sending = self._correcting = asyncio.gather(*calls)
        if earlier is not None and not earlier.done():  # its own flush reports its errors
            await asyncio.gather(asyncio.shield(earlier), return_exceptions=True)
        if sending is not None:
            await sending

    async def _flush_soon(self) -> None:
        while True:
            await asyncio.sleep(self.adjust_interval)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - a lost correction only leaves a charge at its estimate
                log.warning("could not send quota corrections to Redis", exc_info=True)
            if not self._corrections:  # corrections made while this one was sending go out in the next round
                return

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        for key, lease in list(self._held.items()):
            self._release(key, lease, later=False)
        self._held.clear()
        try:
            await self.flush()
        finally:
            await self.redis.close()
