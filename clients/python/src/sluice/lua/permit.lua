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







-- permit.lua: release or renew a permit of a concurrency rule.
--
-- KEYS[1]  rules state    <prefix>:{<provider>}:rules (hash)
-- KEYS[2]  channel        <prefix>:{<provider>}:released
-- ARGV[1]  op             "release" | "renew"
-- ARGV[2]  permit         the permit's id, as given to acquire
-- ARGV[3]  cost           integer in [1, 10000]: the units it holds
-- ARGV[4]  lease_ms       renew: integer in [1, 86400000], the new lease from now
-- ARGV[5]  rule           the concurrency rule's name
--
-- The rule's state in KEYS[1] (acquire.lua): field <rule> = the places
-- held and the earliest lease end (a lower bound); field <rule>#<permit>
-- = its places and expiry while the permit is open; each packed '<I2I7'
-- (little-endian: 2 bytes, then 7 bytes of Redis µs), or the text "<a>
-- <b>" of the release before.
-- Reply: integer: release: the units released (0 when the lease had
-- already expired, or the permit was released before); renew: the new
-- expiry (Redis µs), or 0 when the permit no longer holds (its lease
-- expired and another caller may hold its place: the caller must stop).
-- A release that frees units publishes "released <rules key> <rule>" on
-- KEYS[2], so that waiters for a permit look again.

local op, id, cost, rule = ARGV[1], ARGV[2] or '', num(ARGV[3]), ARGV[5] or ''
if op ~= 'release' and op ~= 'renew' then
  return invalid('op', tostring(op), 'release or renew')
end
if #id < 1 or #id > 64 then
  return invalid('permit', id == '' and '(none)' or id, '1 to 64 bytes')
end
if not (cost and cost % 1 == 0 and cost >= 1 and cost <= 10000) then
  return invalid('cost', tostring(ARGV[3]), 'an integer in [1, 10000]')
end
if #rule < 1 or #rule > 64 then
  return invalid('rule', rule == '' and '(none)' or rule, '1 to 64 bytes: the concurrency rule\'s name')
end
local lease
if op == 'renew' then
  lease = num(ARGV[4])
  if not (lease and lease % 1 == 0 and lease >= 1 and lease <= 86400000) then
    return invalid('lease_ms', tostring(ARGV[4]), 'an integer in [1, 86400000]')
  end
end
-- two reads a packed '<I2I7' value (or the text of the release before);
-- pack2 packs one. Redis's struct library, or where there is none
-- (miniredis) the same bytes by hand.
local st = rawget(_G, 'struct')
local function two(v)
  if not v then
    return nil
  elseif #v ~= 9 then
    local a, b = v:match('^(%d+) (%d+)$')
    a, b = tonumber(a), tonumber(b)
    if a and a <= 65535 and b < 72057594037927936 then -- fits I2 and I7 (else corrupt: never cut down)
      return a, b
    end
    return nil
  elseif st then
    return st.unpack('<I2I7', v)
  end
  local b = 0
  for i = 9, 3, -1 do
    b = b * 256 + v:byte(i)
  end
  return v:byte(1) + 256 * v:byte(2), b
end
local function pack2(a, b)
  if st then
    return st.pack('<I2I7', a, b)
  end
  local out = {string.char(a % 256, (a - a % 256) / 256)}
  for i = 1, 7 do
    out[i + 1] = string.char(b % 256)
    b = (b - b % 256) / 256
  end
  return table.concat(out)
end
local now = now_us()
local field = rule .. '#' .. id
local v = redis.call('HMGET', KEYS[1], field, rule)
local places, expiry = two(v[1])
if not places then
  if v[1] then
    return redis.error_reply('CORRUPT ' .. KEYS[1] .. ' ' .. field .. '=' .. v[1] ..
      ' is not a permit as acquire writes it: HDEL it (its places are freed)')
  end
  return 0 -- released before, or counted out after its lease
end
if op == 'release' then
  local held, nxt = two(v[2])
  redis.call('HDEL', KEYS[1], field)
  if held or not v[2] then -- a corrupt state stays, for acquire to refuse (0 held would forget the others)
    held = math.max(0, (held or places) - places)
    redis.call('HSET', KEYS[1], rule, pack2(held, held > 0 and nxt or 0))
  end
  if expiry <= now then
    return 0 -- its lease had ended: its places were no longer counted as its
  end
  redis.call('PUBLISH', KEYS[2], 'released ' .. KEYS[1] .. ' ' .. rule)
  return places
end
-- A permit whose lease expired no longer holds, even if nobody removed it yet.
if expiry <= now then
  return 0
end
expiry = now + lease * 1000
local hset = {'HSET', KEYS[1], field, pack2(places, expiry)}
local held, nxt = two(v[2])
if held and nxt > expiry then -- a shorter lease: keep next a lower bound
  hset[5], hset[6] = rule, pack2(held, expiry)
end
redis.call(unpack(hset))
return expiry
