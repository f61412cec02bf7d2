-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.


-- int formats a whole number without exponent (tostring would print 1.7e+15).
local function int(x)
  return string.format('%.0f', x)
end

-- dec formats a number with 15 significant digits; a whole one (a full
-- bucket's tokens, say) as an integer, which is what %.15g writes for it
-- too, at a third of the cost.
local function dec(x)
  if x % 1 == 0 and x > -1e15 and x < 1e15 then
    return string.format('%d', x)
  end
  return string.format('%.15g', x)
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


-- corrupt is the error for a stored field that is not a number any more
-- (or, with hint, not what hint says): the script refuses to decide on it
-- (it never widens the budget).
local function corrupt(key, field, value, hint)
  return redis.error_reply('CORRUPT ' .. key .. ' ' .. field .. '=' .. tostring(value) .. (hint or
    ' is not a finite decimal number in its range: set it again (sluice register / sluice scale) or delete the key'))
end

local function invalid(field, value, range)
  return redis.error_reply('INVALID_ARGUMENT ' .. field .. '=' .. tostring(value) .. ' must be ' .. range)
end

local function unknown_provider(key)
  return redis.error_reply('UNKNOWN_PROVIDER ' .. key)
end






-- set_lanes.lua: replace a provider's lanes with a new set, checked whole:
-- a set with one bad lane changes nothing.
--
-- KEYS[1]  config hash   <prefix>:{<provider>}:config
-- KEYS[2]  bucket hash   <prefix>:{<provider>}:bucket
-- ARGV[1]  lanes         JSON array of at most 16 lanes ([] for none), each
--          {"name": 1-64 of [A-Za-z0-9_.-], unique,
--           "priority": integer in [0, 1000], higher served first,
--           "weight": number in (0, 1000000], default 1: share among equals,
--           "burst": integer in [0, capacity], default 0: the lane's bucket
--                    (0: a weight's share of what the lanes with one leave),
--           "guarantee": number in [0, refill_rate], default 0: tokens/s the
--                    lane gets before any priority (within the scaled rate),
--           "floor": number in [0, 1], default 0: the fraction of the base
--                    rate the lane keeps at any scale, 0 (pause) included}
--
-- Stored as `lanes` (canonical JSON, sorted by priority, highest first,
-- then as given), absent when there are none. A request with no lane is in
-- the last. The bursts must leave room: their sum at most the capacity, and
-- below it when a lane has none; the guarantees' sum at most refill_rate.
-- The lanes' tokens stay; a removed lane's go back to the total, which the
-- next decision hands to the lanes in force.
-- Reply: "updated" or "unchanged".
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT <field>=<value>
-- must be <range>, the field naming the lane (lanes.live.weight).

local c = redis.call('HMGET', KEYS[1], 'capacity', 'refill_rate', 'lanes')
if not c[1] then
  return unknown_provider(KEYS[1])
end
local capacity, rate = num(c[1]), num(c[2])
if not (capacity and rate) then
  return corrupt(KEYS[1], capacity and 'refill_rate' or 'capacity', capacity and c[2] or c[1])
end

local ok, ls = pcall(cjson.decode, ARGV[1])
if not ok or type(ls) ~= 'table' or (next(ls) ~= nil and ls[1] == nil) then
  return invalid('lanes', ARGV[1], 'a JSON array of lanes')
end
if #ls > 16 then
  return invalid('lanes', #ls .. ' lanes', 'at most 16 lanes')
end
local function number(x, lo, hi, whole)
  return type(x) == 'number' and x - x == 0 and x >= lo and x <= hi and (not whole or x % 1 == 0)
end
local seen, bursts, shared, guaranteed = {}, 0, false, 0
for i, l in ipairs(ls) do
  if type(l) ~= 'table' then
    return invalid('lanes[' .. i .. ']', tostring(l), 'an object')
  end
  local name = l.name
  if type(name) ~= 'string' or #name > 64 or not name:find('^[%w_.%-]+$') then
    return invalid('lanes[' .. i .. '].name', tostring(name), '1 to 64 characters of [A-Za-z0-9_.-]')
  end
  if seen[name] then
    return invalid('lanes.' .. name .. '.name', name, 'unique among the lanes')
  end
  seen[name] = true
  local f = 'lanes.' .. name .. '.'
  for k in pairs(l) do
    if k ~= 'name' and k ~= 'priority' and k ~= 'weight' and k ~= 'burst' and k ~= 'guarantee' and k ~= 'floor' then
      return invalid(f .. tostring(k), tostring(l[k]), 'absent: a lane has name, priority, weight, burst, guarantee, floor')
    end
  end
  if l.priority == nil then l.priority = 0 end
  if l.weight == nil then l.weight = 1 end
  if l.burst == nil then l.burst = 0 end
  if l.guarantee == nil then l.guarantee = 0 end
  if l.floor == nil then l.floor = 0 end
  if not number(l.priority, 0, 1000, true) then
    return invalid(f .. 'priority', tostring(l.priority), 'an integer in [0, 1000]')
  end
  if not (number(l.weight, 0, 1e6) and l.weight > 0) then
    return invalid(f .. 'weight', tostring(l.weight), 'a number in (0, 1000000]')
  end
  if not number(l.burst, 0, capacity, true) then
    return invalid(f .. 'burst', tostring(l.burst), 'an integer in [0, ' .. int(capacity) .. '] (the capacity)')
  end
  if not number(l.guarantee, 0, rate) then
    return invalid(f .. 'guarantee', tostring(l.guarantee), 'a number in [0, ' .. dec(rate) .. '] (the refill rate)')
  end
  if not number(l.floor, 0, 1) then
    return invalid(f .. 'floor', tostring(l.floor), 'a number in [0, 1]')
  end
  bursts, guaranteed = bursts + l.burst, guaranteed + l.guarantee
  shared = shared or l.burst == 0
  l.order = i
end
if bursts > capacity or (shared and bursts >= capacity) then
  return invalid('lanes.burst', int(bursts) .. ' in all', (shared and 'below ' or 'at most ') .. int(capacity) ..
    ' (the capacity' .. (shared and ', leaving room for the lanes with burst 0)' or ')'))
end
if guaranteed > rate then
  return invalid('lanes.guarantee', dec(guaranteed) .. ' in all', 'at most ' .. dec(rate) .. ' (the refill rate)')
end

table.sort(ls, function(a, b)
  if a.priority ~= b.priority then
    return a.priority > b.priority
  end
  return a.order < b.order
end)
-- Canonical JSON, fields in a fixed order (cjson's order is the table's).
local parts = {}
for i, l in ipairs(ls) do
  parts[i] = string.format('{"name":%s,"priority":%s,"weight":%s,"burst":%s,"guarantee":%s,"floor":%s}',
    cjson.encode(l.name), int(l.priority), dec(l.weight), int(l.burst), dec(l.guarantee), dec(l.floor))
end
local text = '[' .. table.concat(parts, ',') .. ']'
if #ls == 0 then
  text = nil
end
if text == c[3] or (text == nil and not c[3]) then
  return 'unchanged'
end

-- The removed lanes' fields go; their tokens stay in the total.
local okold, old = pcall(cjson.decode, c[3] or "[]")
if not okold or type(old) ~= "table" then
  old = {}
end
for _, l in ipairs(old) do
  if not seen[l.name] then
    redis.call('HDEL', KEYS[2], 'lane:' .. l.name)
  end
end
if text then
  redis.call('HSET', KEYS[1], 'lanes', text)
else
  redis.call('HDEL', KEYS[1], 'lanes')
end
return 'updated'
