-- pressure.lua: store a write coordinator's latest pressure report, unless a
-- newer one (higher seq) is already stored. The hash expires ttl_ms after the
-- last report, so a coordinator that stops reporting disappears.
--
-- KEYS[1]  pressure hash   <prefix>:pressure:{<coordinator>}
-- ARGV[1]  level           ok | soft | hard
-- ARGV[2]  queue_size      integer in [0, capacity]
-- ARGV[3]  capacity        integer in [1, 1e9]
-- ARGV[4]  seq             integer >= 1 (as a decimal string), increasing per coordinator
-- ARGV[5]  ts              RFC 3339 time of the report (stored as given)
-- ARGV[6]  ttl_ms          integer in [1, 86400000]
--
-- Reply: integer 1 when stored, 0 when an equal or newer seq was already
-- there (the caller then publishes nothing).
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
-- Compare seqs as decimal strings (they may exceed 2^53): longer is larger.
local old = redis.call('HGET', KEYS[1], 'seq')
if old and (#old > #ARGV[4] or (#old == #ARGV[4] and old >= ARGV[4])) then
  return 0
end
redis.call('HSET', KEYS[1], 'level', level, 'queue_size', ARGV[2], 'capacity', ARGV[3],
  'seq', ARGV[4], 'ts', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
