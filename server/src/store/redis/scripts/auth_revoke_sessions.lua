-- Deletes sessions of one user and drops them from the user's list. The caller publishes the
-- revocations to auth:revocations first (that stream is on another slot).
--
-- KEYS[1]       the user's session ids, auth:{t}:user-sessions:<user id>, a set
-- KEYS[2i]      session i, auth:{t}:session:<sid>
-- KEYS[2i + 1]  its used refresh hashes, auth:{t}:session-used:<sid>
-- ARGV[i]       the id of session i
--
-- Returns how many of the sessions existed (were alive).
local alive = 0
for i = 1, #ARGV do
  alive = alive + redis.call('DEL', KEYS[2 * i])
  redis.call('DEL', KEYS[2 * i + 1])
  redis.call('SREM', KEYS[1], ARGV[i])
end
return alive
