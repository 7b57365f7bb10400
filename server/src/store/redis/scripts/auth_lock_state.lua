-- Reads a subject's lockout state in one consistent snapshot.
--
-- KEYS[1]  the attempt counter, auth:{t}:fails:<subject>
-- KEYS[2]  the lock, auth:{t}:lock:<subject> (see auth_begin_attempt.lua)
--
-- Returns { failures, locked (1/0), locked_until_ms or -1 (not locked, or until an unlock) }.
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local lock = redis.call('GET', KEYS[2])
if not lock then
  return { n, 0, -1 }
end
if lock == 'admin' then
  return { n, 1, -1 }
end
return { n, 1, tonumber(lock) }
