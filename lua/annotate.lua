-- annotate.lua: record, beside a provider's scale, something that does not
-- change the rate: the pressure level that applies to it (for operators and
-- metrics), or the scale a feedback handler in shadow mode would set.
--
-- KEYS[1]  config hash   <prefix>:{<provider>}:config
-- KEYS[2]  scale hash    <prefix>:{<provider>}:scale
-- ARGV[1]  kind          level | shadow
-- ARGV[2]  value         level: ok | soft | hard; shadow: a finite number in [0, max_scale]
-- ARGV[3]  source        free text: who reported it
--
-- level writes level, level_source, level_updated_at (µs) when the level changes;
-- shadow writes shadow_scale, shadow_source, shadow_updated_at (µs) when it changes.
-- Reply: string, the previous value ("" when none).
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT kind|level|scale=<value> ...

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local kind, value = ARGV[1], ARGV[2]
local field
if kind == 'level' then
  if value ~= 'ok' and value ~= 'soft' and value ~= 'hard' then
    return invalid('level', value, 'one of ok, soft, hard')
  end
  field = 'level'
elseif kind == 'shadow' then
  local s = num(value)
  if not (finite(s) and s >= 0 and s <= cfg.max_scale) then
    return invalid('scale', value, 'a finite number in [0, ' .. dec(cfg.max_scale) .. '] (max_scale)')
  end
  value = dec(s)
  field = 'shadow_scale'
else
  return invalid('kind', kind, 'one of level, shadow')
end
local prefix = (kind == 'level') and 'level' or 'shadow'
local old = redis.call('HGET', KEYS[2], field) or ''
if old ~= value then
  redis.call('HSET', KEYS[2], field, value, prefix .. '_source', ARGV[3], prefix .. '_updated_at', int(now_us()))
end
return old
