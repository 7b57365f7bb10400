-- Stores a new session for a verified login and lists it under its user, in one step with the
-- check that the user still exists and still has the password hash that was verified: a login
-- that raced a deletion or a password change opens nothing.
--
-- KEYS[1]  the user record, auth:{t}:user:<user id>, JSON with a password_hash member
-- KEYS[2]  the session, auth:{t}:session:<sid>, a hash
-- KEYS[3]  the user's session ids, auth:{t}:user-sessions:<user id>, a set
-- ARGV[1]  the password hash the login verified
-- ARGV[2]  the session id
-- ARGV[3]  when the session ends unless refreshed: the earlier of idle and absolute expiry,
--          Unix seconds (the hash expires then)
-- ARGV[4]  the absolute expiry, Unix seconds (the set lives at least that long)
-- ARGV[5], ARGV[6], ...  field, value pairs of the hash
--
-- Returns 1 opened, 0 no such user, 2 the password hash changed, 3 the session id exists
-- already (nothing written in all but 1).
local user = redis.call('GET', KEYS[1])
if not user then
  return 0
end
if cjson.decode(user).password_hash ~= ARGV[1] then
  return 2
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 3
end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIREAT', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
local ttl = redis.call('TTL', KEYS[3])
local now = tonumber(redis.call('TIME')[1])
if ttl < 0 or now + ttl < tonumber(ARGV[4]) then
  redis.call('EXPIREAT', KEYS[3], ARGV[4])
end
return 1
