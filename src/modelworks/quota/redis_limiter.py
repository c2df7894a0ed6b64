"""The limiter on Redis: one Lua script checks and charges every window atomically, for all replicas.

Each limited key is a Redis hash from second to amount; the script drops buckets that left the window, sums
the rest, and charges all checks only when every one has room. Time comes from the Redis server, so replicas
with skewed clocks still share one set of windows.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from modelworks.quota.limiter import Check, Decision

_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
local n = #KEYS
local totals = {}
for i = 1, n do
  local window = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  local fields = redis.call('HGETALL', KEYS[i])
  local total = 0
  local live = {}
  for j = 1, #fields, 2 do
    local b = tonumber(fields[j])
    if b <= now - window then
      redis.call('HDEL', KEYS[i], fields[j])
    else
      local v = tonumber(fields[j + 1])
      total = total + v
      table.insert(live, {b, v})
    end
  end
  if total + amount > limit then
    local retry = window
    if amount <= limit then
      table.sort(live, function(a, b) return a[1] < b[1] end)
      local freed = 0
      for _, pair in ipairs(live) do
        freed = freed + pair[2]
        if total - freed + amount <= limit then
          retry = pair[1] + window - now + 1
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
  local window = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  redis.call('HINCRBY', KEYS[i], now, amount)
  redis.call('EXPIRE', KEYS[i], window + 2)
  table.insert(out, limit - totals[i] - amount)
end
return out
"""

_ADJUST = """
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
local second = tonumber(ARGV[2])
if second <= now - window then return 0 end
redis.call('HINCRBY', KEYS[1], second, tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], window + 2)
return 1
"""


class RedisLimiter:
    def __init__(self, url: str, prefix: str = "mw:rl:") -> None:
        self.redis = aioredis.from_url(url, decode_responses=False)
        self.prefix = prefix
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._adjust = self.redis.register_script(_ADJUST)

    async def acquire(self, checks: list[Check]) -> Decision:
        keys = [self.prefix + c.key for c in checks]
        args = [v for c in checks for v in (c.window, c.limit, c.amount)]
        result = await self._acquire(keys=keys, args=args)
        if result[0] == 1:
            return Decision(True, int(result[1]), tuple(int(r) for r in result[2:]))
        return Decision(False, int(result[1]), (), int(result[2]) - 1, float(result[3]))

    async def adjust(self, key: str, window: int, second: int, delta: int) -> None:
        await self._adjust(keys=[self.prefix + key], args=[window, second, delta])

    async def close(self) -> None:
        await self.redis.aclose()
