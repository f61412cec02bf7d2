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
-- #include pack.lua
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
