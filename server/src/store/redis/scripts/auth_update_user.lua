-- Replaces a user's record, only while the user exists and still owns its username.
--
-- KEYS[1]  the user record, auth:{t}:user:<user id>
-- KEYS[2]  the username index of the record's username, auth:{t}:username:<sha256 hex>
-- ARGV[1]  the user id
-- ARGV[2]  the new record, JSON
--
-- Returns 1 replaced, 0 no such user, -1 the index does not point at this user (the caller
-- tried to change the username, which this script does not do).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
