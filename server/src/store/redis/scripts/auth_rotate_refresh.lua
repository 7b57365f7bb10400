-- Rotates a session's refresh secret, or detects the reuse of an earlier one, atomically: of
-- concurrent rotations presenting the same current secret exactly one succeeds; the others
-- are replays within the grace window, or reuses.
--
-- KEYS[1]  the session, auth:{t}:session:<sid>, a hash with fields rh (current refresh hash),
--          last (last use), idle (idle expiry), abs (absolute expiry), Unix seconds, and once
--          rotated ph (the hash rotated away last) and pt (when, Unix ms); the key expires at
--          min(idle, abs)
-- KEYS[2]  the hashes already rotated away, auth:{t}:session-used:<sid>, a set expiring with
--          the session
-- ARGV[1]  the presented refresh hash
-- ARGV[2]  the new refresh hash
-- ARGV[3]  the idle timeout, seconds
-- ARGV[4]  the grace window, ms (0: none): ph presented again less than this after pt is a
--          replay, not a reuse
--
-- Returns { "1", field, value, ... } (the updated hash) rotated; { "3", field, value, ... }
-- (the hash, unchanged) a replay within the grace window; { "2" } reuse: the session and its
-- used set are deleted (the caller publishes the revocation); { "0" } not found (absent,
-- expired, or a hash that never belonged to the session).
-- Now is the server's clock (TIME), so replica clock skew is irrelevant.
local time = redis.call('TIME')
local now = tonumber(time[1])
local now_ms = now * 1000 + math.floor(tonumber(time[2]) / 1000)
local current = redis.call('HGET', KEYS[1], 'rh')
if not current then
  return { '0' }
end
local abs = tonumber(redis.call('HGET', KEYS[1], 'abs'))
if abs <= now then
  return { '0' }
end
if current == ARGV[1] then
  local idle = math.min(now + tonumber(ARGV[3]), abs)
  redis.call('HSET', KEYS[1], 'rh', ARGV[2], 'last', now, 'idle', idle, 'ph', ARGV[1],
    'pt', now_ms)
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIREAT', KEYS[1], idle)
  redis.call('EXPIREAT', KEYS[2], idle)
  local out = redis.call('HGETALL', KEYS[1])
  table.insert(out, 1, '1')
  return out
end
local grace = tonumber(ARGV[4])
if grace > 0 and redis.call('HGET', KEYS[1], 'ph') == ARGV[1] then
  local pt = tonumber(redis.call('HGET', KEYS[1], 'pt'))
  if pt and now_ms < pt + grace then
    local out = redis.call('HGETALL', KEYS[1])
    table.insert(out, 1, '3')
    return out
  end
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return { '2' }
end
return { '0' }
