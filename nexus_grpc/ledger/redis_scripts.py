"""The redis ledger's Lua scripts. Each runs atomically in the store and answers with the
store's version and the fresh totals of every (scope, month) it touched (see `reply`)."""

PRELUDE = """
local P = ARGV[1]
local touched, order = {}, {}
local function touch(scope, month)
  local k = month .. '|' .. scope
  if not touched[k] then touched[k] = true; order[#order + 1] = {scope, month} end
end
local function neg(s)
  if s == '0' then return s end
  if string.sub(s, 1, 1) == '-' then return string.sub(s, 2) end
  return '-' .. s
end
local function add(kind, month, scope, amount)
  local key = P .. kind .. ':' .. month
  if redis.call('HINCRBY', key, scope, amount) < 0 then redis.call('HSET', key, scope, '0') end
  touch(scope, month)
end
local function drop(id)
  local key = P .. 'res:' .. id
  redis.call('ZREM', P .. 'res_exp', id)
  local r = redis.call('HMGET', key, 'scopes', 'amount', 'month')
  if not r[1] then return false end
  redis.call('DEL', key)
  for _, s in ipairs(cjson.decode(r[1])) do add('reserved', r[3], s, neg(r[2])) end
  return true
end
local function reply(head)
  local out = {redis.call('INCR', P .. 'ver'), #head}
  for _, v in ipairs(head) do out[#out + 1] = v end
  for _, t in ipairs(order) do
    local s, m = t[1], t[2]
    out[#out + 1] = s
    out[#out + 1] = m
    out[#out + 1] = redis.call('HGET', P .. 'spent:' .. m, s) or '0'
    out[#out + 1] = redis.call('HGET', P .. 'reserved:' .. m, s) or '0'
  end
  return out
end
"""

# ARGV: prefix, id, amount, month, expires_at, pexpireat_ms, n, scopes[n], limits[n]
RESERVE = """
local id, amount, month, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[7])
drop(id)
local scopes, ok = {}, 1
for i = 1, n do
  local s, limit = ARGV[7 + i], tonumber(ARGV[7 + n + i])
  scopes[i] = s
  if limit > 0 then
    touch(s, month)
    local used = tonumber(redis.call('HGET', P .. 'spent:' .. month, s) or '0')
      + tonumber(redis.call('HGET', P .. 'reserved:' .. month, s) or '0')
    if used + tonumber(amount) > limit then ok = 0 end
  end
end
if ok == 0 then return reply({0}) end
local key = P .. 'res:' .. id
redis.call('HSET', key, 'scopes', cjson.encode(scopes), 'amount', amount, 'month', month, 'exp', ARGV[5])
redis.call('PEXPIREAT', key, ARGV[6])
redis.call('ZADD', P .. 'res_exp', ARGV[5], id)
for i = 1, n do add('reserved', month, scopes[i], amount) end
return reply({1})
"""

# ARGV: prefix, id, charge, month, estimated, provisional, ttl_ms, n, scopes[n]
SETTLE = """
local id, charge, month = ARGV[2], ARGV[3], ARGV[4]
local ck = P .. 'charge:' .. id
local prev = redis.call('HMGET', ck, 'charged', 'estimated', 'provisional', 'scopes', 'month')
if prev[1] and prev[3] ~= '1' then return reply({0, prev[1], prev[2], '0', prev[5], prev[4]}) end
drop(id)
local scopes = {}
for i = 1, tonumber(ARGV[8]) do scopes[i] = ARGV[8 + i] end
local scopes_json = cjson.encode(scopes)
if prev[1] then
  scopes_json, month = prev[4], prev[5]
  scopes = cjson.decode(scopes_json)
  for _, s in ipairs(scopes) do add('spent', month, s, neg(prev[1])) end
end
for _, s in ipairs(scopes) do add('spent', month, s, charge) end
redis.call('HSET', ck, 'charged', charge, 'estimated', ARGV[5], 'provisional', ARGV[6],
  'scopes', scopes_json, 'month', month)
redis.call('PEXPIRE', ck, ARGV[7])
return reply({1, charge, ARGV[5], ARGV[6], month, scopes_json})
"""

# ARGV: prefix, id
RELEASE = "return reply({drop(ARGV[2]) and 1 or 0})"

# ARGV: prefix, now, max
EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', P .. 'res_exp', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local head = {#ids}
for _, id in ipairs(ids) do
  if drop(id) then head[#head + 1] = id end
end
head[1] = #head - 1
return reply(head)
"""
