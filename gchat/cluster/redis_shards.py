"""Routing over a Redis Cluster's sharded pub/sub (redis+cluster:// URLs,
gchat/cluster/redis_client.py).

On one Redis the ROUTE script (gchat/cluster/redis_keys.py) looks the owners
up and PUBLISHes to their nodes in one call. In a cluster that script cannot
be kept whole: a script runs on the node of its keys' slot and may not
SPUBLISH to a channel another node serves (Redis 7.0 refuses: "Script
attempted to access a non local key in a cluster node"), while the per-node
channels are spread over the slots on purpose, so that each
message crosses only the shard of its recipient's node (a classic PUBLISH
crosses every node of a cluster). So the owners are looked up by the OWNERS
script in presence's slot, then one SPUBLISH goes to each node's channel:
1 + (number of nodes) round trips where one Redis takes one.
"""

from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster

from gchat.cluster.redis_keys import SLOTTED, Scripts, node_channel


class ShardedRoute:
    """Called as the ROUTE script is (keys, args = prefix, this node, kind,
    body, uid...), with the same answer: the users it could not hand to a
    listening node. The prefix given is ignored: the cluster's keys have
    their own (redis_keys.SLOTTED)."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._owners = Scripts(client).owners

    def __call__(self, keys: list[str], args: list[Any]) -> list[Any]:
        _, me, kind, body, *uids = args
        owners = self._owners(keys=SLOTTED.anchor, args=[SLOTTED.prefix, *uids])
        by_node: dict[str, list[str]] = {}
        missed: list[Any] = []
        for uid, owner in zip(uids, owners, strict=True):
            node = owner.decode() if owner else ""
            if node and node != me:
                by_node.setdefault(node, []).append(str(uid))
            else:
                missed.append(uid)
        for node, ids in by_node.items():
            envelope = f"{kind}{','.join(ids)} ".encode() + body
            if self.client.spublish(node_channel(node), envelope) == 0:
                missed.extend(ids)  # no subscriber: the node is gone or reconnecting
        return missed
