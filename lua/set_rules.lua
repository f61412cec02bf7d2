-- set_rules.lua: replace a provider's pacing rules (beside its bucket) with
-- a new set, checked whole: a set with one bad rule changes nothing.
--
-- KEYS[1]  config hash   <prefix>:{<provider>}:config
-- ARGV[1]  rules         JSON array of at most 16 rules ([] for none), each
--          {"name": 1-64 of [A-Za-z0-9_.-], not "bucket", unique,
--           "kind": "window" | "keyed" | "spacing" | "concurrency",
--           "limit": integer in [1, 10000] (window, keyed, concurrency),
--           "period_ms": integer in [1, 86400000] (window, keyed, spacing),
--           "lease_ms": integer in [1, 86400000] (concurrency),
--           "scaled": boolean, default false (not for spacing)}
--
-- Stored as `rules` (canonical JSON; absent when there are none) and
-- `rules_rev`, which stays when the rules are removed.
-- Reply: array of 2: "updated" or "unchanged", and rules_rev (integer, 0
-- before the first set), raised at every change: acquire refuses a caller that names another rev
-- (RULES_CHANGED), so every replica decides on the set in force.
-- The state of a rule (its counted units, its permits) stays: a rule
-- replaced by one of the same name and kind goes on from what it counted;
-- the state of a removed rule expires by itself.
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT <field>=<value>
-- must be <range>, the field naming the rule (rules.<name>.limit).

if not redis.call('HGET', KEYS[1], 'capacity') then
  return unknown_provider(KEYS[1])
end
local rs, field, value, range = check_rules(ARGV[1] or '')
if not rs then
  return invalid(field, value, range)
end
local text = rules_text(rs)
local old = redis.call('HMGET', KEYS[1], 'rules', 'rules_rev')
if (old[1] or '[]') == text then
  return {'unchanged', tonumber(old[2]) or 0}
end
if text == '[]' then
  redis.call('HDEL', KEYS[1], 'rules')
else
  redis.call('HSET', KEYS[1], 'rules', text)
end
return {'updated', redis.call('HINCRBY', KEYS[1], 'rules_rev', 1)}
