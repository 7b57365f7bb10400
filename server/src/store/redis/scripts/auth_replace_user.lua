-- Replaces a user's record only while it is exactly the record the caller read (compare-and-
-- set): a write based on a read that another write has overtaken changes nothing, so no write
-- undoes another (a login's last-login stamp cannot bring back a password just changed).
--
-- KEYS[1]  the user record, auth:{t}:user:<user id>
-- KEYS[2]  the username index of the record's username, auth:{t}:username:<sha256 hex>
-- ARGV[1]  the user id
-- ARGV[2]  the record as the caller read it, JSON, byte for byte (its version)
-- ARGV[3]  the new record, JSON
--
-- Returns 1 replaced, 0 no such user, 2 the record changed since it was read (nothing written),
-- -1 the index does not point at this user (the caller tried to change the username, which
-- this script does not do).
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
if current ~= ARGV[2] then
  return 2
end
redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
return 1
