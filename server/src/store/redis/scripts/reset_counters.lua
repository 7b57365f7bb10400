-- Forgets the counters under one prefix, one SCAN step per call (the caller loops until the
-- cursor is back at "0"), so a large keyspace never blocks Redis for long.
--
-- KEYS[1]  the resource's counter (`rl:{tenant}:resource`); it routes the call to the node
--          holding the tenant's slot, where all of its counters live (the tenant is the tag)
-- ARGV[1]  the SCAN cursor ("0" on the first call)
-- ARGV[2]  the MATCH pattern: KEYS[1] with glob characters escaped, then ":*"
-- ARGV[3]  keys to look at per step (COUNT)
--
-- Returns { next cursor, counters deleted in this step }. The first step also deletes
-- KEYS[1] itself. SCAN may return a key twice; DEL of a gone key counts nothing.
local deleted = 0
if ARGV[1] == '0' then
  deleted = redis.call('DEL', KEYS[1])
end
local prefix = KEYS[1] .. ':'
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', tonumber(ARGV[3]))
for _, key in ipairs(step[2]) do
  -- MATCH is a glob; the prefix compare is exact.
  if string.sub(key, 1, #prefix) == prefix then
    deleted = deleted + redis.call('DEL', key)
  end
end
return { step[1], deleted }
