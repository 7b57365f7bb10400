-- All-or-nothing GCRA decisions for one or more requests, each over one or more limits whose
-- keys share a hash slot. The same steps as server/src/ratelimit/gcra.rs (which the memory
-- store runs). Requests are decided one after another, each seeing what the previous ones
-- took: one call deciding several queued requests is the same as one call per request, with
-- one round trip and one script start instead of many.
--
-- ARGV[1]     R, the number of requests
-- then, per request in order:
--   ARGV[p]       n, its number of limits
--   ARGV[p+4i-3]  emission interval T of limit i in µs (integer >= 1)
--   ARGV[p+4i-2]  burst of limit i (integer >= 1); the tolerance is T * burst
--   ARGV[p+4i-1]  cost of limit i (integer >= 1)
--   ARGV[p+4i]    "1" when limit i is enforced; "0" in shadow mode, where a denial vetoes nothing
-- KEYS        the counters of request 1's limits, then of request 2's, ...: each holds its
--             theoretical arrival time (TAT), integer µs since the Unix epoch. Absent means
--             idle (the same as a TAT in the past).
--
-- Returns { now_us, then per request: committed, then per limit: verdict, remaining,
--           reset_after_us, retry_after_us }
--   verdict: 1 allowed, 0 denied (retry_after_us says when the cost fits), 2 cost exceeds burst
--   committed: 1 when no enforced limit was denied and every allowed cost was taken, else 0
--              (nothing taken; allowed limits then report the state before the request).
--
-- TIME is the server's clock, so replica clock skew is irrelevant; since Redis 5 scripts
-- replicate their effects, reading TIME before writing is safe. Within a request all reads come
-- before any write, and Redis runs the script atomically, hence all-or-nothing under any
-- concurrency. Numbers stay below 2^53 (checked by the server when it validates limits), so
-- they are exact.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local out = { now }
local k = 0 -- keys of earlier requests
local p = 2 -- ARGV index of the current request's n

local function decide(n)
  local head = #out + 1
  out[head] = 1
  local pending = {}
  local new_tats = {}
  local untaken = {}
  local committed = 1
  for i = 1, n do
    local key = KEYS[k + i]
    local t = tonumber(ARGV[p + 4 * i - 3])
    local burst = tonumber(ARGV[p + 4 * i - 2])
    local cost = tonumber(ARGV[p + 4 * i - 1])
    local enforced = ARGV[p + 4 * i] == '1'
    local tau = t * burst
    -- A key named twice in one request sees its own pending update.
    local tat = pending[key] or tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local free = math.max(0, math.floor((tau - (tat - now)) / t))
    local base = head + 4 * (i - 1)
    if cost > burst then
      out[base + 1], out[base + 2], out[base + 3], out[base + 4] = 2, free, tat - now, 0
      if enforced then committed = 0 end
    else
      local new_tat = tat + t * cost
      local allow_at = new_tat - tau
      if allow_at > now then
        out[base + 1], out[base + 2], out[base + 3], out[base + 4] = 0, free, tat - now, allow_at - now
        if enforced then committed = 0 end
      else
        pending[key] = new_tat
        new_tats[i] = new_tat
        out[base + 1], out[base + 2], out[base + 3], out[base + 4] =
          1, math.floor((tau - (new_tat - now)) / t), new_tat - now, 0
        -- Kept in case the request is not committed: the state before it.
        untaken[i] = { free, tat - now }
      end
    end
  end
  out[head] = committed
  for i = 1, n do
    local new_tat = new_tats[i]
    if new_tat then
      if committed == 1 then
        redis.call('SET', KEYS[k + i], new_tat, 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
      else
        local before = untaken[i]
        out[head + 4 * (i - 1) + 2], out[head + 4 * (i - 1) + 3] = before[1], before[2]
      end
    end
  end
end

for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[p])
  decide(n)
  k = k + n
  p = p + 1 + 4 * n
end
return out
