-- costguard: the one clock. Every script starts here: Redis's TIME, not a
-- replica's, decides the instant, the UTC day and the UTC month.
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000000 + tonumber(t[2])
local day = math.floor(secs / 86400)
local day_left = 86400 - secs % 86400
-- Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
local z = day + 719468
local era = math.floor(z / 146097)
local doe = z - era * 146097
local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
local mp = math.floor((5 * doy + 2) / 153)
local mday = doy - math.floor((153 * mp + 2) / 5) + 1
local mon = mp < 10 and mp + 3 or mp - 9
local year = yoe + era * 400
if mon <= 2 then year = year + 1 end
-- year * 12 + month - 1, as usage::this_month().
local month = year * 12 + mon - 1
-- Spend keys live until well after their month (at most 31 days are left).
local month_ttl = (33 - mday) * 86400
local function int(x) return string.format('%.0f', x) end
