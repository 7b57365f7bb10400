-- Gives back what a batch took on one hash slot, when a limit on another slot denied the
-- batch (Redis Cluster only; on one node a batch is a single script and needs no refund).
--
-- KEYS[i]  a counter the batch took from (its TAT, integer µs since the Unix epoch)
-- ARGV[i]  the µs the batch added to KEYS[i] (T * cost)
--
-- Returns the number of counters adjusted.
-- Subtracting our own increment is exact whatever others added meanwhile (TAT increments
-- add up); when the TAT was clamped up to "now" on the way in, the result can only be later
-- than without the batch, so a refund never lets more through than the limit allows.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local adjusted = 0
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    tat = tat - tonumber(ARGV[i])
    if tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], tat, 'PX', math.max(1, math.ceil((tat - now) / 1000)))
    end
    adjusted = adjusted + 1
  end
end
return adjusted
