-- Records how a proceeded login attempt ended: success clears counter and lock; a failure
-- with the counter at max_failures or more sets the lock (unless one is in force already).
--
-- KEYS[1]  the attempt counter, auth:{t}:fails:<subject>
-- KEYS[2]  the lock, auth:{t}:lock:<subject> (see auth_begin_attempt.lua)
-- ARGV[1]  "1" success, "0" failure
-- ARGV[2]  max_failures
-- ARGV[3]  lock_for_ms, or -1 to lock until an unlock
--
-- Returns 1 when this call set the lock, else 0.
-- The lock's end is read from the server's clock (TIME).
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 0
end
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < tonumber(ARGV[2]) or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local lock_ms = tonumber(ARGV[3])
if lock_ms < 0 then
  redis.call('SET', KEYS[2], 'admin')
  return 1
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', KEYS[2], now_ms + lock_ms, 'PX', lock_ms)
-- The count ends with the lock at the latest, so the next window starts fresh.
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > lock_ms then
  redis.call('PEXPIRE', KEYS[1], lock_ms)
end
return 1
