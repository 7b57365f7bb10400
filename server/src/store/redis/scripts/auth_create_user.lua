-- Creates a user unless the username is taken in the tenant: the check and both writes are
-- one atomic step, so of any number of concurrent creations of one username exactly one wins.
--
-- KEYS[1]  the username index, auth:{t}:username:<sha256 hex of username> -> user id
-- KEYS[2]  the user record, auth:{t}:user:<user id> -> JSON
--          (both carry the tenant hash tag: one slot)
-- ARGV[1]  the user id
-- ARGV[2]  the record, JSON
--
-- Returns 1 created, 0 username taken (nothing written), -1 the user id exists already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
