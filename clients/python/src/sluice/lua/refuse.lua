-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.















-- refuse.lua: move one entry of the write stream that a consumer refuses (a
-- repeated "data" field: a sink could see only one of its values) whole to
-- the stream's refused stream and acknowledge it, in one step, so it is
-- neither lost nor moved twice when two consumers refuse it at once.
--
-- KEYS[1]  write stream     <prefix>:stream:{<stream>}
-- KEYS[2]  refused stream   <prefix>:stream:{<stream>}:refused (same slot)
-- ARGV[1]  group            the consumer group (sluice: coordinators)
-- ARGV[2]  consumer         the consumer refusing it: the entry is moved only
--                           while it is pending on this consumer
-- ARGV[3]  id               the entry's ID
-- ARGV[4]  reason           why it is refused (sluice: field "data" repeated)
--
-- The refused entry holds every field and value of the original, in order,
-- repeats included, then refused_id, refused_reason and refused_by.
-- Reply: integer, 1 when the entry was moved and acknowledged (or only
-- acknowledged, if it was deleted meanwhile), 0 when it is not pending on
-- ARGV[2] any more (another consumer claimed it, or it was acknowledged):
-- nothing was done.
-- Errors: Redis's own (NOGROUP, a malformed ID).

if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then
  return 0
end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if #e == 1 then
  local f = e[1][2]
  f[#f + 1] = 'refused_id'
  f[#f + 1] = ARGV[3]
  f[#f + 1] = 'refused_reason'
  f[#f + 1] = ARGV[4]
  f[#f + 1] = 'refused_by'
  f[#f + 1] = ARGV[2]
  redis.call('XADD', KEYS[2], '*', unpack(f))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
