-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.





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







-- lease.lua: the controller's lease, one holder at a time: acquire, renew or
-- release it. Held only by the id stored in the key, until its TTL runs out.
--
-- KEYS[1]  lease string with TTL   <prefix>:controller:lease   value = holder id
-- ARGV[1]  op        acquire | renew | release
-- ARGV[2]  holder    holder id (non-empty)
-- ARGV[3]  ttl_ms    integer in [1, 3600000] (acquire and renew)
--
-- acquire takes the lease when nobody holds it (or renews it when the holder
-- already does: a restart under the same id); renew extends it only for its
-- holder; release deletes it only for its holder.
-- Reply: integer, 1 when the caller holds (acquire, renew) or released the
-- lease, 0 when another holder has it (or, for renew and release, nobody).
-- Errors: INVALID_ARGUMENT op|holder|ttl_ms=<value> ...

local op, id, ttl = ARGV[1], ARGV[2], num(ARGV[3])
if op ~= 'acquire' and op ~= 'renew' and op ~= 'release' then
  return invalid('op', op, 'one of acquire, renew, release')
end
if id == nil or id == '' then
  return invalid('holder', '', 'a non-empty id')
end
local holder = redis.call('GET', KEYS[1])
if op == 'release' then
  if holder == id then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if ttl == nil or ttl < 1 or ttl > 3600000 or ttl ~= math.floor(ttl) then
  return invalid('ttl_ms', ARGV[3], 'an integer in [1, 3600000]')
end
if holder == id or (op == 'acquire' and not holder) then
  redis.call('SET', KEYS[1], id, 'PX', ttl)
  return 1
end
return 0
