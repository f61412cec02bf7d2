-- acquire.lua: take tokens from a provider's shared bucket for one request,
-- or for several requests of one process at once (coalesced), or say why not
-- and for how long. One call is the whole decision: config, cooldown,
-- breaker, scale and bucket are read and updated atomically, at Redis time.
--
-- KEYS[1]  config hash    <prefix>:{<provider>}:config
-- KEYS[2]  bucket hash    <prefix>:{<provider>}:bucket
-- KEYS[3]  scale hash     <prefix>:{<provider>}:scale
-- KEYS[4]  breaker hash   <prefix>:{<provider>}:breaker
-- KEYS[5]  cooldown key   <prefix>:{<provider>}:cooldown
-- ARGV[1]  n              integer in [1, 1e9]: tokens the request wants
-- ARGV[2..] more requests (optional, at most 1000 in all), each an integer
--          in [1, 1e9]: requests are granted in order while the tokens last,
--          and the first that is refused ends the batch
--
-- Reply: array of 10
--   [1] allowed         integer: how many requests were granted, in order
--                       (one request: 1 or 0)
--   [2] tokens          string: tokens left in the bucket after this decision
--   [3] retry_after_us  integer: for the first request not granted (0 when
--                       all were): -1 when no wait will do (paused, or n >
--                       capacity); else microseconds to wait
--   [4] scale           string: the scale factor in force
--   [5] reason          ok | probe | rate_limited | paused | cooldown |
--                       circuit_open | exceeds_capacity: of the first request
--                       not granted, or ok / probe when all were
--   [6] level           string: pressure level in the scale hash (ok/soft/hard)
--   [7] capacity        string
--   [8] refill_rate     string: the base rate (not scaled)
--   [9] breaker         closed | open | half_open (after this decision)
--   [10] now_us         integer: Redis time of the decision
--
-- Order of checks: n > capacity, cooldown, breaker, pause (scale 0: no grant,
-- not even from banked tokens), tokens. A grant while the breaker's timeout has
-- passed is the half-open probe (reason "probe"): it is the batch's first
-- request alone; the breaker becomes half_open
-- and refuses everyone else until the probe is reported (breaker.lua) or
-- breaker_timeout_sec passes again. After a refusal for exceeds_capacity or a
-- probe grant, the requests behind it are not decided (ask again); after any
-- other refusal they are refused for the same reason. A denial writes
-- nothing, except to move the bucket's ts back to now when Redis's clock went
-- backwards.
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT n=<value> ...
--
-- Rules form (a provider with pacing rules, set_rules.lua): one request,
--   ARGV[1]  n        integer in [1, 1e9]: its cost, which applies to the
--                     bucket and to every rule
--   ARGV[2]  "rules"
--   ARGV[3]  rev      the rules_rev the caller knows ("" for none)
--   ARGV[4]  id       the request's id, 1-64 of [A-Za-z0-9_.-], unique to
--                     it (random): its permit is the field <rule>#<id>
--   KEYS[6]  rules state hash P:{p}:rules: every window and concurrency
--            rule's state, one field per rule (and one per open permit)
--   KEYS[7..] one per keyed or spacing rule, in the stored order:
--            P:{p}:rule:<r>:<key> with the request's key for that rule
--            (1-256 bytes, no braces, spaces or controls)
-- Lane form (a provider with lanes, set_lanes.lua): one request,
--   ARGV[1]  n        integer in [1, 1e9]
--   ARGV[2]  "lane"
--   ARGV[3]  lane     the lane's name; the rules form names it in ARGV[5]
-- A provider with lanes keeps one bucket per lane beside the total
-- (bucket hash fields lane:<name>, whose sum is tokens); every decision
-- hands the refill since ts to the lanes: guarantees first, then by
-- priority (the stored order), by weight among equals, each lane up to its
-- burst, the rest to the next; a floor lane gets at least floor × rate
-- whatever the scale. A request takes from its lane's bucket, then from
-- lower priorities' without a guarantee; [2] tokens is what its lane can
-- take. A request with
-- no lane (any form) is in the provider's last lane; a lane named to a
-- provider without lanes is ignored (the whole bucket is its lane), so
-- clients may name lanes before the lanes are set.
--
-- A provider with rules refuses the plain form, and a rev other than the
-- one stored: RULES_CHANGED <rev> <rules JSON>, for the caller to learn the
-- set in force and ask again. The reply has two more fields:
--   [11] rule     the rule whose wait the refusal reports ("" for the
--                 bucket or a grant)
--   [12] permit   the permit's expiry, Redis µs (0 when no concurrency rule)
-- The request is granted only if the bucket and every rule allow it, and
-- then every one is charged; otherwise nothing is, and the wait is the
-- longest of the refusing ones' (-1 if one can never pass: n above a
-- rule's limit). Checking removes only what no longer counts (entries out
-- of their window, permits past their lease). The state's formats are in
-- docs/lua.md ("Rules form").

local rules_form = ARGV[2] == 'rules'
local lane_form = ARGV[2] == 'lane'
local rev, id = ARGV[3] or '', ARGV[4] or ''
local lane = lane_form and ARGV[3] or rules_form and ARGV[5] or ''
local requests = (rules_form or lane_form) and 1 or #ARGV -- ARGV[1..requests] are n
if requests > 1000 then
  return invalid('requests', requests, 'at most 1000 per call')
end
-- n: the first request's; ns: a batch's, as numbers (nil for one request:
-- a new table costs more than twenty lines of Lua). n is read strictly,
-- unless it is '1' (the usual: comparing Lua strings costs nothing).
local n, ns = nil, requests > 1 and {} or nil
for i = 1, requests do
  local x = ARGV[i] == '1' and 1 or num(ARGV[i])
  if not (x ~= nil and x % 1 == 0 and x >= 1 and x <= 1e9) then
    return invalid('n', ARGV[i], 'an integer in [1, 1000000000]')
  end
  if ns then
    ns[i] = x
  end
  n = n or x
end
if n == nil then
  return invalid('n', '(missing)', 'an integer in [1, 1000000000]')
end
-- Hot path: read only the fields needed, and reply with the strings as
-- stored rather than formatting numbers again.
local cfg, lanes_json
if rules_form then
  cfg = redis.call('HMGET', KEYS[1], 'capacity', 'refill_rate', 'breaker_timeout_sec', 'rules_rev', 'rules_spec', 'lanes')
  lanes_json = cfg[6]
else
  cfg = redis.call('HMGET', KEYS[1], 'capacity', 'refill_rate', 'breaker_timeout_sec', 'rules_rev', 'lanes')
  lanes_json = cfg[5]
end
if not cfg[1] then
  return unknown_provider(KEYS[1])
end
local spec -- the rules in force: true, count, the rules key, then name, kind, limit, span_ms, scaled, key prefix for each, and one more value
-- st and two pack and unpack the rules state's numbers (pack.lua, made
-- only in the rules form).
local st, two
if rules_form then
  -- #include pack.lua
end
local hmget -- the HMGET of KEYS[6] that reads the window and concurrency rules' fields
local now_s -- now as a decimal string (now_us)
if cfg[4] or rules_form then
  if not rules_form or rev ~= (cfg[4] or '') then
    local text = cfg[4] and redis.call('HGET', KEYS[1], 'rules') or '[]'
    return redis.error_reply('RULES_CHANGED ' .. (cfg[4] or '-') .. ' ' .. text)
  end
  if #id < 1 or #id > 64 then
    return invalid('id', id == '' and '(none)' or id, '1 to 64 bytes, unique to the request')
  end
  -- The set in force, as set_rules wrote it in rules_spec (docs/lua.md):
  -- packed by Redis's struct library, {count, the rules key, then per rule
  -- name, kind (1 window, 2 keyed, 3 spacing, 4 concurrency), limit, span
  -- (ms), scaled (0/1), the key prefix of a keyed or spacing rule}, read
  -- in one call (a JSON spec, written where there is no struct library or
  -- by an earlier release, is read into the same form). spec holds
  -- {true, count, the rules key, the six values of each rule, one more}:
  -- the packed form is unpacked by pcall straight into it (a spec cut
  -- short raises), so that no function is made for it (making a closure
  -- costs more than the parse). Only guarded here: a spec that is not what
  -- set_rules writes (the hash edited by hand) is refused, never decided
  -- on. In the same pass, the request's KEYS are checked against the rules.
  local text, ok = cfg[5], true
  local c = text and text:byte(1)
  if not cfg[4] then -- no rules
    spec = {true, 0, KEYS[1]:sub(1, -7) .. 'rules', 0}
  elseif c == 91 then -- '[': JSON, [name, kind, limit, span_ms, scaled, ...]
    ok, spec = pcall(function()
      local j, tag = cjson.decode(text), KEYS[1]:sub(1, -7)
      if #j % 5 ~= 0 or #j == 0 then -- not an array of whole rules
        error('')
      end
      local out = {true, #j / 5, tag .. 'rules'}
      for b = 1, #j, 5 do
        local kind = ({window = 1, keyed = 2, spacing = 3, concurrency = 4})[j[b + 1]] or 0
        if type(j[b]) ~= 'string' or type(j[b + 2]) ~= 'number' or type(j[b + 3]) ~= 'number' then
          error('')
        end
        out[#out + 1], out[#out + 2], out[#out + 3] = j[b], kind, j[b + 2]
        out[#out + 1], out[#out + 2] = j[b + 3], j[b + 4] == true and 1 or 0
        out[#out + 1] = (kind == 2 or kind == 3) and tag .. 'rule:' .. j[b] .. ':' or ''
      end
      out[#out + 1] = 0
      return out
    end)
  elseif c and c >= 1 and c <= 16 then
    spec = {pcall(st.unpack, '<Bs' .. string.rep('sBI2I4Bs', c), text)}
    ok = spec[1] and spec[#spec] == #text + 1
  else -- rules_rev without rules_spec, or a count set_rules never writes
    ok = false
  end
  local nk = 6
  if ok then
    hmget = {'HMGET', KEYS[6]}
    for b = 4, #spec - 1, 6 do
      local name, kind, limit, span, want = spec[b], spec[b + 1], spec[b + 2], spec[b + 3], spec[b + 5]
      if not (#name >= 1 and limit >= 1 and limit <= 10000 and span >= 1 and span <= 86400000) then
        ok = false
        break
      end
      if kind == 1 or kind == 4 then
        hmget[#hmget + 1] = name
      elseif kind == 2 or kind == 3 then
        nk = nk + 1
        local k = KEYS[nk] or ''
        if #want < 1 or k:find(want, 1, true) ~= 1 then
          return invalid('keys[' .. nk .. ']', k == '' and '(none)' or k, want .. '<key>')
        end
        if #k == #want then
          return invalid('key.' .. name, '(none)', 'a request key: rule ' .. name .. ' is ' .. (kind == 2 and 'keyed' or 'spacing'))
        end
        if #k - #want > 256 then
          return invalid('key.' .. name, k:sub(#want + 1), '1 to 256 bytes')
        end
      else
        ok = false
        break
      end
    end
  end
  if not ok then
    return redis.error_reply('CORRUPT ' .. KEYS[1] .. ' rules_spec=' .. tostring(text or '(missing)') ..
      ' is not a rule set as set_rules writes it: set the rules again (sluice register --rules) or HDEL the fields rules, rules_rev and rules_spec')
  end
  if #KEYS ~= nk or KEYS[6] ~= spec[3] then
    return invalid(#KEYS ~= nk and 'keys' or 'keys[6]', #KEYS ~= nk and #KEYS or KEYS[6],
      nk .. ": the bucket's 5, " .. spec[3] .. ', and one per keyed or spacing rule')
  end
end
-- Stored numbers are guarded (lib.lua): register and set_scale checked
-- them strictly when they wrote them; here each must be finite and in the
-- range they allow, or the call is refused (the budget never widens).
local capacity, rate = guard(cfg[1]), guard(cfg[2])
if not (capacity and capacity % 1 == 0 and capacity >= 1 and capacity <= 1e9) then
  return corrupt(KEYS[1], 'capacity', cfg[1])
end
if not (rate and rate > 0 and rate <= 1e9) then
  return corrupt(KEYS[1], 'refill_rate', cfg[2])
end

local now
now, now_s = now_us()
local sh = redis.call('HMGET', KEYS[3], 'scale', 'level')
local scale_s = sh[1] or '1'
-- The scale, which an operator may write by hand, is read strictly, unless
-- it is '1' (the usual, and an absent hash): comparing interned strings
-- costs nothing.
local scale = scale_s == '1' and 1 or num(scale_s)
if not (scale and scale >= 0 and scale <= 100) then
  return corrupt(KEYS[3], 'scale', scale_s)
end
local level = sh[2] or 'ok'
-- Usually there is neither breaker state nor a cooldown: one EXISTS for both.
local guarded = redis.call('EXISTS', KEYS[4], KEYS[5]) > 0
local br, state = nil, 'closed'
if guarded then
  br = redis.call('HMGET', KEYS[4], 'state', 'opened_at', 'probe_until')
  state = br[1] or 'closed'
end

-- fill is the refill rate the first request not granted waits on: the
-- bucket's, or its lane's share.
local tokens, behind, fill, lanes
if lanes_json then
  -- The lanes' code is made here: only a provider with lanes pays for it.
  -- set_lanes checked the set whole when it wrote it; here it is only
  -- guarded: a set edited by hand is refused, never decided on.
  -- (Comparisons, not type checks: comparing a missing field or a string
  -- with a number raises, which pcall turns into the refusal; a tenth of
  -- the cost of a type() call per field.)
  local ok, ls = pcall(cjson.decode, lanes_json)
  ok = ok and type(ls) == 'table' and #ls > 0 and pcall(function()
    for _, l in ipairs(ls) do
      if not (#l.name > 0 and l.priority >= 0 and l.weight > 0 and l.burst >= 0 and l.guarantee >= 0 and l.floor >= 0) then
        error('out of range')
      end
    end
  end)
  if not ok then
    return redis.error_reply('CORRUPT ' .. KEYS[1] .. ' lanes=' .. lanes_json ..
      ' is not a lane set as set_lanes writes it: set the lanes again (Limiter.SetLanes) or HDEL the field lanes')
  end
  local me = #ls -- no lane, or one the provider lacks with none named: the last
  if lane ~= '' then
    me = nil
    local names = {}
    for i, l in ipairs(ls) do
      if l.name == lane then
        me = i
      end
      names[i] = l.name
    end
    if not me then
      return invalid('lane', lane, 'one of the provider\'s lanes: ' .. table.concat(names, ', '))
    end
  end
  -- Each lane's burst: its own, or a weight's share of what the lanes with
  -- one leave; all scaled down together should they exceed the capacity
  -- (lowered by register after the lanes were set).
  local caps, left, w, sum = {}, capacity, 0, 0
  for _, l in ipairs(ls) do
    if l.burst > 0 then
      left = left - l.burst
    else
      w = w + l.weight
    end
  end
  for i, l in ipairs(ls) do
    caps[i] = l.burst > 0 and l.burst or math.max(0, left) * l.weight / w
    sum = sum + caps[i]
  end
  if sum > capacity then
    for i = 1, #caps do
      caps[i] = caps[i] * capacity / sum
    end
  end
  -- The lanes' tokens as stored, each at most its burst; tokens the total
  -- holds beyond them (lanes just set, a lane removed, the bucket settled
  -- by register or set_scale) are handed out like refill.
  local f = {'HMGET', KEYS[2], 'tokens', 'ts'}
  for i, l in ipairs(ls) do
    f[i + 4] = 'lane:' .. l.name
  end
  local b = redis.call(unpack(f))
  local t, have, extra, ts = {}, 0, 0, now
  for i = 1, #ls do
    t[i] = 0
  end
  if not b[1] and not b[2] then -- a new bucket is full
    extra = capacity
  else
    local total = num(b[1])
    ts = num(b[2])
    if total == nil or ts == nil then -- corrupt: empty as of now, never full
      total, ts, behind = 0, now, true
    end
    for i = 1, #ls do
      t[i] = math.min(num(b[i + 2]) or 0, caps[i]) -- a corrupt lane is empty
      have = have + t[i]
    end
    extra = math.max(0, math.min(total, capacity) - have)
    behind = behind or ts > now
  end
  -- give hands supply to the lanes in place, for elapsed seconds:
  -- guarantees first (pro rata when they exceed it), then by priority, by
  -- weight among equals, each lane up to its burst. It returns what it
  -- could not place and what each lane got.
  local function give(supply, elapsed)
    local got = {}
    for i = 1, #ls do
      got[i] = 0
    end
    local function put(i, x)
      x = math.max(0, math.min(x, caps[i] - t[i]))
      t[i], got[i] = t[i] + x, got[i] + x
      return x
    end
    local want = 0
    for _, l in ipairs(ls) do
      want = want + l.guarantee * elapsed
    end
    if want > 0 then
      local share = math.min(1, supply / want)
      for i, l in ipairs(ls) do
        supply = supply - put(i, l.guarantee * elapsed * share)
      end
    end
    local i = 1
    while i <= #ls and supply > 0 do
      local j = i
      while j < #ls and ls[j + 1].priority == ls[i].priority do
        j = j + 1
      end
      for _ = i, j do -- each round fills a lane or places all
        local open = 0
        for k = i, j do
          if t[k] < caps[k] then
            open = open + ls[k].weight
          end
        end
        if open == 0 or supply <= 0 then
          break
        end
        local s0 = supply
        for k = i, j do
          if t[k] < caps[k] then
            supply = supply - put(k, s0 * ls[k].weight / open)
          end
        end
      end
      i = j + 1
    end
    return supply, got
  end
  if extra > 0 then
    give(extra, 0)
  end
  local elapsed = math.max(0, now - ts) / 1000000
  local _, got = give(elapsed * rate * scale, elapsed)
  for i, l in ipairs(ls) do -- floors: at least floor × rate, whatever the scale
    if l.floor > 0 then
      t[i] = math.min(caps[i], t[i] + math.max(0, l.floor * rate * elapsed - got[i]))
    end
  end
  -- What the request's lane may take: its own, then lower priorities'
  -- (but a guaranteed lane's tokens are its own).
  local function lower(l)
    return l.priority < ls[me].priority and l.guarantee == 0
  end
  local avail, reach = t[me], caps[me]
  for i, l in ipairs(ls) do
    if lower(l) then
      avail, reach = avail + t[i], reach + caps[i]
    end
  end
  -- The rate the lane's wait is reckoned at: its weight's share of the
  -- scaled rate among its priority, or its guarantee or floor if more. A
  -- higher priority still filling may delay it; the caller asks again.
  local pw = 0
  for _, l in ipairs(ls) do
    if l.priority == ls[me].priority then
      pw = pw + l.weight
    end
  end
  local mine = ls[me]
  local lane_fill = math.max(rate * scale * mine.weight / pw, math.min(mine.guarantee, rate * scale), mine.floor * rate)
  lanes = {available = avail, reach = reach, behind = behind, fill = lane_fill}
  -- store writes the lanes after the request's lane took available - left:
  -- from its own bucket, then from the lowest priority up.
  function lanes.store(left, at)
    local take = avail - left
    local function from(i)
      local x = math.min(take, t[i])
      t[i], take = t[i] - x, take - x
    end
    from(me)
    for i = #ls, 1, -1 do
      if take > 0 and lower(ls[i]) then
        from(i)
      end
    end
    local h, total = {'HSET', KEYS[2], 'tokens', '', 'ts', int(at)}, 0
    for i, l in ipairs(ls) do
      total = total + t[i]
      h[#h + 1], h[#h + 2] = 'lane:' .. l.name, dec(t[i])
    end
    h[4] = dec(total)
    redis.call(unpack(h))
  end
  tokens, behind, fill = lanes.available, lanes.behind, lanes.fill
else
  tokens, behind = settle(KEYS[2], now, capacity, rate, scale)
  fill = rate * scale
end
if behind then
  if lanes then
    lanes.store(tokens, now)
  else
    redis.call('HSET', KEYS[2], 'tokens', dec(tokens), 'ts', now_s)
  end
end

-- The reply (see the top), the one table the decision makes: a refusal
-- fills in tokens, retry_after_us and reason ([11] too in the rules form),
-- the grant below the rest. (No helper function: making one, as a script
-- does for each on every call, costs more than these lines; the rules
-- form's table is made at its 12 fields: growing one costs more.)
local out
if spec then
  out = {0, false, 0, scale_s, 'ok', level, cfg[1], cfg[2], state, now, '', 0}
else
  out = {0, false, 0, scale_s, 'ok', level, cfg[1], cfg[2], state, now}
end

if n > (lanes and lanes.reach or capacity) then
  out[2], out[3], out[5] = dec(tokens), -1, 'exceeds_capacity'
  return out
end

local cd = guarded and redis.call('GET', KEYS[5])
if cd then
  local ok, c = pcall(cjson.decode, cd)
  local until_us = ok and type(c) == 'table' and tonumber(c.until_ms) and tonumber(c.until_ms) * 1000
  if until_us and until_us > now then
    out[2], out[3], out[5] = dec(tokens), math.ceil(until_us - now), 'cooldown'
    return out
  end
end

local probe = false
local timeout_us = guarded and (num(cfg[3]) or 0) * 1000000
if state == 'open' then
  local reopen = (num(br[2]) or 0) + timeout_us
  if reopen > now then
    out[2], out[3], out[5] = dec(tokens), math.ceil(reopen - now), 'circuit_open'
    return out
  end
  probe = true
elseif state == 'half_open' then
  local probe_until = num(br[3]) or 0
  if probe_until > now then
    out[2], out[3], out[5] = dec(tokens), math.ceil(probe_until - now), 'circuit_open'
    return out
  end
  probe = true
end

if fill <= 0 then -- scale 0, and no floor for this lane
  out[2], out[3], out[5] = dec(tokens), -1, 'paused'
  return out
end

if spec then
  -- The rules form's decision, in one pass over the rules: each rule's
  -- wait and, should every wait be 0, its state after the grant; then
  -- all of them written, or none (but what no longer counts). The state's
  -- formats (docs/lua.md):
  --
  -- A window's state (window rules: a field of KEYS[6]; keyed: a key) is
  -- packed (struct, little-endian): a byte 1, the units it holds (I2), how
  -- many entries (B), when a keyed rule's key expires (I6, ms; 0 for a
  -- window rule), then the entries oldest first, each t (I7, Redis µs) and
  -- c (I2): c units counted until t + period. While it has fewer than
  -- M entries each is one grant, exact; from M on, a grant in the same 1/M
  -- of the period as the newest entry joins it, moved later to now
  -- (counted longer, never shorter: never over-admits), so a state holds at
  -- most 2M + 1 entries whatever the limit (10 + 9 × 33 = 307 bytes). Every
  -- number is read and written by struct in one call, without the string
  -- of each (a text log cost twice as much). A text state of the release
  -- before ("<held> <entries> <newest t:c> ...") is read as one entry: all
  -- its units counted until its newest entry leaves.
  --
  -- A concurrency rule's state: field <r> of KEYS[6], packed '<I2I7':
  -- the places its permits hold and the earliest lease end among them (a
  -- lower bound: renewals do not lower it); and a field <r>#<id> per
  -- permit, '<I2I7': its places and expiry (Redis µs). (Text, "<a> <b>",
  -- of the release before, is read too.)
  --
  -- A spacing rule's key holds the Redis time of its grant (µs) and
  -- expires a period after it (to the ms above); it is taken with SET NX as
  -- soon as it is met if no rule before it refused (one command for a
  -- grant), deleted again if a later one refuses, and read otherwise: a
  -- refusal may cost more than a grant.
  local M = 16
  local bad_state = ' is not a rule state as acquire writes it: delete it (HDEL or DEL; the rule forgets what it counted)'
  local wait, rule = 0, ''
  if tokens < n then
    wait = math.ceil((n - tokens) * 1000000 / fill)
  end
  local hv = #hmget > 2 and redis.call(unpack(hmget)) or hmget
  local hset, sets, taken, fixed, expiry = {'HSET', KEYS[6]}, nil, nil, nil, 0
  -- the first spacing key taken, and the first keyed key's new state,
  -- its value and new expiry (the others in taken and sets: a table fewer
  -- each in the common case)
  local taken1, set_k, set_v, set_at
  local hi, ki = 0, 6
  for b = 4, #spec - 1, 6 do
    local name, kind, limit = spec[b], spec[b + 1], spec[b + 2]
    local span = spec[b + 3] * 1000
    local lim, w, s = limit, 0, nil
    if spec[b + 4] == 1 then
      lim = limit * scale
      lim = lim - lim % 1
    end
    if kind == 2 or kind == 3 then
      ki = ki + 1
      if kind == 2 then
        s = redis.call('GET', KEYS[ki])
      end
    else
      hi = hi + 1
      s = hv[hi]
    end
    if kind <= 2 then -- window, keyed
      -- held units in k entries, the oldest still counted at q, the newest
      -- tn:cn; xp: a keyed rule's key expires then (ms)
      local held, k, q, tn, cn, xp = 0, 0, 11, 0, 0, 0
      if s then
        local v, t, c, p
        if #s >= 19 then -- the header and the oldest entry
          v, held, k, xp, t, c, p = st.unpack('<BI2BI6I7I2', s)
        end
        if v ~= 1 then -- a text state of the release before?
          local h, tx = s:match('^(%d+) %d+ (%d+):')
          if h and h + 0 <= 65535 and tx + 0 < 72057594037927936 then -- fits I2 and I7 (else corrupt: never cut down)
            s = st.pack('<BI2BI6I7I2', 1, h, 1, 0, tx, h)
            v, held, k, xp, t, c, p = st.unpack('<BI2BI6I7I2', s)
          end
        end
        if v ~= 1 or #s ~= 10 + 9 * k or k < 1 then
          return corrupt(kind == 2 and KEYS[ki] or KEYS[6], kind == 2 and 'value' or name, s, bad_state)
        end
        local cut = now - span
        tn, cn = t, c
        if k > 1 then
          tn, cn = st.unpack('<I7I2', s, #s - 8)
        end
        if tn <= cut then -- the newest is out: all are
          held, k = 0, 0
        else -- entries out of the window go (not the newest)
          while t <= cut do
            held, k, q = held - c, k - 1, p
            t, c, p = st.unpack('<I7I2', s, q)
          end
        end
      end
      if n > limit then
        w = -1
      elseif n > lim then -- passes only at a higher scale: look again in a period
        w = span
      elseif held + n > lim then -- until the entry that frees enough leaves
        local over, t, c, p = held + n - lim, tn, 0, q
        while over > 0 and p < #s do
          t, c, p = st.unpack('<I7I2', s, p)
          over = over - c
        end
        w = t + span - now
      elseif wait == 0 then -- the state after the grant
        -- A keyed rule's key must live until its newest unit leaves
        -- (ceil((now + period)/1000) ms): when it would not, its expiry is
        -- set two periods ahead, else kept (SET KEEPTTL costs half as much).
        local at = false
        if kind == 2 then
          at = (now + span) / 1000
          if xp >= at then
            at = false
          else
            at = (now + 2 * span) / 1000
            if at % 1 > 0 then
              at = at - at % 1 + 1
            end
            xp = at
          end
        end
        local v
        if k == 0 then
          v = st.pack('<BI2BI6I7I2', 1, n, 1, xp, now, n)
        elseif k >= M and (tn - tn % (span / M)) == (now - now % (span / M)) then
          v = st.pack('<BI2BI6c0I7I2', 1, held + n, k, xp, s:sub(q, -10), now, cn + n)
        else
          v = st.pack('<BI2BI6c0I7I2', 1, held + n, k + 1, xp, s:sub(q), now, n)
        end
        if kind == 1 then
          hset[#hset + 1], hset[#hset + 2] = name, v
        elseif set_k then
          sets = sets or {}
          sets[#sets + 1], sets[#sets + 2], sets[#sets + 3] = KEYS[ki], v, at
        else
          set_k, set_v, set_at = KEYS[ki], v, at
        end
      end
    elseif kind == 4 then
      local held, nxt = 0, 0
      if s then
        held, nxt = two(s)
        if not held then
          return corrupt(KEYS[6], name, s, bad_state)
        end
      end
      local ended, live = held > 0 and nxt <= now, nil
      if ended or n <= lim and held + n > lim then
        -- The rule's permits whose lease has not ended, by expiry
        -- ({expiry, places} each), and their places; the others deleted.
        local all, pre, count, gone = redis.call('HGETALL', KEYS[6]), name .. '#', 0, {'HDEL', KEYS[6]}
        live = {}
        for i = 1, #all, 2 do
          local f = all[i]
          if f:find(pre, 1, true) == 1 then
            local c, e = two(all[i + 1])
            if not c then
              return corrupt(KEYS[6], f, all[i + 1], bad_state)
            end
            if e > now then
              live[#live + 1] = {e, c}
              count = count + c
            else
              gone[#gone + 1] = f
            end
          end
        end
        if #gone > 2 then
          redis.call(unpack(gone))
        end
        table.sort(live, function(x, y) return x[1] < y[1] end)
        if ended then -- a lease ended: the permits counted again
          held, nxt = count, live[1] and live[1][1] or 0
          fixed = fixed or {'HSET', KEYS[6]}
          fixed[#fixed + 1], fixed[#fixed + 2] = name, st.pack('<I2I7', held, nxt)
        end
      end
      if n > limit then
        w = -1
      elseif n > lim then
        w = span
      elseif held + n > lim then -- until enough leases end
        local over, t = held + n - lim, now + span
        for _, e in ipairs(live) do
          over = over - e[2]
          if over <= 0 then
            t = e[1]
            break
          end
        end
        w = t - now
      elseif wait == 0 then
        local exp = now + span
        if held == 0 or nxt > exp then
          nxt = exp
        end
        hset[#hset + 1], hset[#hset + 2] = name, st.pack('<I2I7', held + n, nxt)
        hset[#hset + 1], hset[#hset + 2] = name .. '#' .. id, st.pack('<I2I7', n, exp)
        if exp > expiry then
          expiry = exp
        end
      end
    else -- spacing: the key holds the grant's time and lives a period after
      local key, at, set = KEYS[ki], (now + span) / 1000, false
      if at % 1 > 0 then
        at = at - at % 1 + 1
      end
      at = string.format('%d', at)
      if wait == 0 then
        set = redis.call('SET', key, now_s, 'NX', 'PXAT', at)
      end
      if not set then
        local v = redis.call('GET', key)
        local u = num(v)
        if v and not u then
          return corrupt(key, 'value', v, bad_state)
        end
        if u and u + span > now then
          w = u + span - now
        elseif wait == 0 then
          set = redis.call('SET', key, now_s, 'PXAT', at)
        end
      end
      if set then
        if taken1 then
          taken = taken or {'DEL'}
          taken[#taken + 1] = key
        else
          taken1 = key
        end
      end
    end
    if w ~= 0 and wait >= 0 then
      if w > 0 and w % 1 > 0 then
        w = w - w % 1 + 1
      end
      if w < 0 or w > wait then
        wait, rule = w, name
      end
    end
  end
  if wait ~= 0 then
    if taken1 then -- a rule after a spacing rule refused: the spacing was free
      redis.call('DEL', taken1)
    end
    if taken then
      redis.call(unpack(taken))
    end
    if fixed then
      redis.call(unpack(fixed))
    end
    out[2], out[3], out[5], out[11] = dec(tokens), wait, rule == '' and 'rate_limited' or 'rule_limited', rule
    return out
  end
  if #hset > 2 then
    redis.call(unpack(hset))
  end
  -- The keyed rules' new states, each with its expiry if it moves.
  local k, v, at, i = set_k, set_v, set_at, 1
  while k do
    if at then
      redis.call('SET', k, v, 'PXAT', string.format('%d', at))
    else
      redis.call('SET', k, v, 'KEEPTTL')
    end
    if not sets then
      break
    end
    k, v, at, i = sets[i], sets[i + 1], sets[i + 2], i + 3
  end
  out[12] = expiry -- and granted below, as one request of the plain form
end

if tokens < n then
  out[2], out[3], out[5] = dec(tokens), math.ceil((n - tokens) * 1000000 / fill), 'rate_limited'
  return out
end

-- Grant in order while the tokens last. A probe is one request alone.
local granted, last, next_n = 0, probe and 1 or requests, n -- next_n: the first not granted
while granted < last and next_n <= tokens do
  granted, tokens = granted + 1, tokens - next_n
  next_n = ns and ns[granted + 1]
  if not next_n then
    break
  end
end
local retry, reason = 0, 'ok'
if probe then
  reason = 'probe'
elseif next_n and next_n > (lanes and lanes.reach or capacity) then
  retry, reason = -1, 'exceeds_capacity'
elseif next_n then
  retry, reason = math.ceil((next_n - tokens) * 1000000 / fill), 'rate_limited'
end
-- Write the bucket, open the probe if the grant is one, and reply.
local tokens_s = dec(tokens)
if lanes then
  lanes.store(tokens, now)
else
  redis.call('HSET', KEYS[2], 'tokens', tokens_s, 'ts', now_s)
end
if probe then
  out[9] = 'half_open'
  redis.call('HSET', KEYS[4], 'state', 'half_open', 'probe_until', int(now + timeout_us))
end
out[1], out[2], out[3], out[5] = granted, tokens_s, retry, reason
return out
