-- costguard: one request's limits, atomically: rate (GCRA), then budget
-- (tenant, project), then the daily quota. Nothing is written unless every
-- check passes, so a refused request consumes nothing.
--
-- KEYS[1] rate key        <prefix>:{tenant}:rate:<bucket> (unused if ARGV[1] = 0)
-- KEYS[2] tenant base     <prefix>:{tenant}; the script appends
--                         :quota:<day> and :spend:<month>[:<project>]
--                         (same hash tag, so the same cluster slot).
-- ARGV  1 rate_want       tokens to take (0: no rate; 1: exact; n: a lease)
--       2 interval_us     emission interval, period / limit, >= 1
--       3 tau_us          burst * interval
--       4 quota_want      requests to take (0: no quota check)
--       5 quota_limit     requests per day
--       6 quota_seed      the store's count if the key is lost (-1: unknown)
--       7 tenant_budget   micro-USD (-1: none)
--       8 tenant_seed     (-1: unknown)
--       9 project         project id ('' : none)
--      10 project_budget  micro-USD (-1: none)
--      11 project_seed    (-1: unknown)
-- Reply {status, rate_granted, rate_remaining, rate_reset_us, retry_us,
--        quota_granted, quota_used, day_left_s, day, month, seed_mask}
-- status 0 allowed, 1 rate, 2 tenant budget, 3 project budget, 4 quota,
--        5 seeds needed (mask: 1 quota, 2 tenant spend, 4 project spend).
local function reply(status, granted, remaining, reset_us, retry_us, qgranted, used, mask)
  return {status, granted, remaining, reset_us, retry_us, qgranted, used, day_left, day, month, mask}
end

local rate_want = tonumber(ARGV[1])
local granted, remaining, reset_us, new_tat = 0, 0, 0, nil
if rate_want > 0 then
  local interval = tonumber(ARGV[2])
  local tau = tonumber(ARGV[3])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local avail = math.floor((now + tau - tat) / interval)
  if avail < 1 then
    return reply(1, 0, 0, tat - now, tat + interval - tau - now, 0, 0, 0)
  end
  granted = math.min(rate_want, avail)
  new_tat = tat + granted * interval
  remaining = avail - granted
  reset_us = new_tat - now
end

local mask = 0
local seeds = {}
local function counter(key, seed, bit)
  local v = redis.call('GET', key)
  if v then return tonumber(v) end
  if seed < 0 then
    mask = mask + bit
    return nil
  end
  seeds[key] = seed
  return seed
end

local spend_key = KEYS[2] .. ':spend:' .. month
local tenant_budget = tonumber(ARGV[7])
if tenant_budget >= 0 then
  local spent = counter(spend_key, tonumber(ARGV[8]), 2)
  if spent and spent >= tenant_budget then return reply(2, 0, 0, 0, 0, 0, 0, 0) end
end
local project_budget = tonumber(ARGV[10])
if ARGV[9] ~= '' and project_budget >= 0 then
  local spent = counter(spend_key .. ':' .. ARGV[9], tonumber(ARGV[11]), 4)
  if spent and spent >= project_budget then return reply(3, 0, 0, 0, 0, 0, 0, 0) end
end

local quota_key = KEYS[2] .. ':quota:' .. day
local quota_want = tonumber(ARGV[4])
local qgranted, used = 0, 0
if quota_want > 0 then
  local limit = tonumber(ARGV[5])
  local v = counter(quota_key, tonumber(ARGV[6]), 1)
  if mask > 0 then return reply(5, 0, 0, 0, 0, 0, 0, mask) end
  if v >= limit then return reply(4, 0, 0, 0, 0, 0, v, 0) end
  qgranted = math.min(quota_want, limit - v)
  used = v + qgranted
end
if mask > 0 then return reply(5, 0, 0, 0, 0, 0, 0, mask) end

-- Every check passed: commit. A GCRA key lives until its bucket is full
-- again (then it is indistinguishable from a missing one).
if new_tat then
  redis.call('SET', KEYS[1], int(new_tat), 'PX', int(math.floor(reset_us / 1000) + 1))
end
if qgranted > 0 then
  redis.call('SET', quota_key, int(used), 'EX', int(day_left + 3600))
end
-- Seeded spend counters (lost or new) are set now that the request passes.
for key, seed in pairs(seeds) do
  if key ~= quota_key then
    redis.call('SET', key, int(seed), 'NX', 'EX', int(month_ttl))
  end
end
return reply(0, granted, remaining, reset_us, 0, qgranted, used, 0)
