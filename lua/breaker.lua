-- breaker.lua: report the outcome of a call to the provider, or reset the
-- shared circuit breaker. Failures are consecutive: a success in the closed
-- state sets the count back to 0.
--
-- KEYS[1]  config hash    <prefix>:{<provider>}:config
-- KEYS[2]  breaker hash   <prefix>:{<provider>}:breaker (state, failures, opened_at, probe_until)
-- ARGV[1]  op             failure | success | reset
-- ARGV[2]  channel        pub/sub channel told "breaker closed" when it closes ("" = none)
--
-- failure: closed -> count it; at breaker_threshold the breaker opens (opened_at = now).
--          half_open (the probe failed) -> open again from now.
--          open -> counted; the open period is not extended.
--          breaker_threshold 0 disables the breaker: nothing is written.
-- success: closed -> failures back to 0; half_open (the probe succeeded) -> closed;
--          open -> nothing (the call began before the breaker opened).
-- reset:   closed, whatever the state (operator override).
-- A closed breaker with no failures is stored as no key at all.
--
-- Reply: array of 3: [1] state after the call, [2] failures (integer),
--   [3] retry_after_us (integer: time left while open, else 0).
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT op=<value> ...

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local op = ARGV[1]
if op ~= 'failure' and op ~= 'success' and op ~= 'reset' then
  return invalid('op', op, 'one of failure, success, reset')
end

local now = now_us()
local b = redis.call('HMGET', KEYS[2], 'state', 'failures', 'opened_at')
local state = b[1] or 'closed'
local failures = num(b[2]) or 0
local opened_at = num(b[3]) or 0
local timeout_us = cfg.breaker_timeout_sec * 1000000

local function close()
  redis.call('DEL', KEYS[2])
  if state ~= 'closed' and ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], 'breaker closed')
  end
  return {'closed', 0, 0}
end

local function open_reply()
  local left = opened_at + timeout_us - now
  if left < 0 then left = 0 end
  return {state, failures, math.ceil(left)}
end

if op == 'reset' then
  return close()
end

if op == 'success' then
  if state == 'half_open' or (state == 'closed' and failures > 0) then
    return close()
  end
  if state == 'open' then
    return open_reply()
  end
  return {'closed', 0, 0}
end

-- failure
if cfg.breaker_threshold == 0 then
  return {'closed', 0, 0}
end
failures = failures + 1
if state == 'half_open' or (state == 'closed' and failures >= cfg.breaker_threshold) then
  state = 'open'
  opened_at = now
  redis.call('HSET', KEYS[2], 'state', state, 'failures', failures, 'opened_at', int(now))
  redis.call('HDEL', KEYS[2], 'probe_until')
  return open_reply()
end
redis.call('HSET', KEYS[2], 'state', state, 'failures', failures)
if state == 'open' then
  return open_reply()
end
return {state, failures, 0}
