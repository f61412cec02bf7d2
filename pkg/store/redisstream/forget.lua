-- forget.lua: removes from a consumer group the consumers that have left:
-- those with no pending entry that have been idle for longer than ARGV[2]
-- milliseconds. The check and XGROUP DELCONSUMER run in one step, so a
-- consumer that reads or claims meanwhile is not removed and no pending
-- entry is ever lost with a removed consumer (DELCONSUMER drops its
-- pending list: here it is empty).
--
-- KEYS[1]  the write stream, <prefix>:stream:{<stream>}
-- ARGV[1]  the group
-- ARGV[2]  idle threshold in milliseconds (-1: any)
-- ARGV[3]… only these consumers (none given: every consumer of the group)
--
-- Returns the names of the consumers removed.
local only = nil
if #ARGV > 2 then
  only = {}
  for i = 3, #ARGV do
    only[ARGV[i]] = true
  end
end
local limit = tonumber(ARGV[2])
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local h = {}
  for i = 1, #c, 2 do
    h[c[i]] = c[i + 1]
  end
  if (only == nil or only[h.name]) and h.pending == 0 and h.idle > limit then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], h.name)
    removed[#removed + 1] = h.name
  end
end
return removed
