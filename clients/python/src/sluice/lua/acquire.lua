-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.

-- now_us returns the Redis server time in microseconds since the Unix epoch.
-- Replicas' clocks are never used, so skewed pods cannot cheat.
local function now_us()
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2] -- arithmetic reads the digit strings: no tonumber calls
end

-- int formats a whole number without exponent (tostring would print 1.7e+15).
local function int(x)
  return string.format('%.0f', x)
end

-- dec formats a fractional number with 15 significant digits.
local function dec(x)
  return string.format('%.15g', x)
end

-- finite reports whether x is a number that is neither NaN nor infinite.
-- (x - x is 0 for every finite x, NaN for infinities; math.huge is not
-- infinite in every interpreter: gopher-lua, which miniredis runs, makes it
-- the largest float.)
local function finite(x)
  return type(x) == 'number' and x - x == 0
end

-- num parses a number strictly: an optional minus sign, decimal digits with
-- an optional fraction and exponent (what dec and int write, and what any
-- client's decimal formatting writes). Hex, spaces, underscores, nan and
-- inf are nil, and so is a number too large to be finite; so is nil or
-- false (a missing field). s is a string, nil or false.
--
-- It runs on every number acquire reads, so it makes two calls into C (a
-- call into C costs about as much as a dozen lines of Lua here): one
-- pattern keeps out what tonumber would read besides decimals (hex needs
-- an x, inf and nan letters; spaces are not allowed), and tonumber refuses
-- what the pattern lets through that is not a number ("1.2.3", "1e").
local function num(s)
  if not s or not s:find('^%-?[%d.][%d.eE+-]*$') then
    return nil
  end
  local x = tonumber(s)
  if x == nil then -- an interpreter without exponents in tonumber (gopher-lua)
    local m, e = s:match('^(%-?%d*%.?%d*)[eE]([+-]?%d+)$')
    x = m and tonumber(m) and tonumber(m) * 10 ^ tonumber(e)
  end
  if x and x - x == 0 then -- finite
    return x
  end
  return nil
end

-- corrupt is the error for a stored field that is not a number any more:
-- the script refuses to decide on it (it never widens the budget).
local function corrupt(key, field, value)
  return redis.error_reply('CORRUPT ' .. key .. ' ' .. field .. '=' .. tostring(value) ..
    ' is not a finite decimal number: set it again (sluice register / sluice scale) or delete the key')
end

local function invalid(field, value, range)
  return redis.error_reply('INVALID_ARGUMENT ' .. field .. '=' .. tostring(value) .. ' must be ' .. range)
end

local function unknown_provider(key)
  return redis.error_reply('UNKNOWN_PROVIDER ' .. key)
end

-- load_config reads the provider config hash: nil when the provider is not
-- registered; nil and a CORRUPT error reply when a field is not a number.
local function load_config(key)
  local c = redis.call('HMGET', key, 'capacity', 'refill_rate', 'cooldown_sec',
    'breaker_threshold', 'breaker_timeout_sec', 'max_scale')
  if not c[1] then
    return nil
  end
  local names = {'capacity', 'refill_rate', 'cooldown_sec', 'breaker_threshold', 'breaker_timeout_sec', 'max_scale'}
  local defaults = {nil, nil, 0, 0, 0, 1}
  local v = {}
  for i, name in ipairs(names) do
    if c[i] then
      v[name] = num(c[i])
      if v[name] == nil then
        return nil, corrupt(key, name, c[i])
      end
    elseif defaults[i] == nil then
      return nil, corrupt(key, name, '(missing)')
    else
      v[name] = defaults[i]
    end
  end
  return v
end

-- registered_config is load_config for a script that needs the provider:
-- the config, or nil and the error reply (UNKNOWN_PROVIDER or CORRUPT).
local function registered_config(key)
  local cfg, bad = load_config(key)
  if bad then
    return nil, bad
  end
  if cfg == nil then
    return nil, unknown_provider(key)
  end
  return cfg
end

-- load_scale returns the stored scale factor (1 when the hash or the field
-- is absent), or nil and a CORRUPT error reply when it is not a number.
local function load_scale(key)
  local raw = redis.call('HGET', key, 'scale')
  if not raw then
    return 1
  end
  local s = num(raw)
  if s == nil then
    return nil, corrupt(key, 'scale', raw)
  end
  return s
end

-- settle returns the bucket's tokens at now: the stored tokens plus refill at
-- rate * scale per second since ts, capped at capacity. A missing bucket is
-- full; a corrupt one (tokens or ts not a number) is empty at now. The second result is true when ts is ahead of now (Redis's clock went
-- backwards, e.g. after a failover): nothing is refilled, and the caller
-- should store the bucket at now so refill resumes from there.
local function settle(bucket_key, now, capacity, rate, scale)
  local b = redis.call('HMGET', bucket_key, 'tokens', 'ts')
  if not b[1] and not b[2] then
    return capacity, false
  end
  local tokens, ts = num(b[1]), num(b[2])
  if tokens == nil or ts == nil then
    -- Corrupt: repaired empty, as of now (the caller stores it). Never full,
    -- which would widen the budget.
    return 0, true
  end
  local elapsed = now - ts
  if elapsed > 0 then
    tokens = tokens + elapsed * rate * scale / 1000000
  end
  if tokens > capacity then
    tokens = capacity
  end
  return tokens, elapsed < 0
end

local function store_bucket(bucket_key, tokens, now)
  redis.call('HSET', bucket_key, 'tokens', dec(tokens), 'ts', int(now))
end

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
--                     it (random): its units and permit places are the
--                     members <id>#1 .. <id>#n
--   KEYS[6..] one per rule, in the stored order: window P:{p}:rule:<r>,
--            keyed and spacing P:{p}:rule:<r>:<key> with the request's
--            key for that rule (1-256 bytes, no braces, spaces or
--            controls), concurrency P:{p}:permits:<r>
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
-- rule's limit). Checking removes only what no longer counts (units out
-- of their window, permits past their lease).

local rules_form = ARGV[2] == 'rules'
local lane_form = ARGV[2] == 'lane'
local args, rev, id = ARGV, ARGV[3] or '', ARGV[4] or ''
local lane = lane_form and ARGV[3] or rules_form and ARGV[5] or ''
if rules_form or lane_form then
  args = {ARGV[1]}
end
if #args > 1000 then
  return invalid('requests', #args, 'at most 1000 per call')
end
local ns = {}
for i = 1, #args do
  local n = num(args[i])
  if not (n ~= nil and n % 1 == 0 and n >= 1 and n <= 1e9) then
    return invalid('n', args[i], 'an integer in [1, 1000000000]')
  end
  ns[i] = n
end
local n = ns[1]
if n == nil then
  return invalid('n', '(missing)', 'an integer in [1, 1000000000]')
end
-- Hot path: read only the fields needed, and reply with the strings as
-- stored rather than formatting numbers again.
local cfg = redis.call('HMGET', KEYS[1], 'capacity', 'refill_rate', 'breaker_timeout_sec', 'rules_rev', 'lanes')
if not cfg[1] then
  return unknown_provider(KEYS[1])
end
local rules
local rule_wait, rule_take
if cfg[4] or rules_form then
  local text = cfg[4] and redis.call('HGET', KEYS[1], 'rules') or '[]'
  if not rules_form or rev ~= (cfg[4] or '') then
    return redis.error_reply('RULES_CHANGED ' .. (cfg[4] or '-') .. ' ' .. text)
  end
  -- The rules form's functions, made here: a script makes every function
  -- it defines on every call, so only the rules form pays for these.
  local function rules_functions()
    -- load_rules decodes the stored set. set_rules checked it whole when it
    -- wrote it; here it is only guarded, cheaply: a set that is not what
    -- set_rules writes (the hash edited by hand) is refused, never decided on.
    -- It returns the rules, or nil and the field and value that are wrong.
    local function load_rules(text)
      local ok, rs = pcall(cjson.decode, text)
      if not ok or type(rs) ~= 'table' then
        return nil, 'rules', text
      end
      for i, r in ipairs(rs) do
        local k = r.kind
        local span = r[k == 'concurrency' and 'lease_ms' or 'period_ms']
        if type(r.name) ~= 'string' or not (type(span) == 'number' and span >= 1) or not
          (k == 'spacing' or ((k == 'window' or k == 'keyed' or k == 'concurrency') and type(r.limit) == 'number' and r.limit >= 1)) then
          return nil, 'rules[' .. i .. ']', cjson.encode(r)
        end
      end
      return rs
    end

    -- check_request checks the rules form's id and KEYS against the rules:
    -- nil, or the error reply.
    local function check_request(rules, id, keys)
      local tag = keys[1]:sub(1, -7) -- '<prefix>:{<provider>}:' of '...:config'
      if #id < 1 or #id > 64 or not id:find('^[%w_.%-]+$') then
        return invalid('id', id == '' and '(none)' or id, '1 to 64 characters of [A-Za-z0-9_.-], unique to the request')
      end
      if #keys ~= 5 + #rules then
        return invalid('keys', #keys, (5 + #rules) .. ': the bucket\'s 5 and one per rule')
      end
      for i, r in ipairs(rules) do
        local k, want = keys[5 + i], tag .. 'rule:' .. r.name
        if r.kind == 'keyed' or r.kind == 'spacing' then
          local key = k:sub(1, #want + 1) == want .. ':' and k:sub(#want + 2) or ''
          if key == '' then
            return invalid('key.' .. r.name, '(none)', 'a request key: rule ' .. r.name .. ' is ' .. r.kind)
          end
          if #key > 256 or key:find('[%c%s{}]') then
            return invalid('key.' .. r.name, key, '1 to 256 bytes without braces, spaces or control characters')
          end
          want = k
        elseif r.kind == 'concurrency' then
          want = tag .. 'permits:' .. r.name
        end
        if k ~= want then
          return invalid('keys[' .. (5 + i) .. ']', k, want)
        end
      end
      return nil
    end

    -- rule_wait returns how long the request of cost n waits for rule r, whose
    -- state is key: 0 if r allows it now, -1 if it never will (n above r's
    -- limit); and the units r holds now. A scaled rule's limit is
    -- floor(limit × scale); a request above it but within the limit waits a
    -- period (or a lease), after which the scale may be higher. A unit counted
    -- at t is in a window until t + period (excluded); a permit holds until its
    -- expiry.
    local function rule_wait(r, key, now, n, scale)
      if r.kind == 'spacing' then
        local until_us = num(redis.call('GET', key))
        return (until_us and until_us > now) and math.ceil(until_us - now) or 0, 0
      end
      local span = r.kind == 'concurrency' and 0 or r.period_ms * 1000
      redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - span))
      local held = redis.call('ZCARD', key)
      if n > r.limit then
        return -1, held
      end
      local limit = r.scaled and math.floor(r.limit * scale) or r.limit
      if n > limit then -- passes only at a higher scale: look again in a period
        return math.max(1, span, (r.lease_ms or 0) * 1000), held
      end
      local over = held + n - limit
      if over <= 0 then
        return 0, held
      end
      local s = redis.call('ZRANGE', key, over - 1, over - 1, 'WITHSCORES')[2]
      return math.max(1, math.ceil(num(s) + span - now)), held
    end

    -- rule_take charges a granted request of cost n to rule r, which held
    -- units: n units <id>#1..n scored now (a window's), the spacing until now
    -- + period, or n places <id>#1..n of permit until now + lease. It returns
    -- the permit's expiry (0 for other kinds). A window's key expires a period
    -- after its newest unit, which this one is; a permits key lives as long as
    -- its longest lease (a renewed permit's may be longer than this one's).
    local function rule_take(r, key, now, n, id, held)
      if r.kind == 'spacing' then
        redis.call('SET', key, int(now + r.period_ms * 1000), 'PX', r.period_ms)
        return 0
      end
      local t = r.kind == 'concurrency' and now + r.lease_ms * 1000 or now
      local z, ts = {'ZADD', key}, int(t)
      for j = 1, n do
        z[2 * j + 1], z[2 * j + 2] = ts, id .. '#' .. j
      end
      redis.call(unpack(z))
      if r.kind ~= 'concurrency' then
        redis.call('PEXPIRE', key, r.period_ms)
        return 0
      end
      if held == 0 then
        redis.call('PEXPIRE', key, r.lease_ms + 1)
      else
        redis.call('PEXPIRE', key, r.lease_ms + 1, 'GT')
      end
      return t
    end

    return load_rules, check_request, rule_wait, rule_take
  end
  local load_rules, check_request, field, value
  load_rules, check_request, rule_wait, rule_take = rules_functions()
  rules, field, value = load_rules(text)
  if not rules then
    return redis.error_reply('CORRUPT ' .. KEYS[1] .. ' ' .. field .. '=' .. tostring(value) ..
      ' is not a rule as set_rules writes it: set the rules again (sluice register --rules) or HDEL the field rules')
  end
  local bad = check_request(rules, id, KEYS)
  if bad then
    return bad
  end
end
local capacity, rate = num(cfg[1]), num(cfg[2])
if not (capacity and rate) then
  return corrupt(KEYS[1], capacity and 'refill_rate' or 'capacity', capacity and cfg[2] or cfg[1])
end

local now = now_us()
local sh = redis.call('HMGET', KEYS[3], 'scale', 'level')
local scale_s = sh[1] or '1'
local scale = num(scale_s)
if scale == nil then
  return corrupt(KEYS[3], 'scale', scale_s)
end
local level = sh[2] or 'ok'
-- Usually there is neither breaker state nor a cooldown: one EXISTS for both.
local guarded = redis.call('EXISTS', KEYS[4], KEYS[5]) > 0
local br = {false, false, false}
if guarded then
  br = redis.call('HMGET', KEYS[4], 'state', 'opened_at', 'probe_until')
end
local state = br[1] or 'closed'

-- fill is the refill rate the first request not granted waits on: the
-- bucket's, or its lane's share.
local tokens, behind, fill, lanes
if cfg[5] then
  -- The lanes' code is made here: only a provider with lanes pays for it.
  -- set_lanes checked the set whole when it wrote it; here it is only
  -- guarded: a set edited by hand is refused, never decided on.
  local ok, ls = pcall(cjson.decode, cfg[5])
  ok = ok and type(ls) == 'table' and #ls > 0
  for _, l in ipairs(ok and ls or {}) do
    ok = ok and type(l) == 'table' and type(l.name) == 'string' and type(l.priority) == 'number' and
      type(l.weight) == 'number' and l.weight > 0 and type(l.burst) == 'number' and l.burst >= 0 and
      type(l.guarantee) == 'number' and l.guarantee >= 0 and type(l.floor) == 'number' and l.floor >= 0
  end
  if not ok then
    return redis.error_reply('CORRUPT ' .. KEYS[1] .. ' lanes=' .. cfg[5] ..
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
  give(extra, 0)
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
    store_bucket(KEYS[2], tokens, now)
  end
end

local function reply(allowed, retry, reason, tokens_s)
  local t = {allowed, tokens_s or dec(tokens), retry, scale_s, reason, level, cfg[1], cfg[2], state, now}
  if rules then
    t[11], t[12] = '', 0
  end
  return t
end

if n > (lanes and lanes.reach or capacity) then
  return reply(0, -1, 'exceeds_capacity')
end

local cd = guarded and redis.call('GET', KEYS[5])
if cd then
  local ok, c = pcall(cjson.decode, cd)
  local until_us = ok and type(c) == 'table' and tonumber(c.until_ms) and tonumber(c.until_ms) * 1000
  if until_us and until_us > now then
    return reply(0, math.ceil(until_us - now), 'cooldown')
  end
end

local probe = false
local timeout_us = guarded and (num(cfg[3]) or 0) * 1000000
if state == 'open' then
  local reopen = (num(br[2]) or 0) + timeout_us
  if reopen > now then
    return reply(0, math.ceil(reopen - now), 'circuit_open')
  end
  probe = true
elseif state == 'half_open' then
  local probe_until = num(br[3]) or 0
  if probe_until > now then
    return reply(0, math.ceil(probe_until - now), 'circuit_open')
  end
  probe = true
end

if fill <= 0 then -- scale 0, and no floor for this lane
  return reply(0, -1, 'paused')
end

-- commit writes the bucket after a grant (tokens already taken), opens
-- the probe if the grant is one, and replies.
local function commit(granted, retry, reason)
  local tokens_s = dec(tokens)
  if lanes then
    lanes.store(tokens, now)
  else
    redis.call('HSET', KEYS[2], 'tokens', tokens_s, 'ts', int(now))
  end
  if probe then
    state = 'half_open'
    redis.call('HSET', KEYS[4], 'state', state, 'probe_until', int(now + timeout_us))
  end
  return reply(granted, retry, reason, tokens_s)
end

if rules then
  local wait, rule = 0, ''
  if tokens < n then
    wait = math.ceil((n - tokens) * 1000000 / fill)
  end
  local held = {}
  for i, r in ipairs(rules) do
    local w
    w, held[i] = rule_wait(r, KEYS[5 + i], now, n, scale)
    if wait >= 0 and (w < 0 or w > wait) then
      wait, rule = w, r.name
    end
  end
  if wait ~= 0 then
    local t = reply(0, wait, rule == '' and 'rate_limited' or 'rule_limited')
    t[11] = rule
    return t
  end
  local expiry = 0
  for i, r in ipairs(rules) do
    expiry = math.max(expiry, rule_take(r, KEYS[5 + i], now, n, id, held[i]))
  end
  tokens = tokens - n
  local t = commit(1, 0, probe and 'probe' or 'ok')
  t[12] = expiry
  return t
end

if tokens < n then
  return reply(0, math.ceil((n - tokens) * 1000000 / fill), 'rate_limited')
end

-- Grant in order while the tokens last. A probe is one request alone.
local granted, last = 0, probe and 1 or #ns
while granted < last and ns[granted + 1] <= tokens do
  granted = granted + 1
  tokens = tokens - ns[granted]
end
local retry, reason = 0, 'ok'
local next_n = ns[granted + 1]
if probe then
  reason = 'probe'
elseif next_n and next_n > (lanes and lanes.reach or capacity) then
  retry, reason = -1, 'exceeds_capacity'
elseif next_n then
  retry, reason = math.ceil((next_n - tokens) * 1000000 / fill), 'rate_limited'
end
return commit(granted, retry, reason)
