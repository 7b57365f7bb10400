-- Ends a session for a caller presenting the hash of its refresh secret (logout), checked as
-- auth_rotate_refresh.lua checks it, atomically: the current hash ends the session, an earlier
-- one (a reuse) ends it too, any other hash ends nothing. Hashes are compared with `==`: they
-- are SHA-256 digests of 256-bit secrets, so how long a comparison takes can tell at most how
-- much of a digest matched, which brings no one closer to a secret with that digest.
--
-- KEYS[1]  the session, auth:{t}:session:<sid>, a hash with fields rh (current refresh hash)
--          and abs (absolute expiry, Unix seconds)
-- KEYS[2]  the hashes already rotated away, auth:{t}:session-used:<sid>, a set
-- ARGV[1]  the presented refresh hash
--
-- Returns "1" ended, "2" ended as a reuse (both: the session and its used set are deleted; the
-- caller publishes the revocation, the feed being on another slot), "3" wrong secret (nothing
-- changed), "0" no live session. The user's session list keeps the id; stale ids are dropped
-- when the list is read. Now is the server's clock (TIME).
local now = tonumber(redis.call('TIME')[1])
local current = redis.call('HGET', KEYS[1], 'rh')
if not current then
  return '0'
end
local abs = tonumber(redis.call('HGET', KEYS[1], 'abs'))
if abs <= now then
  return '0'
end
if current == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return '1'
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return '2'
end
return '3'
