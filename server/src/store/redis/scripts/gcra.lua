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
--             idle (the same as a TAT in the past). A key may appear more than once.
--
-- Returns { now_us, then per request: committed, then per limit: verdict, remaining,
--           reset_after_us, retry_after_us }
--   verdict: 1 allowed, 0 denied (retry_after_us says when the cost fits), 2 cost exceeds burst
--   committed: 1 when no enforced limit was denied and every allowed cost was taken, else 0
--              (nothing taken; allowed limits then report the state before the request).
--
-- A stored TAT further ahead than now + tau (left by an earlier policy of the key) is clamped
-- to now + tau and stored so, as in the memory store.
--
-- TIME is the server's clock, so replica clock skew is irrelevant; since Redis 5 scripts
-- replicate their effects, reading TIME before writing is safe. Every counter is read once
-- (MGET) before anything is decided and written once (SET) after everything is: the requests
-- run against a table in the script, and Redis runs the script atomically, hence
-- all-or-nothing under any concurrency. Reading and writing once per key rather than once per
-- request is what makes a batch cheap: redis.call is most of a decision's cost, and a hot key
-- shared by a whole batch costs two calls. Numbers stay below 2^53 (checked by the server when
-- it validates limits), so they are exact.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local floor, max, ceil = math.floor, math.max, math.ceil

-- key -> TAT as of the requests decided so far. MGET in chunks: unpack has a stack limit.
local tat_of = {}
local nkeys = #KEYS
for first = 1, nkeys, 1000 do
  local last = math.min(first + 999, nkeys)
  local stored = redis.call('MGET', unpack(KEYS, first, last))
  for i = first, last do
    tat_of[KEYS[i]] = tonumber(stored[i - first + 1]) or now
  end
end

local out = { now }
local len = 1 -- #out, tracked rather than recomputed
local k = 0 -- keys of earlier requests
local p = 2 -- ARGV index of the current request's n
-- Reused by every request rather than allocated per request: what a request took (to put back
-- if it does not commit) and what its allowed limits saw before taking.
local undo_key, undo_tat = {}, {}
local before_free, before_reset = {}, {}
-- Keys to write back (taken by a committed request, or clamped), each once, in first-change order.
local changed, is_changed, nchanged = {}, {}, 0
local function mark_changed(key)
  if not is_changed[key] then
    is_changed[key] = true
    nchanged = nchanged + 1
    changed[nchanged] = key
  end
end

for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[p])
  local head = len + 1
  local committed = 1
  local undo = 0
  for i = 1, n do
    local key = KEYS[k + i]
    local a = p + 4 * i
    local t = tonumber(ARGV[a - 3])
    local burst = tonumber(ARGV[a - 2])
    local cost = tonumber(ARGV[a - 1])
    local tau = t * burst
    -- A key named twice in one request sees its own pending update.
    local tat = tat_of[key]
    if tat < now then tat = now end
    -- A TAT beyond now + tau was pushed there by an earlier, stricter policy: clamped, no
    -- decision denies longer than this policy could. The clamp is stored whatever the request
    -- decides (unstored, the far TAT would be clamped again on every call and never run out).
    if tat > now + tau then
      tat = now + tau
      tat_of[key] = tat
      mark_changed(key)
    end
    local free = max(0, floor((tau - (tat - now)) / t))
    local base = head + 4 * (i - 1)
    if cost > burst then
      out[base + 1], out[base + 2], out[base + 3], out[base + 4] = 2, free, tat - now, 0
      if ARGV[a] == '1' then committed = 0 end
    else
      local new_tat = tat + t * cost
      local allow_at = new_tat - tau
      if allow_at > now then
        out[base + 1], out[base + 2], out[base + 3], out[base + 4] = 0, free, tat - now, allow_at - now
        if ARGV[a] == '1' then committed = 0 end
      else
        undo = undo + 1
        undo_key[undo], undo_tat[undo] = key, tat_of[key]
        tat_of[key] = new_tat
        out[base + 1], out[base + 2], out[base + 3], out[base + 4] =
          1, floor((tau - (new_tat - now)) / t), new_tat - now, 0
        before_free[i], before_reset[i] = free, tat - now
      end
    end
  end
  out[head] = committed
  if committed == 1 then
    for j = 1, undo do
      mark_changed(undo_key[j])
    end
  else
    -- Put back in reverse, so a key taken twice ends at its value before the request.
    for j = undo, 1, -1 do
      tat_of[undo_key[j]] = undo_tat[j]
    end
    for i = 1, n do
      local base = head + 4 * (i - 1)
      if out[base + 1] == 1 then
        out[base + 2], out[base + 3] = before_free[i], before_reset[i]
      end
    end
  end
  len = head + 4 * n
  k = k + n
  p = p + 1 + 4 * n
end

-- Each changed counter once, with its final TAT; it expires when it would be idle anyway.
for j = 1, nchanged do
  local key = changed[j]
  local tat = tat_of[key]
  redis.call('SET', key, tat, 'PX', max(1, ceil((tat - now) / 1000)))
end
return out
