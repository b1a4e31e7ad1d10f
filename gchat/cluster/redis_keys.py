"""Every Redis key and channel gchat uses, and every Lua script that reads
or writes them: the one place that knows the cluster's layout in Redis.

Keys (all under PREFIX):
  node:{node}     a node's heartbeat: its token, TTL = node_ttl
  nodes           set: every node that heartbeated and was not reaped yet
  online:{uid}    the node holding the user
  users:{node}    set: the users a node holds (for reaping and `gchat-admin nodes`)
Channels:
  node:{node}     deliveries for the users a node holds (envelopes of gchat/cluster/bus.py)
  all             group invalidations, each prefixed with its origin node

The scripts build key names from the prefix they are given, with the same
layout as the functions below. They are all run through redis-py's
`register_script` (EVALSHA, with EVAL once after a Redis restart forgot them),
so a script's text crosses the wire once, not on every call.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

PREFIX = "gchat:"
NODES = PREFIX + "nodes"
ALL = PREFIX + "all"


def node_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


def online_key(user_id: int | str) -> str:
    return f"{PREFIX}online:{user_id}"


def users_key(node: str) -> str:
    return f"{PREFIX}users:{node}"


def node_channel(node: str) -> str:
    return f"{PREFIX}node:{node}"


# "Which live node holds this user", the one definition, shared by the
# scripts below: the claim's holder if its heartbeat key exists, else nil (a
# claim by a node whose heartbeat expired counts as free before any sweep).
# `alive` caches each node's answer for one script run.
_LIVE_OWNER = """
local function live_owner(p, uid, alive)
  local o = redis.call('GET', p .. 'online:' .. uid)
  if not o then return nil end
  if alive[o] == nil then alive[o] = redis.call('EXISTS', p .. 'node:' .. o) == 1 end
  if alive[o] then return o end
  return nil
end
"""

# KEYS[1] node:{node}, KEYS[2] nodes; ARGV token, ttl ms, node.
# Returns 1 if the key still held our token, 0 if it was gone (Redis lost
# it, or we were reaped): then the node must re-claim its users.
HEARTBEAT = """
local had = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if had == ARGV[1] then return 1 end
return 0
"""

# ARGV prefix, node, uid. Refuses (0) when a live node other than this one
# holds the user; the caller has checked that it does not hold the user
# itself, so a claim by its own node is stale and taken over.
CLAIM = _LIVE_OWNER + """
local p, node, uid = ARGV[1], ARGV[2], ARGV[3]
local o = live_owner(p, uid, {})
if o and o ~= node then return 0 end
local cur = redis.call('GET', p .. 'online:' .. uid)
if cur and cur ~= node then redis.call('SREM', p .. 'users:' .. cur, uid) end
redis.call('SET', p .. 'online:' .. uid, node)
redis.call('SADD', p .. 'users:' .. node, uid)
return 1
"""

# ARGV prefix, node, uid...: drop the node's claims on those users (a claim
# another node took meanwhile is left alone). Returns the uids released.
RELEASE = """
local p, node = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local k = p .. 'online:' .. ARGV[i]
  if redis.call('GET', k) == node then
    redis.call('DEL', k)
    out[#out + 1] = ARGV[i]
  end
  redis.call('SREM', p .. 'users:' .. node, ARGV[i])
end
return out
"""

# ARGV prefix, uid...: the live node holding each user, '' for none.
OWNERS = _LIVE_OWNER + """
local p = ARGV[1]
local out, alive = {}, {}
for i = 2, #ARGV do
  out[#out + 1] = live_owner(p, ARGV[i], alive) or ''
end
return out
"""

# ARGV prefix, this node, kind, body, uid...: publishes body to the live node
# holding each user (one PUBLISH per node, an envelope of gchat/cluster/bus.py
# of that kind: 'D' a delivery, 'N' a notice) and returns the users it could not hand to a
# listening node: offline, held by a node whose heartbeat expired or that has
# no subscriber, or claimed by this node itself (claimed here but not
# connected: the caller stores them). One round trip: a lookup, then a
# PUBLISH, cost twice the redis-py overhead that dominated a cross-node
# message (docs/benchmarks.md).
ROUTE = _LIVE_OWNER + """
local p, me, kind, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local by_node, nodes, missed, alive = {}, {}, {}, {}
for i = 5, #ARGV do
  local uid = ARGV[i]
  local o = live_owner(p, uid, alive)
  if o and o ~= me then
    if by_node[o] == nil then by_node[o] = {}; nodes[#nodes + 1] = o end
    local ids = by_node[o]
    ids[#ids + 1] = uid
  else
    missed[#missed + 1] = uid
  end
end
for _, o in ipairs(nodes) do
  local ids = by_node[o]
  if redis.call('PUBLISH', p .. 'node:' .. o, kind .. table.concat(ids, ',') .. ' ' .. body) == 0 then
    for _, uid in ipairs(ids) do missed[#missed + 1] = uid end
  end
end
return missed
"""

# ARGV prefix, this node, then for each message of a batch: its body and
# its users' ids joined by commas (one argument, not one per user: packing
# and parsing an argument per user was the larger part of a group message's
# route call, on the node and in Redis: docs/benchmarks.md). ROUTE for a
# whole batch of the log's writer in one call: each node gets one PUBLISH,
# the messages' 'D' envelopes for it in batch order joined by LF under an 'M'
# envelope (a lone one goes as it is), so the receiver wakes, reads and
# parses once per batch instead of once per message (gchat/cluster/bus.py).
# A body never holds a raw LF (gchat/protocol.py dumps). Returns, per
# message, the users it could not hand to a listening node (as ROUTE),
# joined by commas ('' for none).
ROUTE_BATCH = _LIVE_OWNER + """
local p, me = ARGV[1], ARGV[2]
local alive, owner = {}, {}
local by_node, nodes, missed = {}, {}, {}
local m = 0
for i = 3, #ARGV, 2 do
  local body = ARGV[i]
  m = m + 1
  local mi = {}
  missed[m] = mi
  local here = {}  -- node -> this message's users there, in order
  local order = {}
  for uid in string.gmatch(ARGV[i + 1], '[^,]+') do
    local o = owner[uid]
    if o == nil then o = live_owner(p, uid, alive) or false; owner[uid] = o end
    if o and o ~= me then
      if here[o] == nil then here[o] = {}; order[#order + 1] = o end
      local ids = here[o]
      ids[#ids + 1] = uid
    else
      mi[#mi + 1] = uid
    end
  end
  for _, o in ipairs(order) do
    local sent = by_node[o]
    if sent == nil then sent = {envs = {}, who = {}}; by_node[o] = sent; nodes[#nodes + 1] = o end
    sent.envs[#sent.envs + 1] = 'D' .. table.concat(here[o], ',') .. ' ' .. body
    sent.who[#sent.who + 1] = {m, here[o]}
  end
end
for _, o in ipairs(nodes) do
  local sent = by_node[o]
  local data = sent.envs[1]
  if #sent.envs > 1 then data = 'M' .. table.concat(sent.envs, '\\n') end
  if redis.call('PUBLISH', p .. 'node:' .. o, data) == 0 then
    for _, w in ipairs(sent.who) do
      local mi = missed[w[1]]
      for _, uid in ipairs(w[2]) do mi[#mi + 1] = uid end
    end
  end
end
for k = 1, m do missed[k] = table.concat(missed[k], ',') end
return missed
"""

# ARGV prefix, node, force. Reaps a node whose heartbeat expired (or any
# node, with force='1'): its claims go, it leaves the registry. Returns the
# users freed, or nil when the node is alive. Atomic, so when several nodes
# sweep at once exactly one of them gets the list.
REAP = """
local p, node = ARGV[1], ARGV[2]
if ARGV[3] ~= '1' and redis.call('EXISTS', p .. 'node:' .. node) == 1 then return false end
local freed = {}
for _, uid in ipairs(redis.call('SMEMBERS', p .. 'users:' .. node)) do
  local k = p .. 'online:' .. uid
  if redis.call('GET', k) == node then
    redis.call('DEL', k)
    freed[#freed + 1] = uid
  end
end
redis.call('DEL', p .. 'users:' .. node)
redis.call('SREM', p .. 'nodes', node)
return freed
"""


class Scripts:
    """The scripts, registered on one client (registering costs no round
    trip: redis-py loads a script the first time Redis says it lacks it)."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.heartbeat: Script = client.register_script(HEARTBEAT)
        self.claim: Script = client.register_script(CLAIM)
        self.release: Script = client.register_script(RELEASE)
        self.owners: Script = client.register_script(OWNERS)
        self.route: Script = client.register_script(ROUTE)
        self.route_batch: Script = client.register_script(ROUTE_BATCH)
        self.reap: Script = client.register_script(REAP)


class Layout:
    """Where the keys live on one kind of deployment (the channels are the
    same on all: node_channel, ALL).

    On one Redis (or a Sentinel-watched master) the keys are PREFIX's, and a
    script is called with no KEYS: it builds its key names from the prefix.
    In a Redis Cluster a script may only touch keys of one hash slot, and the
    client sends it to the node holding the slot of its first KEY: every key
    carries the hash tag `{gchat}`, so they all share one slot, and each call
    names one of them (`anchor`). So presence stays on one shard; what is
    sharded is the per-node channels (SPUBLISH, gchat/cluster/redis_client.py)."""

    def __init__(self, prefix: str, anchored: bool) -> None:
        self.prefix = prefix
        self.nodes = prefix + "nodes"
        self.anchor: list[str] = [self.nodes] if anchored else []

    def node_key(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def online_key(self, user_id: int | str) -> str:
        return f"{self.prefix}online:{user_id}"

    def users_key(self, node: str) -> str:
        return f"{self.prefix}users:{node}"


ONE = Layout(PREFIX, anchored=False)
SLOTTED = Layout("{gchat}:", anchored=True)
