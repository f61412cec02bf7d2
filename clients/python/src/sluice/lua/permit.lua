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
-- st and two: the rules state's packing (pack.lua).
local st, two
-- pack.lua: how the rules state's numbers are packed (docs/lua.md, "Rules
-- form"), shared by acquire (its rules form only) and permit. It is not a
-- script: lua.Source puts it where a script has its include line (see
-- lua.go), inside a block that runs only when it is needed
-- (a script makes every function it defines on every call). It assigns
-- two locals the script declares:
--
-- st: Redis's struct library, or in an interpreter without it (miniredis's,
-- which the tests run) the formats the scripts use: <, B, I<n>
-- (little-endian, unsigned), s, and c0 in pack.
st = rawget(_G, 'struct')
if not st then
  st = {}
  local function each(fmt)
    return fmt:gmatch('([BIcs])(%d*)')
  end
  function st.pack(fmt, ...)
    local out, i = {}, 0
    for c, d in each(fmt) do
      i = i + 1
      local v = select(i, ...)
      if c == 's' then
        out[#out + 1] = v .. '\0'
      elseif c == 'c' then -- c0: the whole string
        out[#out + 1] = v
      else
        for _ = 1, c == 'B' and 1 or tonumber(d) do
          out[#out + 1] = string.char(v % 256)
          v = (v - v % 256) / 256
        end
      end
    end
    return table.concat(out)
  end
  function st.unpack(fmt, s, p)
    local out = {}
    p = p or 1
    for c, d in each(fmt) do
      if c == 's' then
        local e = s:find('\0', p, true)
        if not e then
          error('data string too short')
        end
        out[#out + 1], p = s:sub(p, e - 1), e + 1
      else
        local size, v = c == 'B' and 1 or tonumber(d), 0
        if p + size - 1 > #s then
          error('data string too short')
        end
        for j = p + size - 1, p, -1 do
          v = v * 256 + s:byte(j)
        end
        out[#out + 1], p = v, p + size
      end
    end
    out[#out + 1] = p
    return unpack(out)
  end
end
-- two reads a concurrency rule's state (held, next) or a permit (places,
-- expiry): packed '<I2I7' (9 bytes: 2 bytes, then 7 bytes of Redis µs),
-- or the text "<a> <b>" of the release before; nil when v is neither (or
-- nil or false: a missing field).
two = function(v)
  if not v then
    return nil
  elseif #v == 9 then
    return st.unpack('<I2I7', v)
  end
  local a, b = v:match('^(%d+) (%d+)$')
  if a and a + 0 <= 65535 and b + 0 < 72057594037927936 then -- fits I2 and I7 (else corrupt: never cut down)
    return a + 0, b + 0
  end
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
    redis.call('HSET', KEYS[1], rule, st.pack('<I2I7', held, held > 0 and nxt or 0))
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
local hset = {'HSET', KEYS[1], field, st.pack('<I2I7', places, expiry)}
local held, nxt = two(v[2])
if held and nxt > expiry then -- a shorter lease: keep next a lower bound
  hset[5], hset[6] = rule, st.pack('<I2I7', held, expiry)
end
redis.call(unpack(hset))
return expiry
