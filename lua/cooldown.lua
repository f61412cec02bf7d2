-- cooldown.lua: start or clear a provider's shared cooldown. While it lasts,
-- acquire.lua refuses every replica with reason "cooldown".
--
-- KEYS[1]  config hash    <prefix>:{<provider>}:config
-- KEYS[2]  cooldown key   <prefix>:{<provider>}:cooldown (string, JSON, with TTL)
-- ARGV[1]  op             set | clear
-- ARGV[2]  scope          free text: what tripped it (e.g. "pacing", "historical")
-- ARGV[3]  reason         free text
-- ARGV[4]  duration_ms    integer in [0, 86400000], or "" for the provider's cooldown_sec
-- ARGV[5]  channel        pub/sub channel told "cooldown cleared" on clear ("" = none)
--
-- set: the key holds {"scope":..,"reason":..,"until_ms":..,"set_at_ms":..} and
-- expires at until_ms. A cooldown is never shortened by a later, shorter set:
-- the one that ends last wins. A duration of 0 sets nothing.
-- Reply: array of 2: [1] until_ms (integer, 0 when none), [2] remaining_ms (integer).
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT op|duration_ms=<value> ...

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local op = ARGV[1]
if op ~= 'set' and op ~= 'clear' then
  return invalid('op', op, 'one of set, clear')
end
local now_ms = math.floor(now_us() / 1000)

if op == 'clear' then
  if redis.call('DEL', KEYS[2]) == 1 and ARGV[5] ~= '' then
    redis.call('PUBLISH', ARGV[5], 'cooldown cleared')
  end
  return {0, 0}
end

local d = cfg.cooldown_sec * 1000
if ARGV[4] ~= '' then
  d = num(ARGV[4])
  if not (d ~= nil and d == math.floor(d) and d >= 0 and d <= 86400000) then
    return invalid('duration_ms', ARGV[4], 'an integer in [0, 86400000]')
  end
end
d = math.floor(d)

local until_ms = now_ms + d
local cur = redis.call('GET', KEYS[2])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  local cur_until = ok and type(c) == 'table' and tonumber(c.until_ms)
  if cur_until and cur_until >= until_ms then
    return {cur_until, cur_until - now_ms}
  end
end
if d <= 0 then
  return {0, 0}
end
local value = '{"scope":' .. cjson.encode(ARGV[2]) .. ',"reason":' .. cjson.encode(ARGV[3]) ..
  ',"until_ms":' .. int(until_ms) .. ',"set_at_ms":' .. int(now_ms) .. '}'
redis.call('SET', KEYS[2], value, 'PX', d)
return {until_ms, d}
