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
