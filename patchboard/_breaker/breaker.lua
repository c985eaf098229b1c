-- patchboard's circuit breaker: one atomic state decision per call.
--
-- The same rules as patchboard/_breaker/_machine.py, on the Redis server:
-- times are integer milliseconds, the state is one hash (KEYS[1]) and the
-- probes' leases a sorted set (KEYS[2]); a time window's buckets are a
-- hash (KEYS[3]: fields <second>c, <second>f, <second>s: calls, failures and
-- slow calls of that second). ARGV: operation, probe token, then
-- the breaker's configuration (see RedisStore), then an optional clock and
-- an optional write-back of the caller's open circuit (see below).
-- Replies {decision, state, failures, opened_at, retry_at, now, old state or
-- -1, forced, probes, rejected}; decision 0 admit, 1 probe, 2 reject, 3 none;
-- retry_at is the circuit's (when it lets a probe through), rejected the
-- retry time of a rejected call (in half-open, when the first lease ends),
-- slow the slow calls in the window. Operations 'slow_success' and
-- 'slow_failure' report a call that took slow_call_duration or longer.
local key, pkey, wkey = KEYS[1], KEYS[2], KEYS[3]
local op, token, rule = ARGV[1], ARGV[2], ARGV[3]
local threshold = tonumber(ARGV[4])
local rate_ppm = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local min_calls = tonumber(ARGV[7])
local reset_ms = tonumber(ARGV[8])
local factor = tonumber(ARGV[9])
local max_ms = tonumber(ARGV[10])
local max_probes = tonumber(ARGV[11])
local succ_needed = tonumber(ARGV[12])
local lease_ms = tonumber(ARGV[13])
local ttl_ms = tonumber(ARGV[14])
local timed = ARGV[15] == 'time'
local slow_ppm = tonumber(ARGV[16])

-- The server's clock, unless the caller passes one (patchboard's tests drive
-- this script and the in-process store with one virtual clock; '' for none).
local now = tonumber(ARGV[17])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local h = redis.call('HMGET', key, 's', 'f', 'w', 'oa', 'ra', 'rt', 'ps', 'fo', 'sl', 'n', 'wo', 'wn')
local s = h[1] or 'c'
local f = tonumber(h[2]) or 0
local w = h[3] or ''
local oa = tonumber(h[4]) or -1
local ra = tonumber(h[5]) or -1
local rt = tonumber(h[6]) or reset_ms
local ps = tonumber(h[7]) or 0
local fo = h[8] or ''
local sl = tonumber(h[9]) or 0   -- slow calls in the window
local n = tonumber(h[10]) or 0   -- calls in a time window (a count window's is #w)
local wo = tonumber(h[11]) or -1 -- a time window's oldest second with calls
local wn = tonumber(h[12]) or -1 -- and its newest
local decision = 3
local rejected = -1
local dirty = false

local function open_circuit(timeout)
  s = 'o'; oa = now; rt = timeout; ra = now + timeout; ps = 0
  redis.call('DEL', pkey)
  dirty = true
end
local function close_circuit()
  s = 'c'; f = 0; w = ''; oa = -1; ra = -1; rt = reset_ms; ps = 0; sl = 0; n = 0; wo = -1; wn = -1
  redis.call('DEL', pkey, wkey)
  dirty = true
end
-- The rate rule: slide one call into the window (failed: 0 or 1, slow: 0 or
-- 2), then compare after every call, a success included (the call that
-- completes min_calls may find the rate already crossed). A count window is
-- the string of the last calls' codes ('0'..'3'); a time window one bucket
-- per second in wkey, the seconds that left the window dropped on the way
-- (at most window_size of them: memory and work stay bounded).
local function rate_call(failed, slow)
  local calls
  if timed then
    local second = math.floor(now / 1000)
    local cutoff = second - window
    if wo >= 0 and wo <= cutoff then
      if cutoff - wo >= window then
        redis.call('DEL', wkey); n = 0; f = 0; sl = 0; wn = -1
      else
        for sec = wo, cutoff do
          local b = redis.call('HMGET', wkey, sec .. 'c', sec .. 'f', sec .. 's')
          if b[1] then
            n = n - tonumber(b[1]); f = f - (tonumber(b[2]) or 0); sl = sl - (tonumber(b[3]) or 0)
            redis.call('HDEL', wkey, sec .. 'c', sec .. 'f', sec .. 's')
          end
        end
      end
      wo = cutoff + 1
      if n == 0 then wo = -1; wn = -1 end
    end
    -- A clock that stepped back adds to the newest bucket (as in _machine.py).
    if second < wn then second = wn end
    wn = second
    if wo < 0 then wo = second end
    redis.call('HINCRBY', wkey, second .. 'c', 1)
    if failed == 1 then redis.call('HINCRBY', wkey, second .. 'f', 1) end
    if slow == 2 then redis.call('HINCRBY', wkey, second .. 's', 1) end
    n = n + 1
    calls = n
  else
    w = w .. tostring(failed + slow)
    if #w > window then
      local oldest = tonumber(string.sub(w, 1, 1))
      if oldest % 2 == 1 then f = f - 1 end
      if oldest >= 2 then sl = sl - 1 end
      w = string.sub(w, 2)
    end
    calls = #w
  end
  f = f + failed
  if slow == 2 then sl = sl + 1 end
  dirty = true
  if calls >= min_calls and (f * 1000000 >= rate_ppm * calls
      or (slow_ppm > 0 and sl * 1000000 >= slow_ppm * calls)) then
    open_circuit(reset_ms)
  end
end

-- Back from an outage: a circuit the caller's process opened on its own
-- meanwhile (ARGV[18]: the ms it has left, ARGV[19]: its reset timeout,
-- ARGV[20]: the failures that opened it, kept so that the state tells why).
-- The more pessimistic state wins: a closed circuit opens for what is left
-- of the caller's; an open or half-open one stays as it is (the caller adopts
-- it), and so does a forced one. Not reported as a transition: the caller's
-- process reported it when its own circuit opened.
local left = tonumber(ARGV[18])
if left ~= nil and s == 'c' and fo == '' then
  open_circuit(tonumber(ARGV[19]))
  ra = now + left
  f = math.max(f, tonumber(ARGV[20]) or 0)
end
local old = s

if op == 'acquire' then
  if s == 'c' then
    decision = 0
  else
    if s == 'o' then
      if fo == 'o' or now < ra then
        decision = 2; rejected = ra
      else
        s = 'h'; ps = 0; dirty = true
        redis.call('DEL', pkey)
      end
    end
    if s == 'h' then
      redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now)
      if redis.call('ZCARD', pkey) < max_probes then
        redis.call('ZADD', pkey, now + lease_ms, token)
        redis.call('PEXPIRE', pkey, lease_ms + ttl_ms)
        decision = 1
      else
        decision = 2
        local first = redis.call('ZRANGE', pkey, 0, 0, 'WITHSCORES')
        rejected = tonumber(first[2])
      end
    end
  end
elseif op == 'success' then
  if token ~= '' then
    if redis.call('ZREM', pkey, token) == 1 and s == 'h' then
      ps = ps + 1; dirty = true
      if ps >= succ_needed then close_circuit() end
    end
  elseif s == 'c' and fo == '' then
    if rule == 'count' then
      if f > 0 then f = 0; dirty = true end
    else
      rate_call(0, 0)
    end
  end
elseif op == 'failure' or op == 'slow_success' or op == 'slow_failure' then
  -- A slow probe is a failed one (as in _machine.py).
  if token ~= '' then
    if redis.call('ZREM', pkey, token) == 1 and s == 'h' then
      local grown = math.floor(rt * factor)
      if max_ms > 0 and grown > max_ms then grown = max_ms end
      open_circuit(grown)
    end
  elseif s == 'c' and fo == '' then
    if rule == 'count' then
      f = f + 1; dirty = true
      if f >= threshold then open_circuit(reset_ms) end
    else
      local failed, slow = 1, 2
      if op == 'failure' then slow = 0 end
      if op == 'slow_success' then failed = 0 end
      rate_call(failed, slow)
    end
  end
elseif op == 'release' then
  if token ~= '' then redis.call('ZREM', pkey, token) end
elseif op == 'force_open' then
  s = 'o'; fo = 'o'; oa = now; ra = -1; ps = 0; dirty = true
  redis.call('DEL', pkey)
elseif op == 'force_closed' then
  close_circuit(); fo = 'c'
elseif op == 'reset' then
  close_circuit(); fo = ''
end

if dirty then
  if s == 'c' and f == 0 and w == '' and fo == '' and n == 0 and sl == 0 then
    redis.call('DEL', key, wkey)
  else
    redis.call('HSET', key, 's', s, 'f', f, 'w', w, 'oa', oa, 'ra', ra, 'rt', rt,
               'ps', ps, 'fo', fo, 'sl', sl, 'n', n, 'wo', wo, 'wn', wn)
    if n > 0 then redis.call('PEXPIRE', wkey, window * 1000 + ttl_ms) end
    if fo ~= '' then
      redis.call('PERSIST', key)
    elseif ra > now then
      redis.call('PEXPIRE', key, ttl_ms + ra - now)
    else
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
end

local codes = {c = 0, o = 1, h = 2}
local transition = -1
if s ~= old then transition = codes[old] end
local forced = 0
if fo == 'o' then forced = 1 elseif fo == 'c' then forced = 2 end
local probes = 0
if s == 'h' then probes = redis.call('ZCARD', pkey) end
return {decision, codes[s], f, oa, ra, now, transition, forced, probes, rejected, sl}
