-- Counts a login attempt BEFORE its password is verified, atomically with the lock check, so
-- that no burst of parallel guesses over any number of replicas evaluates more than
-- max_failures passwords per lock period.
--
-- KEYS[1]  the attempt counter, auth:{t}:fails:<subject>; expires window_ms after its first
--          increment
-- KEYS[2]  the lock, auth:{t}:lock:<subject>: its end in ms since the Unix epoch (expiring
--          then), or "admin" (no expiry) when only an unlock ends it
-- ARGV[1]  max_failures (integer >= 0)
-- ARGV[2]  window_ms (integer >= 1)
-- ARGV[3]  lock_for_ms, or -1 when locks last until an unlock
--
-- Returns { gate, retry_after_ms }: gate 1 proceed (retry_after_ms 0), 0 locked with
-- retry_after_ms the time left, -1 when only an unlock helps.
-- Key TTLs run on the server's clock, so replica clock skew is irrelevant.
local lock = redis.call('GET', KEYS[2])
if lock then
  if lock == 'admin' then
    return { 0, -1 }
  end
  return { 0, math.max(1, redis.call('PTTL', KEYS[2])) }
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if n > tonumber(ARGV[1]) then
  -- The attempts in flight set the lock if they fail; this one waits as if they had.
  return { 0, tonumber(ARGV[3]) }
end
return { 1, 0 }
