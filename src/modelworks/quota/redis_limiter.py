"""The limiter on Redis: one Lua script checks and charges every window atomically, for all replicas.

Admissions asked for in the same turn of the event loop go to Redis together, in one script call that decides
them in order (each all or nothing, each after the charges of those before it): under load that divides the cost
of a check by the number of requests arriving together; alone, a request goes at once.

Each limited key is a Redis hash from second to amount, with the window's running total (`t`) and its oldest
live second (`o`): a check subtracts only the buckets that just left the window, so it costs the same however
busy the window is. All checks are charged only when every one has room. Time comes from the Redis server, so replicas
with skewed clocks still share one set of windows.
"""

from __future__ import annotations

import asyncio
import logging

from modelworks.errors import Unavailable
from modelworks.quota.limiter import Check, Decision
from modelworks.quota.resp import RespClient, sha1

log = logging.getLogger("modelworks.quota")

_ACQUIRE = """
-- ARGV: requests, then for each request: checks, then for each check: key index, window, limit, amount.
-- Requests are decided in order, each all or nothing, each seeing the charges of those before it.
local now = tonumber(redis.call('TIME')[1])
local pos = 1
local requests = tonumber(ARGV[pos]); pos = pos + 1
local out = {now}
for r = 1, requests do
  local n = tonumber(ARGV[pos]); pos = pos + 1
  local checks = {}
  for i = 1, n do
    checks[i] = {KEYS[tonumber(ARGV[pos])], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])}
    pos = pos + 4
  end
  local totals = {}
  local refused = nil
  for i = 1, n do
    local key, window, limit, amount = checks[i][1], checks[i][2], checks[i][3], checks[i][4]
    local state = redis.call('HMGET', key, 't', 'o')
    local total = tonumber(state[1]) or 0
    local oldest = tonumber(state[2]) or now
    local cutoff = now - window
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
      redis.call('HSET', key, 't', total, 'o', cutoff + 1)
      oldest = cutoff + 1
    end
    if total + amount > limit then
      local retry = window
      if amount <= limit then
        local freed = 0
        for second = oldest, now do
          freed = freed + (tonumber(redis.call('HGET', key, second)) or 0)
          if total - freed + amount <= limit then
            retry = second + window - now + 1
            break
          end
        end
      end
      refused = {0, i, retry}
      break
    end
    totals[i] = total
  end
  if refused then
    table.insert(out, refused)
  else
    local result = {1}
    for i = 1, n do
      local key, window, limit, amount = checks[i][1], checks[i][2], checks[i][3], checks[i][4]
      redis.call('HINCRBY', key, now, amount)
      redis.call('HINCRBY', key, 't', amount)
      redis.call('HSETNX', key, 'o', now)
      redis.call('EXPIRE', key, window + 2)
      table.insert(result, limit - totals[i] - amount)
    end
    table.insert(out, result)
  end
end
return out
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


class RedisLimiter:
    """Admission is one script call per request. Corrections are summed per bucket and sent together every
    `adjust_interval` seconds, off the request path (a correction arrives that much later, no more)."""

    def __init__(self, url: str, prefix: str = "mw:rl:", adjust_interval: float = 0.2) -> None:
        self.redis = RespClient(url)
        self.prefix = prefix
        self.adjust_interval = adjust_interval
        self._acquire_sha = sha1(_ACQUIRE)
        self._adjust_sha = sha1(_ADJUST)
        self._corrections: dict[tuple[str, int, int], int] = {}
        self._flusher: asyncio.Task | None = None
        self._batch: list = []
        self._sending: set[asyncio.Task] = set()

    async def acquire(self, checks: list[Check]) -> Decision:
        """Joins the admissions asked for in this turn of the event loop; one script call decides them all."""
        future = asyncio.get_running_loop().create_future()
        self._batch.append((checks, future))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._send_batch)
        return await future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._decide(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _decide(self, batch: list) -> None:
        keys: list[str] = []
        index: dict[str, int] = {}
        args: list = [len(batch)]
        for checks, _ in batch:
            args.append(len(checks))
            for c in checks:
                k = self.prefix + c.key
                if k not in index:
                    index[k] = len(keys) + 1
                    keys.append(k)
                args.extend((index[k], c.window, c.limit, c.amount))
        try:
            result = await self.redis.eval_script(_ACQUIRE, self._acquire_sha, keys, args)
        except (ConnectionError, Exception) as exc:  # noqa: BLE001 - every waiter gets the same answer
            error = Unavailable(f"Quotas cannot be checked right now ({exc}); retry shortly.")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        now = int(result[0])
        for (_, future), decided in zip(batch, result[1:]):
            if future.done():
                continue
            if decided[0] == 1:
                future.set_result(Decision(True, now, tuple(int(r) for r in decided[1:])))
            else:
                future.set_result(Decision(False, now, (), int(decided[1]) - 1, float(decided[2])))

    async def adjust(self, key: str, window: int, second: int, delta: int) -> None:
        slot = (key, window, second)
        self._corrections[slot] = self._corrections.get(slot, 0) + delta
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def flush(self) -> None:
        corrections, self._corrections = self._corrections, {}
        calls = [self.redis.eval_script(_ADJUST, self._adjust_sha, [self.prefix + key], [window, second, delta])
                 for (key, window, second), delta in corrections.items() if delta]
        if calls:  # sent back to back on the one connection: a pipeline
            await asyncio.gather(*calls)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.adjust_interval)
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - a lost correction only leaves a charge at its estimate
            log.warning("could not send quota corrections to Redis", exc_info=True)

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        try:
            await self.flush()
        finally:
            await self.redis.close()
