"""The redis ledger's Lua scripts. Each write runs atomically in the store and answers with the
store's version and the fresh totals of every (scope, month) it touched (see `reply`).

Keys (after the prefix): `spent:<month>` and `reserved:<month>` hashes (scope -> nano-USD);
`res:<key>` reservation hashes and the `res_exp` expiry index; `charge:<key>` charges (the
idempotency record); the request index: `rq:<request_id>`, a sorted set of the unsettled keys
(reserved, or charged provisionally) labelled with that request id, scored by `seq` (their order
of creation), and `rqdone:<request_id>`, the latest settled key of that request id. Every key
but the totals and counters expires, the index no earlier than what it points to.

Totals saturate at CAP (MAX_TOTAL_NANO) and never go below 0. Redis HINCRBY is exact but refuses
to overflow int64 (an error that would repeat on every retry); amounts are at most 2**53 and
totals at most CAP = 2**61, so a sum cannot overflow, and only a result near the cap needs a
look: Lua numbers are doubles, so that look compares decimal strings, exactly.
"""

PRELUDE = """
local P = ARGV[1]
local CAP, CAP_S = 2305843009213693952, '2305843009213693952'
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
  -- a total stored before totals were capped could make HINCRBY overflow: cap it first
  local cur = tonumber(redis.call('HGET', key, scope) or '0') or 0
  if cur > CAP then redis.call('HSET', key, scope, CAP_S) end
  local v = redis.call('HINCRBY', key, scope, amount)
  if v < 0 then
    redis.call('HSET', key, scope, '0')
  elseif v >= CAP - 4096 then
    local s = redis.call('HGET', key, scope)
    if #s > #CAP_S or (#s == #CAP_S and s > CAP_S) then redis.call('HSET', key, scope, CAP_S) end
  end
  touch(scope, month)
end
local function extend(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end
local function seq_for(rid, before_rid, before_seq)
  if rid == '' then return 0 end
  if before_rid == rid and (tonumber(before_seq or '0') or 0) > 0 then return before_seq end
  return redis.call('INCR', P .. 'seq')
end
local function index(rid, id, seq, ttl_ms)
  if rid ~= '' then
    redis.call('ZADD', P .. 'rq:' .. rid, seq, id)
    extend(P .. 'rq:' .. rid, ttl_ms)
  end
end
local function unindex(rid, id)
  if rid and rid ~= '' then redis.call('ZREM', P .. 'rq:' .. rid, id) end
end
local function drop(id)
  local key = P .. 'res:' .. id
  redis.call('ZREM', P .. 'res_exp', id)
  local r = redis.call('HMGET', key, 'scopes', 'amount', 'month', 'rid')
  if not r[1] then return false end
  redis.call('DEL', key)
  for _, s in ipairs(cjson.decode(r[1])) do add('reserved', r[3], s, neg(r[2])) end
  unindex(r[4], id)
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

# ARGV: prefix, key, amount, month, expires_at, pexpireat_ms, ttl_ms, request_id, note,
#       n, scopes[n], limits[n]
RESERVE = """
local id, amount, month, rid, note, n = ARGV[2], ARGV[3], ARGV[4], ARGV[8], ARGV[9], tonumber(ARGV[10])
local key = P .. 'res:' .. id
local before = redis.call('HMGET', key, 'rid', 'seq')
drop(id)
local scopes, ok = {}, 1
for i = 1, n do
  local s, limit = ARGV[10 + i], tonumber(ARGV[10 + n + i])
  scopes[i] = s
  if limit > 0 then
    touch(s, month)
    local used = tonumber(redis.call('HGET', P .. 'spent:' .. month, s) or '0')
      + tonumber(redis.call('HGET', P .. 'reserved:' .. month, s) or '0')
    if used + tonumber(amount) > limit then ok = 0 end
  end
end
if ok == 0 then return reply({0}) end
local seq = seq_for(rid, before[1], before[2])
redis.call('HSET', key, 'scopes', cjson.encode(scopes), 'amount', amount, 'month', month, 'exp', ARGV[5],
  'rid', rid, 'note', note, 'seq', seq)
redis.call('PEXPIREAT', key, ARGV[6])
redis.call('ZADD', P .. 'res_exp', ARGV[5], id)
for i = 1, n do add('reserved', month, scopes[i], amount) end
index(rid, id, seq, tonumber(ARGV[7]))
return reply({1})
"""

# ARGV: prefix, key, charge, month, estimated, provisional, ttl_ms, request_id, note, n, scopes[n]
SETTLE = """
local id, charge, month, rid, note, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[8], ARGV[9], tonumber(ARGV[7])
local ck = P .. 'charge:' .. id
local prev = redis.call('HMGET', ck, 'charged', 'estimated', 'provisional', 'scopes', 'month', 'rid', 'note',
  'seq')
if prev[1] and prev[3] ~= '1' then
  return reply({0, prev[1], prev[2], '0', prev[5], prev[4], prev[6] or '', prev[7] or ''})
end
local held = redis.call('HMGET', P .. 'res:' .. id, 'rid', 'note', 'seq')
drop(id)
local scopes = {}
for i = 1, tonumber(ARGV[10]) do scopes[i] = ARGV[10 + i] end
local scopes_json = cjson.encode(scopes)
local before = held
if prev[1] then -- replace the provisional charge, in its scopes and month
  scopes_json, month = prev[4], prev[5]
  scopes = cjson.decode(scopes_json)
  for _, s in ipairs(scopes) do add('spent', month, s, neg(prev[1])) end
  unindex(prev[6], id)
  before = {prev[6], prev[7], prev[8]}
end
if rid == '' then rid = before[1] or '' end
if note == '' then note = before[2] or '' end
local seq = seq_for(rid, before[1], before[3])
for _, s in ipairs(scopes) do add('spent', month, s, charge) end
redis.call('HSET', ck, 'charged', charge, 'estimated', ARGV[5], 'provisional', ARGV[6], 'scopes', scopes_json,
  'month', month, 'rid', rid, 'note', note, 'seq', seq)
redis.call('PEXPIRE', ck, ttl)
if rid ~= '' and ARGV[6] == '1' then
  index(rid, id, seq, ttl)
elseif rid ~= '' then
  local done = P .. 'rqdone:' .. rid
  if tonumber(seq) >= (tonumber(redis.call('HGET', done, 'seq') or '0') or 0) then
    redis.call('HSET', done, 'key', id, 'seq', seq)
    redis.call('PEXPIRE', done, ttl)
  end
end
return reply({1, charge, ARGV[5], ARGV[6], month, scopes_json, rid, note})
"""

# ARGV: prefix, key
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

# ARGV: prefix, request_id. The oldest unsettled key of the request id: {'reserved' | 'provisional',
# key, scopes_json, amount, month, note}; else its latest settled one: {'settled', key, charged,
# estimated}; else {}. Index entries whose key is settled or gone are dropped on the way.
FIND_REQUEST = """
local P, rid = ARGV[1], ARGV[2]
local rq = P .. 'rq:' .. rid
while true do
  local ids = redis.call('ZRANGE', rq, 0, 99)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local r = redis.call('HMGET', P .. 'res:' .. id, 'scopes', 'amount', 'month', 'rid', 'note')
    if r[1] and r[4] == rid then return {'reserved', id, r[1], r[2], r[3], r[5] or ''} end
    local c = redis.call('HMGET', P .. 'charge:' .. id, 'scopes', 'charged', 'month', 'rid', 'note',
      'provisional')
    if c[1] and c[6] == '1' and c[4] == rid then return {'provisional', id, c[1], c[2], c[3], c[5] or ''} end
    redis.call('ZREM', rq, id)
  end
end
local last = redis.call('HGET', P .. 'rqdone:' .. rid, 'key')
if last then
  local c = redis.call('HMGET', P .. 'charge:' .. last, 'charged', 'estimated', 'provisional')
  if c[1] and c[3] ~= '1' then return {'settled', last, c[1], c[2]} end
end
return {}
"""
