-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.

-- now_us returns the Redis server time in microseconds since the Unix epoch.
-- Replicas' clocks are never used, so skewed pods cannot cheat.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- int formats a whole number without exponent (tostring would print 1.7e+15).
local function int(x)
  return string.format('%.0f', x)
end

-- dec formats a fractional number with 15 significant digits.
local function dec(x)
  return string.format('%.15g', x)
end

-- finite reports whether x is a number that is neither NaN nor infinite.
local function finite(x)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end

local function invalid(field, value, range)
  return redis.error_reply('INVALID_ARGUMENT ' .. field .. '=' .. tostring(value) .. ' must be ' .. range)
end

local function unknown_provider(key)
  return redis.error_reply('UNKNOWN_PROVIDER ' .. key)
end

-- load_config reads the provider config hash; nil when the provider is not registered.
local function load_config(key)
  local c = redis.call('HMGET', key, 'capacity', 'refill_rate', 'cooldown_sec',
    'breaker_threshold', 'breaker_timeout_sec', 'max_scale')
  if not c[1] then
    return nil
  end
  return {
    capacity = tonumber(c[1]),
    refill_rate = tonumber(c[2]),
    cooldown_sec = tonumber(c[3]) or 0,
    breaker_threshold = tonumber(c[4]) or 0,
    breaker_timeout_sec = tonumber(c[5]) or 0,
    max_scale = tonumber(c[6]) or 1,
  }
end

-- load_scale returns the stored scale factor (1 when the hash is absent).
local function load_scale(key)
  return tonumber(redis.call('HGET', key, 'scale')) or 1
end

-- settle returns the bucket's tokens at now: the stored tokens plus refill at
-- rate * scale per second since ts, capped at capacity. A missing bucket is
-- full. The second result is true when ts is ahead of now (Redis's clock went
-- backwards, e.g. after a failover): nothing is refilled, and the caller
-- should store the bucket at now so refill resumes from there.
local function settle(bucket_key, now, capacity, rate, scale)
  local b = redis.call('HMGET', bucket_key, 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]), tonumber(b[2])
  if tokens == nil or ts == nil then
    return capacity, false
  end
  local elapsed = now - ts
  if elapsed > 0 then
    tokens = tokens + elapsed * rate * scale / 1000000
  end
  if tokens > capacity then
    tokens = capacity
  end
  return tokens, elapsed < 0
end

local function store_bucket(bucket_key, tokens, now)
  redis.call('HSET', bucket_key, 'tokens', dec(tokens), 'ts', int(now))
end
