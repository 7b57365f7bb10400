-- Stores a new session and lists it under its user.
--
-- KEYS[1]  the session, auth:{t}:session:<sid>, a hash
-- KEYS[2]  the user's session ids, auth:{t}:user-sessions:<user id>, a set
-- ARGV[1]  the session id
-- ARGV[2]  when the session ends unless refreshed: the earlier of idle and absolute expiry,
--          Unix seconds (the hash expires then)
-- ARGV[3]  the absolute expiry, Unix seconds (the set lives at least that long)
-- ARGV[4], ARGV[5], ...  field, value pairs of the hash
--
-- Returns 1 created, 0 the session id exists already (nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
local ttl = redis.call('TTL', KEYS[2])
local now = tonumber(redis.call('TIME')[1])
if ttl < 0 or now + ttl < tonumber(ARGV[3]) then
  redis.call('EXPIREAT', KEYS[2], ARGV[3])
end
return 1
