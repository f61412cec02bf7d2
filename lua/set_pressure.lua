-- set_pressure.lua: record the pressure level that applies to a provider, for
-- operators (redis-cli HGETALL <prefix>:{<provider>}:scale) and metrics. It
-- does not change the rate: the scale does (set_scale.lua).
--
-- KEYS[1]  config hash   <prefix>:{<provider>}:config
-- KEYS[2]  scale hash    <prefix>:{<provider>}:scale
-- ARGV[1]  level         ok | soft | hard
-- ARGV[2]  source        free text stored as "level_source"
--
-- Reply: string, the previous level.
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT level=<value> ...

if load_config(KEYS[1]) == nil then
  return unknown_provider(KEYS[1])
end
local level = ARGV[1]
if level ~= 'ok' and level ~= 'soft' and level ~= 'hard' then
  return invalid('level', level, 'one of ok, soft, hard')
end
local old = redis.call('HGET', KEYS[2], 'level') or 'ok'
if old ~= level then
  redis.call('HSET', KEYS[2], 'level', level, 'level_source', ARGV[2], 'level_updated_at', int(now_us()))
end
return old
