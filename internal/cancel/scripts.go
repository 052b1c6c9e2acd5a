package cancel

import "github.com/redis/go-redis/v9"

// Every Lua script of the registry, in one place. Each runs atomically in Redis, which is what makes
// admission, start, completion, failure and cancel exclusive: a request ends exactly once, and credits
// move exactly when its state does.
//
// Keys and who writes them (store.Keys names every key of the service and its writers):
//
//	req:{user}:{rid}   hash, this package only: state, tombstone, image, scale, model, cost, result,
//	                   queue, task, code, data, attempts, created, started, finished. No expiry while
//	                   queued or running (a request never expires with its credits held); REQUEST_TTL
//	                   once it has an outcome.
//	open:{user}        hash rid → "cost|work ms|queue" of each queued or running request: its length is
//	                   the user's open requests (MAX_QUEUED_PER_USER), it gives the user's lane, and a
//	                   refund is possible even if the request's own hash is lost.
//	work               hash queue → estimated work (ms) of its queued and running requests.
//	work:done          counter: estimated work (ms) of the requests completed, for the drain rate.
//	callbacks          sorted set "user:rid" → time, of requests whose completion callback is due:
//	                   package callback turns each into a delivery task and removes it.
//	tombs:{user}       sorted set rid → time of the user's cancel tombstones, to bound them.
//	unenqueued         sorted set "user:rid" → admission time, until the task is known to be on the queue.
//	user:{user}        hash owned by package store; these scripts change only its "credits" field.
//	image:{id}         hash owned by package store; `complete` writes the result's record (store.Image.Fields).
//	seq:image          counter owned by package store; `admit` takes the result's id from it.
//
// With REDIS_WAIT_REPLICAS set, each of admit, complete, fail, lost and cancel is sent with a PUBLISH on
// the channel "fence" (nobody listens) and a WAIT, on one connection: Registry.replicated.

// release is the part of every outcome that frees what an open request holds: its place in open and
// its work in the backlog of its queue. It runs before the request's state changes. due marks the
// request's completion callback as due (package callback delivers it), when it has one.
// Arguments: request key, open key, work key, rid; request key, callbacks key, now ms, signal.
const release = `
local function due(req, callbacks, now, sig)
  if redis.call('HEXISTS', req, 'callback') == 1 then redis.call('ZADD', callbacks, now, sig) end
end
local function release(req, open, work, rid)
  local q = redis.call('HGET', req, 'queue')
  local w = tonumber(redis.call('HGET', req, 'work')) or 0
  if q and w > 0 then redis.call('HINCRBY', work, q, -w) end
  redis.call('HDEL', open, rid)
  return w
end
`

// admitScript reserves the cost and records a queued request, unless the id is taken, the user has too
// many open requests, or credits are short. It picks the request's queue: the first one, or, when the
// user already has lane requests in it or in the more one, the more one (ARGV 12; "" for none).
//
// KEYS: 1 request, 2 user, 3 image sequence, 4 unenqueued, 5 open, 6 work.
// ARGV: 1 cost, 2 max open (0: no limit), 3 image, 4 scale, 5 model, 6 queue, 7 task, 8 now ms,
// 9 signal "user:rid", 10 rid, 11 work ms, 12 queue for more, 13 lane, 14 callback URL ("" for none).
// Returns {verdict, request hash}: verdict ok, exists, toomany or nocredit.
var admitScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists', redis.call('HGETALL', KEYS[1])}
end
local maxOpen = tonumber(ARGV[2])
if maxOpen > 0 and redis.call('HLEN', KEYS[5]) >= maxOpen then
  return {'toomany', {}}
end
local credits = tonumber(redis.call('HGET', KEYS[2], 'credits'))
local cost = tonumber(ARGV[1])
if credits == nil or credits < cost then
  return {'nocredit', {}}
end
local queue = ARGV[6]
if ARGV[12] ~= '' then
  local mine = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[5])) do
    local q = string.match(v, '^[^|]*|[^|]*|(.*)$')
    if q == ARGV[6] or q == ARGV[12] then mine = mine + 1 end
  end
  if mine >= tonumber(ARGV[13]) then queue = ARGV[12] end
end
redis.call('HINCRBY', KEYS[2], 'credits', -cost)
local result = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'state', 'queued', 'image', ARGV[3], 'scale', ARGV[4], 'model', ARGV[5],
  'cost', cost, 'result', result, 'queue', queue, 'task', ARGV[7], 'created', ARGV[8], 'work', ARGV[11])
if ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'callback', ARGV[14]) end
redis.call('HSET', KEYS[5], ARGV[10], cost .. '|' .. ARGV[11] .. '|' .. queue)
redis.call('HINCRBY', KEYS[6], queue, tonumber(ARGV[11]))
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[9])
return {'ok', redis.call('HGETALL', KEYS[1])}`)

// startScript moves a queued (or, after a crash, running) request to running, and says so on the events
// channel (event streams follow every change of state).
//
// KEYS: 1 request. ARGV: 1 now ms, 2 events channel, 3 signal.
// Returns the request hash (empty when the request is unknown).
var startScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'queued' or st == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  if st == 'queued' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
end
return redis.call('HGETALL', KEYS[1])`)

// completeScript records the result image and the completed state, unless the request already ended.
//
// KEYS: 1 request, 2 result image, 3 open, 4 work, 5 work done, 6 callbacks.
// ARGV: 1 events channel, 2 signal, 3 now ms, 4 keep ms, 5 rid, 6… the image's hash fields.
// Returns the state now: completed, or the outcome that won (canceled, failed), or missing.
var completeScript = redis.NewScript(release + `
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'queued' and st ~= 'running' then return st or 'missing' end
redis.call('INCRBY', KEYS[5], release(KEYS[1], KEYS[3], KEYS[4], ARGV[5]))
due(KEYS[1], KEYS[6], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'state', 'completed', 'finished', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 'completed'`)

// failScript records a failure and refunds the reservation, unless the request already ended.
//
// KEYS: 1 request, 2 user, 3 open, 4 work, 5 callbacks.
// ARGV: 1 events channel, 2 signal, 3 now ms, 4 code, 5 data, 6 keep ms, 7 rid.
// Returns failed, or the outcome that had already won, or missing.
var failScript = redis.NewScript(release + `
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'queued' and st ~= 'running' then return st or 'missing' end
release(KEYS[1], KEYS[3], KEYS[4], ARGV[7])
due(KEYS[1], KEYS[5], ARGV[3], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'credits', tonumber(redis.call('HGET', KEYS[1], 'cost')) or 0)
redis.call('HSET', KEYS[1], 'state', 'failed', 'code', ARGV[4], 'data', ARGV[5], 'finished', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 'failed'`)

// lostScript settles a request whose task runs but whose state is gone (lost by Redis, or expired under
// an older version that let queued requests expire): the reservation kept in open is refunded and the
// request is recorded as failed, so nothing is silently dropped with its credits held.
//
// KEYS: 1 request, 2 user, 3 open, 4 work.
// ARGV: 1 events channel, 2 signal, 3 now ms, 4 code, 5 data, 6 keep ms, 7 rid.
// Returns the refunded cost, or -1 when the request exists after all (nothing done).
var lostScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local held = redis.call('HGET', KEYS[3], ARGV[7]) or ''
local cost = tonumber(string.match(held, '^(%d+)')) or 0
local work, queue = string.match(held, '^[^|]*|(%d+)|(.+)$')
if work and tonumber(work) > 0 then redis.call('HINCRBY', KEYS[4], queue, -tonumber(work)) end
redis.call('HINCRBY', KEYS[2], 'credits', cost)
redis.call('HDEL', KEYS[3], ARGV[7])
redis.call('HSET', KEYS[1], 'state', 'failed', 'code', ARGV[4], 'data', ARGV[5], 'cost', cost,
  'created', ARGV[3], 'finished', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return cost`)

// cancelScript cancels a pending request (refunding it), or leaves a tombstone for an id not seen yet.
// Tombstones are bounded per user: past max tombs the oldest are removed, so cancels of made-up ids
// cannot grow Redis without limit.
//
// KEYS: 1 request, 2 user, 3 open, 4 tombstones, 5 work, 6 callbacks.
// ARGV: 1 events channel, 2 cancels channel, 3 signal, 4 now ms, 5 keep ms, 6 rid, 7 max tombstones,
// 8 key prefix of this user's requests ("…req:{user}:").
// Returns {state now, state before or 'none', request hash}.
var cancelScript = redis.NewScript(release + `
local st = redis.call('HGET', KEYS[1], 'state')
if not st then
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'tombstone', '1', 'created', ARGV[4], 'finished', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  local now = tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[5]))
  redis.call('ZADD', KEYS[4], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
  local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[7])
  if excess > 0 then
    local old = redis.call('ZPOPMIN', KEYS[4], excess)
    for i = 1, #old, 2 do
      local key = ARGV[8] .. old[i]
      if redis.call('HGET', key, 'tombstone') == '1' then redis.call('DEL', key) end
    end
  end
elseif st == 'queued' or st == 'running' then
  release(KEYS[1], KEYS[3], KEYS[5], ARGV[6])
  due(KEYS[1], KEYS[6], ARGV[4], ARGV[3])
  redis.call('HINCRBY', KEYS[2], 'credits', tonumber(redis.call('HGET', KEYS[1], 'cost')) or 0)
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'finished', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PUBLISH', ARGV[1], ARGV[3])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return {redis.call('HGET', KEYS[1], 'state'), st or 'none', redis.call('HGETALL', KEYS[1])}`)
