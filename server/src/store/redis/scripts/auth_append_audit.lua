-- Appends an audit event to its tenant's stream and drops the events older than the
-- retention, measured on the server's clock (the stream ids are its ms). The stream expires a
-- retention after its last append, so a tenant named only by strangers leaves nothing behind.
--
-- KEYS[1]  the tenant's audit stream, audit:{t}; entries have one field, e = the event JSON
-- ARGV[1]  the event, JSON (without id: the stream id is the id)
-- ARGV[2]  the retention, ms
--
-- Returns the new entry's id ("<ms>-<seq>").
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
local ms = tonumber(string.match(id, '^(%d+)'))
local keep_from = ms - tonumber(ARGV[2])
if keep_from > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', keep_from)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return id
