"""The limiter on Redis: one Lua script checks and charges every window atomically, for all replicas.

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
local now = tonumber(redis.call('TIME')[1])
local n = #KEYS
local totals = {}
for i = 1, n do
  local key = KEYS[i]
  local window = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
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
    return {0, now, i, retry}
  end
  totals[i] = total
end
local out = {1, now}
for i = 1, n do
  local key = KEYS[i]
  local window = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  redis.call('HINCRBY', key, now, amount)
  redis.call('HINCRBY', key, 't', amount)
  redis.call('HSETNX', key, 'o', now)
  redis.call('EXPIRE', key, window + 2)
  table.insert(out, limit - totals[i] - amount)
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

    async def acquire(self, checks: list[Check]) -> Decision:
        keys = [self.prefix + c.key for c in checks]
        args = [v for c in checks for v in (c.window, c.limit, c.amount)]
        try:
            result = await self.redis.eval_script(_ACQUIRE, self._acquire_sha, keys, args)
        except ConnectionError as exc:
            raise Unavailable(f"Quotas cannot be checked right now ({exc}); retry shortly.") from None
        if result[0] == 1:
            return Decision(True, int(result[1]), tuple(int(r) for r in result[2:]))
        return Decision(False, int(result[1]), (), int(result[2]) - 1, float(result[3]))

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
