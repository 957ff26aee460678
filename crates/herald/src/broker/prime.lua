-- Where a channel's shared history stands, read atomically with what it holds past a
-- node's copy (DESIGN §9: a node that starts following a channel, or follows it again
-- after an outage, catches up from here before its subscribers join).
-- KEYS[1] = meta hash, KEYS[2] = history stream
-- ARGV[1] = epoch to create if the channel has none, ARGV[2] = meta TTL (s),
-- ARGV[3] = the epoch the node holds ('' if none), ARGV[4] = the last offset it holds
-- Returns {last offset, epoch, entries}: the entries after ARGV[4] when the epochs
-- agree, else all of them.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local from = '-'
if epoch == ARGV[3] then
  from = (tonumber(ARGV[4]) + 1) .. '-1'
end
return {top, epoch, redis.call('XRANGE', KEYS[2], from, '+')}
