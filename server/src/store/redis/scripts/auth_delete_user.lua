-- Erases a user's record, its username index (only while it points at this user, so a
-- username taken over since is left alone) and the lockout state of the user's subject.
-- Sessions are revoked right after, by auth_revoke_sessions.lua: once the record is gone no
-- login can open another (auth_open_session.lua checks it).
--
-- KEYS[1]  the user record, auth:{t}:user:<user id>
-- KEYS[2]  the username index, auth:{t}:username:<sha256 hex>
-- KEYS[3]  the failure counter, auth:{t}:fails:<subject>
-- KEYS[4]  the lock, auth:{t}:lock:<subject>
-- ARGV[1]  the user id
--
-- Returns 1 when the record existed, else 0.
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[3], KEYS[4])
return redis.call('DEL', KEYS[1])
