-- pack.lua: how the rules state's numbers are packed (docs/lua.md, "Rules
-- form"), shared by acquire (its rules form only) and permit. It is not a
-- script: lua.Source puts it where a script has its include line (see
-- lua.go), inside a block that runs only when it is needed
-- (a script makes every function it defines on every call). It assigns
-- two locals the script declares:
--
-- st: Redis's struct library, or in an interpreter without it (miniredis's,
-- which the tests run) the formats the scripts use: <, B, I<n>
-- (little-endian, unsigned), s, and c0 in pack.
st = rawget(_G, 'struct')
if not st then
  st = {}
  local function each(fmt)
    return fmt:gmatch('([BIcs])(%d*)')
  end
  function st.pack(fmt, ...)
    local out, i = {}, 0
    for c, d in each(fmt) do
      i = i + 1
      local v = select(i, ...)
      if c == 's' then
        out[#out + 1] = v .. '\0'
      elseif c == 'c' then -- c0: the whole string
        out[#out + 1] = v
      else
        for _ = 1, c == 'B' and 1 or tonumber(d) do
          out[#out + 1] = string.char(v % 256)
          v = (v - v % 256) / 256
        end
      end
    end
    return table.concat(out)
  end
  function st.unpack(fmt, s, p)
    local out = {}
    p = p or 1
    for c, d in each(fmt) do
      if c == 's' then
        local e = s:find('\0', p, true)
        if not e then
          error('data string too short')
        end
        out[#out + 1], p = s:sub(p, e - 1), e + 1
      else
        local size, v = c == 'B' and 1 or tonumber(d), 0
        if p + size - 1 > #s then
          error('data string too short')
        end
        for j = p + size - 1, p, -1 do
          v = v * 256 + s:byte(j)
        end
        out[#out + 1], p = v, p + size
      end
    end
    out[#out + 1] = p
    return unpack(out)
  end
end
-- two reads a concurrency rule's state (held, next) or a permit (places,
-- expiry): packed '<I2I7' (9 bytes: 2 bytes, then 7 bytes of Redis µs),
-- or the text "<a> <b>" of the release before; nil when v is neither (or
-- nil or false: a missing field).
two = function(v)
  if not v then
    return nil
  elseif #v == 9 then
    return st.unpack('<I2I7', v)
  end
  local a, b = v:match('^(%d+) (%d+)$')
  if a and a + 0 <= 65535 and b + 0 < 72057594037927936 then -- fits I2 and I7 (else corrupt: never cut down)
    return a + 0, b + 0
  end
end
