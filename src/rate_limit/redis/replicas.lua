-- costguard: a replica's heartbeat. Records this replica as seen now and
-- returns how many were seen within the window.
-- KEYS[1] <prefix>:replicas; ARGV 1 replica id, 2 window in seconds
redis.call('ZADD', KEYS[1], secs, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', secs - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
return redis.call('ZCARD', KEYS[1])
