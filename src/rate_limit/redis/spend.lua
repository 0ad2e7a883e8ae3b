-- costguard: adds a request's cost (micro-USD) to this month's spend of
-- its tenant and project. Only counters Redis holds are increased: a
-- missing one is seeded from the store (which the replica's flusher
-- updates within a second) by the next budget check.
-- KEYS[1] tenant base <prefix>:{tenant}; ARGV 1 micros, 2 project ('' none)
local key = KEYS[1] .. ':spend:' .. month
local n = 0
if redis.call('EXISTS', key) == 1 then
  redis.call('INCRBY', key, ARGV[1])
  n = n + 1
end
if ARGV[2] ~= '' and redis.call('EXISTS', key .. ':' .. ARGV[2]) == 1 then
  redis.call('INCRBY', key .. ':' .. ARGV[2], ARGV[1])
  n = n + 1
end
return n
