-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.

-- now_us returns the Redis server time in microseconds since the Unix epoch,
-- and the same as a decimal string (what int would write, made by joining
-- TIME's two strings: formatting a number costs a call into C).
-- Replicas' clocks are never used, so skewed pods cannot cheat.
local function now_us()
  local t = redis.call('TIME')
  local us = t[2]
  if #us < 6 then
    us = ('00000'):sub(#us) .. us
  end
  return t[1] * 1000000 + t[2], t[1] .. us -- arithmetic reads the digit strings: no tonumber calls
end

-- int formats a whole number without exponent (tostring would print 1.7e+15).
local function int(x)
  return string.format('%.0f', x)
end



-- num parses a number strictly: an optional minus sign, decimal digits with
-- an optional fraction and exponent (what dec and int write, and what any
-- client's decimal formatting writes). Hex, spaces, underscores, nan and
-- inf are nil, and so is a number too large to be finite; so is nil or
-- false (a missing field). s is a string, nil or false.
--
-- It runs on every number acquire reads, so it makes two calls into C (a
-- call into C costs about as much as a dozen lines of Lua here): one
-- pattern keeps out what tonumber would read besides decimals (hex needs
-- an x, inf and nan letters; spaces are not allowed), and tonumber refuses
-- what the pattern lets through that is not a number ("1.2.3", "1e").
local function num(s)
  if not s or not s:find('^%-?[%d.][%d.eE+-]*$') then
    return nil
  end
  local x = tonumber(s)
  if x == nil then -- an interpreter without exponents in tonumber (gopher-lua)
    local m, e = s:match('^(%-?%d*%.?%d*)[eE]([+-]?%d+)$')
    x = m and tonumber(m) and tonumber(m) * 10 ^ tonumber(e)
  end
  if x and x - x == 0 then -- finite
    return x
  end
  return nil
end



local function invalid(field, value, range)
  return redis.error_reply('INVALID_ARGUMENT ' .. field .. '=' .. tostring(value) .. ' must be ' .. range)
end







-- pressure.lua: store a write coordinator's latest pressure report, unless a
-- newer one (higher seq) is already stored, or an older one (lower seq) was
-- stored less than hold_ms ago. The hash expires ttl_ms after the last
-- report, so a coordinator that stops reporting disappears.
--
-- KEYS[1]  pressure hash   <prefix>:pressure:{<coordinator>}
-- ARGV[1]  level           ok | soft | hard
-- ARGV[2]  queue_size      integer in [0, capacity]
-- ARGV[3]  capacity        integer in [1, 1e9]
-- ARGV[4]  seq             integer >= 1 (as a decimal string), increasing per coordinator
-- ARGV[5]  ts              RFC 3339 time of the report (stored as given)
-- ARGV[6]  ttl_ms          integer in [1, 86400000]
-- ARGV[7]  hold_ms         optional, integer in [0, ttl_ms]: how long a stored report holds
--                          against a lower seq, by Redis time; absent: as long as the hash lives
--
-- Order: an equal seq is a duplicate. A lower seq is stale while the stored
-- report is younger than hold_ms (a retried or reordered post); after, it is
-- stored: the coordinator restarted and numbers from 1 again, or the stored
-- seq was bogus (2^64-1 from a token holder), which so silences the real
-- coordinator for hold_ms at most, not for the whole TTL. The hash also
-- holds updated_at, the Redis time of the store in microseconds.
--
-- Reply: integer 1 when stored, 0 when not (a duplicate, or stale: the caller
-- then publishes nothing).
-- Errors: INVALID_ARGUMENT <field>=<value> ...

local level, q, cap, ttl = ARGV[1], num(ARGV[2]), num(ARGV[3]), num(ARGV[6])
if level ~= 'ok' and level ~= 'soft' and level ~= 'hard' then
  return invalid('level', level, 'one of ok, soft, hard')
end
if not (cap ~= nil and cap == math.floor(cap) and cap >= 1 and cap <= 1e9) then
  return invalid('capacity', ARGV[3], 'an integer in [1, 1000000000]')
end
if not (q ~= nil and q == math.floor(q) and q >= 0 and q <= cap) then
  return invalid('queue_size', ARGV[2], 'an integer in [0, capacity]')
end
if not string.match(ARGV[4], '^[1-9][0-9]*$') or #ARGV[4] > 20 then
  return invalid('seq', ARGV[4], 'an integer >= 1')
end
if not (ttl ~= nil and ttl == math.floor(ttl) and ttl >= 1 and ttl <= 86400000) then
  return invalid('ttl_ms', ARGV[6], 'an integer in [1, 86400000]')
end
local hold = ttl
if ARGV[7] ~= nil then
  hold = num(ARGV[7])
  if not (hold ~= nil and hold == math.floor(hold) and hold >= 0 and hold <= ttl) then
    return invalid('hold_ms', ARGV[7], 'an integer in [0, ttl_ms]')
  end
end
local now = now_us()
local old = redis.call('HMGET', KEYS[1], 'seq', 'updated_at')
local seq = ARGV[4]
if old[1] then
  -- Compare seqs as decimal strings (they may exceed 2^53): longer is larger.
  local s = old[1]
  if s == seq then
    return 0
  end
  if #s > #seq or (#s == #seq and s > seq) then
    local at = num(old[2]) -- absent (stored by an older script): as old as the hash
    if not at or now - at < hold * 1000 then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], 'level', level, 'queue_size', ARGV[2], 'capacity', ARGV[3],
  'seq', seq, 'ts', ARGV[5], 'updated_at', int(now))
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
