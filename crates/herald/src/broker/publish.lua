-- One publication on a channel with history (DESIGN §9), atomically: the channel's next
-- offset (its epoch created on first use), the envelope appended to the capped stream,
-- both keys' lifetimes refreshed, and the envelope published with its position in front.
-- KEYS[1] = meta hash, KEYS[2] = history stream
-- ARGV[1] = bus channel, ARGV[2] = envelope body (JSON), ARGV[3] = history size,
-- ARGV[4] = history TTL (s), ARGV[5] = epoch to use if the channel has none,
-- ARGV[6] = meta TTL (s)
-- With an idempotency key (broker/idempotency.rs): KEYS[3] = its key, ARGV[7] = how long
-- it is kept (s), ARGV[8] = how long (ms) the publishing node waits for its answer. A key
-- already there is a repeat: nothing is published, and what the key holds is returned as
-- {'seen', v}: the first answer, or the claim '-|<offset>|<epoch>|<ms>' while that is not
-- kept yet. A claim older than ARGV[8] is a publication whose node stopped waiting for
-- Redis's answer (a shard failed over under it, or the node died): it was published,
-- and its position is the answer — a retry must not publish it twice.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local o, e, at = string.match(seen, '^%-|(%d+)|([^|]+)|(%d+)$')
    if o and now - tonumber(at) > tonumber(ARGV[8]) then
      return {'seen', cjson.encode({q = 0, o = tonumber(o), e = e})}
    end
    return {'seen', seen}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
if KEYS[3] then
  redis.call('SET', KEYS[3], '-|' .. offset .. '|' .. epoch .. '|' .. now, 'EX', ARGV[7])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
local message = 'v1|' .. offset .. '|' .. epoch .. '|' .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-1', 'm', message)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], message)
return {offset, epoch}
