-- permit.lua: release or renew a permit of a concurrency rule.
--
-- KEYS[1]  permits zset   <prefix>:{<provider>}:permits:<rule>
-- KEYS[2]  channel        <prefix>:{<provider>}:released
-- ARGV[1]  op             "release" | "renew"
-- ARGV[2]  permit         the permit's id, as given to acquire
-- ARGV[3]  cost           integer in [1, 10000]: the units it holds
-- ARGV[4]  lease_ms       renew: integer in [1, 86400000], the new lease from now
--
-- Reply: integer: release: the units released (0 when the lease had
-- already expired, or the permit was released before); renew: the new
-- expiry (Redis µs), or 0 when the permit no longer holds (its lease
-- expired and another caller may hold its place: the caller must stop).
-- A release that frees units publishes "released <rule key>" on KEYS[2],
-- so that waiters for a permit look again.

local op, id, cost = ARGV[1], ARGV[2] or '', num(ARGV[3])
if op ~= 'release' and op ~= 'renew' then
  return invalid('op', tostring(op), 'release or renew')
end
if #id < 1 or #id > 64 or not id:find('^[%w_.%-]+$') then
  return invalid('permit', id, '1 to 64 characters of [A-Za-z0-9_.-]')
end
if not (cost and cost % 1 == 0 and cost >= 1 and cost <= 10000) then
  return invalid('cost', tostring(ARGV[3]), 'an integer in [1, 10000]')
end
local now = now_us()
if op == 'release' then
  local args = {'ZREM', KEYS[1]}
  for j = 1, cost do args[#args + 1] = id .. '#' .. j end
  local n = redis.call(unpack(args))
  if n > 0 then
    redis.call('PUBLISH', KEYS[2], 'released ' .. KEYS[1])
  end
  return n
end
local lease = num(ARGV[4])
if not (lease and lease % 1 == 0 and lease >= 1 and lease <= 86400000) then
  return invalid('lease_ms', tostring(ARGV[4]), 'an integer in [1, 86400000]')
end
-- A permit whose lease expired no longer holds, even if nobody removed it yet.
local s = num(redis.call('ZSCORE', KEYS[1], id .. '#1'))
if not s or s <= now then
  return 0
end
local expiry = now + lease * 1000
local args = {'ZADD', KEYS[1], 'XX'}
for j = 1, cost do
  args[#args + 1] = int(expiry)
  args[#args + 1] = id .. '#' .. j
end
redis.call(unpack(args))
if redis.call('PTTL', KEYS[1]) < lease + 1 then
  redis.call('PEXPIRE', KEYS[1], lease + 1)
end
return expiry
