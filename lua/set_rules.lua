-- set_rules.lua: replace a provider's pacing rules (beside its bucket) with
-- a new set, checked whole: a set with one bad rule changes nothing.
--
-- KEYS[1]  config hash   <prefix>:{<provider>}:config
-- KEYS[2]  rules state   <prefix>:{<provider>}:rules (window and
--          concurrency rules' state, by rule name)
-- ARGV[1]  rules         JSON array of at most 16 rules ([] for none), each
--          {"name": 1-64 of [A-Za-z0-9_.-], not "bucket", unique,
--           "kind": "window" | "keyed" | "spacing" | "concurrency",
--           "limit": integer in [1, 10000] (window, keyed, concurrency),
--           "period_ms": integer in [1, 86400000] (window, keyed, spacing),
--           "lease_ms": integer in [1, 86400000] (concurrency),
--           "scaled": boolean, default false (not for spacing)}
--
-- Stored as `rules` (canonical JSON), `rules_spec` (the same rules as
-- acquire reads them, packed: rules_text) and `rules_rev`, all absent when
-- there are none (acquire's plain form reads rules_rev alone); revisions
-- come from `rules_seq`, which is never removed, so none is used twice.
-- Reply: array of 2: "updated" or "unchanged", and the revision (integer,
-- 0 before the first set), raised at every change: acquire refuses a
-- caller that names another rev (RULES_CHANGED), so every replica decides
-- on the set in force.
-- The state of a rule (its counted units, its permits) stays: a rule
-- replaced by one of the same name and kind goes on from what it counted.
-- A removed rule's (or one whose kind changed) fields of KEYS[2] are
-- deleted; a keyed or spacing rule's keys expire by themselves.
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT <field>=<value>
-- must be <range>, the field naming the rule (rules.<name>.limit).

-- check_rules decodes and checks a JSON array of rules. It returns the
-- rules, or nil and the field and value that are wrong and their range
-- (for invalid). Each rule: name (1-64 of [A-Za-z0-9_.-], not
-- "bucket", unique), kind, limit (an integer in [1, 10000] for window,
-- keyed and concurrency; absent for spacing), period_ms (an integer in [1,
-- 86400000] for window, keyed and spacing), lease_ms (the same range, for
-- concurrency), scaled (a boolean, default false; not for spacing).
local function check_rules(text)
  local ok, rs = pcall(cjson.decode, text)
  if not ok or type(rs) ~= 'table' or (next(rs) ~= nil and rs[1] == nil) then
    return nil, 'rules', text, 'a JSON array of rules'
  end
  if #rs > 16 then
    return nil, 'rules', #rs .. ' rules', 'at most 16 rules'
  end
  local seen, kinds = {}, {window = true, keyed = true, spacing = true, concurrency = true}
  local function whole(x, lo, hi) return type(x) == 'number' and x % 1 == 0 and x >= lo and x <= hi end
  for i, r in ipairs(rs) do
    if type(r) ~= 'table' then
      return nil, 'rules[' .. i .. ']', tostring(r), 'an object'
    end
    local name = r.name
    if type(name) ~= 'string' or #name > 64 or not name:find('^[%w_.%-]+$') or name == 'bucket' then
      return nil, 'rules[' .. i .. '].name', tostring(name), '1 to 64 characters of [A-Za-z0-9_.-], not "bucket"'
    end
    if seen[name] then
      return nil, 'rules.' .. name .. '.name', name, 'unique among the rules'
    end
    seen[name] = true
    local f = 'rules.' .. name .. '.'
    if not kinds[r.kind] then
      return nil, f .. 'kind', tostring(r.kind), 'one of window, keyed, spacing, concurrency'
    end
    local timed, counted = r.kind ~= 'concurrency', r.kind ~= 'spacing'
    if counted and not whole(r.limit, 1, 10000) then
      return nil, f .. 'limit', tostring(r.limit), 'an integer in [1, 10000]'
    elseif not counted and r.limit ~= nil and r.limit ~= 1 then
      return nil, f .. 'limit', tostring(r.limit), 'absent or 1 for a spacing rule'
    end
    if timed and not whole(r.period_ms, 1, 86400000) then
      return nil, f .. 'period_ms', tostring(r.period_ms), 'an integer in [1, 86400000]'
    end
    if not timed and not whole(r.lease_ms, 1, 86400000) then
      return nil, f .. 'lease_ms', tostring(r.lease_ms), 'an integer in [1, 86400000]'
    end
    if r.scaled == nil then
      r.scaled = false
    elseif type(r.scaled) ~= 'boolean' or (r.scaled and r.kind == 'spacing') then
      return nil, f .. 'scaled', tostring(r.scaled), 'true or false (false for a spacing rule)'
    end
  end
  return rs
end

-- rules_text writes checked rules in their canonical form (the same rules
-- are the same text), and the spec acquire reads: packed with Redis's
-- struct library (docs/lua.md: the count, the rules key, then per rule
-- name, kind 1-4, limit, span in ms, scaled 0/1 and a keyed or spacing
-- rule's key prefix), or where there is no struct library (miniredis) a
-- flat JSON array, five values a rule.
local rules_text
do
  local kinds = {window = 1, keyed = 2, spacing = 3, concurrency = 4}
  local st = rawget(_G, 'struct')
  function rules_text(rs)
    local out, spec, tag = {}, {}, KEYS[1]:sub(1, -7) -- '<prefix>:{<provider>}:' of '...:config'
    local packed = st and {st.pack('<Bs', #rs, tag .. 'rules')}
    for i, r in ipairs(rs) do
      local t = {'{"name":"' .. r.name .. '","kind":"' .. r.kind .. '"'}
      if r.kind ~= 'spacing' then t[#t + 1] = ',"limit":' .. int(r.limit) end
      if r.kind ~= 'concurrency' then t[#t + 1] = ',"period_ms":' .. int(r.period_ms) end
      if r.kind == 'concurrency' then t[#t + 1] = ',"lease_ms":' .. int(r.lease_ms) end
      t[#t + 1] = ',"scaled":' .. tostring(r.scaled) .. '}'
      out[i] = table.concat(t)
      local span, keyed = r.period_ms or r.lease_ms, r.kind == 'keyed' or r.kind == 'spacing'
      if packed then
        packed[i + 1] = st.pack('<sBI2I4Bs', r.name, kinds[r.kind], r.limit or 1, span,
          r.scaled and 1 or 0, keyed and tag .. 'rule:' .. r.name .. ':' or '')
      else
        spec[i] = '"' .. r.name .. '","' .. r.kind .. '",' .. int(r.limit or 1) .. ',' .. int(span) .. ',' .. tostring(r.scaled)
      end
    end
    return '[' .. table.concat(out, ',') .. ']', packed and table.concat(packed) or '[' .. table.concat(spec, ',') .. ']'
  end
end

if not redis.call('HGET', KEYS[1], 'capacity') then
  return unknown_provider(KEYS[1])
end
local rs, field, value, range = check_rules(ARGV[1] or '')
if not rs then
  return invalid(field, value, range)
end
local text, spec = rules_text(rs)
local old = redis.call('HMGET', KEYS[1], 'rules', 'rules_spec')
-- No rules is no fields at all (the packed spec of none is not '[]').
if (old[1] or '[]') == text and (text == '[]' and not old[2] or old[2] == spec) then
  return {'unchanged', tonumber(redis.call('HGET', KEYS[1], 'rules_seq')) or 0}
end
-- The state of the rules not kept by name and kind goes.
local kept = {}
for _, r in ipairs(rs) do
  kept[r.name] = r.kind
end
local ok, before = pcall(cjson.decode, old[1] or '[]')
local gone = {}
for _, r in ipairs(ok and type(before) == 'table' and before or {}) do
  if type(r) == 'table' and type(r.name) == 'string' and kept[r.name] ~= r.kind then
    gone[r.name] = true
  end
end
if next(gone) then
  local del, fields = {'HDEL', KEYS[2]}, redis.call('HKEYS', KEYS[2])
  for _, f in ipairs(fields) do
    if gone[f] or gone[f:match('^(.-)#') or ''] then
      del[#del + 1] = f
    end
  end
  if #del > 2 then
    redis.call(unpack(del))
  end
end
local rev = redis.call('HINCRBY', KEYS[1], 'rules_seq', 1)
if text == '[]' then
  redis.call('HDEL', KEYS[1], 'rules', 'rules_rev', 'rules_spec')
else
  redis.call('HSET', KEYS[1], 'rules', text, 'rules_spec', spec, 'rules_rev', rev)
end
return {'updated', rev}
