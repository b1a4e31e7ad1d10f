"""Acting on connected users: kick one, or send every online user a system
message. A cluster is reached through Redis (gchat/control.py: a "C"
envelope on the bus), a lone node through its admin socket."""

from __future__ import annotations

import argparse
import json
import sys
import time

import redis

from gchat.cluster.reaper import Reaper
from gchat.config import Settings
from gchat.tools.admin.stores import Refused, ask_node, find_user, open_db, open_redis, text

# how long a kick may take: the node flushes the connection's queued
# messages (up to 5 s for a client that does not read), then releases it
KICK_TIMEOUT = 15.0
# gchat:all carries "ORIGIN ENVELOPE": a node skips what it sent itself
ORIGIN = b"gchat-admin "


def _envelope(request: dict[str, object]) -> bytes:
    return b"C" + json.dumps(request).encode()


def _unreachable() -> Refused:
    return Refused("no way to reach the nodes: give the cluster's Redis (--redis-url, GCHAT_REDIS_URL), "
                   "or a lone node's admin socket (--admin-socket, the node's GCHAT_ADMIN_SOCKET)")


def kick_user(settings: Settings, user_id: int, label: str, reason: str = "") -> bool:
    """Close the user's connection wherever it is; False when it is not online."""
    request = {"action": "kick", "id": user_id, "reason": reason}
    if settings.redis_url:
        a = open_redis(settings, "kick")
        r, keys = a.client, a.keys
        owner = r.get(keys.online_key(user_id))
        if owner is None:
            return False
        node = text(owner)
        if not r.exists(keys.node_key(node)):
            raise Refused(f"{label} is held by node {node}, which is dead: its users are freed by the next "
                          f"sweep, or now by `gchat-admin reset-online --node {node}`")
        if a.to_node(node, _envelope(request)) == 0:
            raise Refused(f"node {node} holds {label} but does not listen on the bus (its subscriber is "
                          "reconnecting?): try again")
        deadline = time.monotonic() + KICK_TIMEOUT
        while r.get(keys.online_key(user_id)) == owner:
            if time.monotonic() > deadline:
                raise Refused(f"node {node} was asked to close the connection of {label} but still holds it "
                              f"after {KICK_TIMEOUT:.0f} s (see its log)")
            time.sleep(0.05)
        print(f"kicked {label} from node {node}")
        return True
    if settings.admin_socket:
        reply = ask_node(settings.admin_socket, request)
        if reply is None:
            raise Refused(f"no node answers on the admin socket {settings.admin_socket}")
        if reply["kicked"]:
            print(f"kicked {label} from node {reply['node']}")
        return bool(reply["kicked"])
    raise _unreachable()


def kick(settings: Settings, args: argparse.Namespace) -> None:
    db = open_db(settings)
    try:
        user = find_user(db, args.user)
    finally:
        db.dispose()
    label = f"user {user.id} ({user.name})"
    if not kick_user(settings, user.id, label, args.reason):
        raise Refused(f"{label} is not online")


def broadcast(settings: Settings, args: argparse.Namespace) -> None:
    if not args.text.strip():
        raise Refused("the message is empty")
    request = {"action": "broadcast", "text": args.text}
    if settings.redis_url:
        a = open_redis(settings, "broadcast")
        alive = [n for n, up in Reaper(a.client, a.keys).live_nodes().items() if up]
        users = sum(int(a.client.scard(a.keys.users_key(n))) for n in alive)
        listening = a.to_all(ORIGIN + _envelope(request))
        print(f"broadcast to {listening} node(s), about {users} user(s) online")
        if listening < len(alive):
            raise Refused(f"{len(alive) - listening} live node(s) did not get it (not subscribed right now)")
        return
    if settings.admin_socket:
        reply = ask_node(settings.admin_socket, request)
        if reply is None:
            raise Refused(f"no node answers on the admin socket {settings.admin_socket}")
        print(f"broadcast to {reply['users']} user(s) on node {reply['node']}")
        return
    raise _unreachable()


def forget_users(settings: Settings, user_ids: list[int]) -> None:
    """Tell the running nodes that these users were deleted: a node caches
    which users exist, and would otherwise accept messages for them."""
    request: dict[str, object] = {"action": "forget", "ids": user_ids}
    try:
        if settings.redis_url:
            open_redis(settings, "delete-user").to_all(ORIGIN + _envelope(request))
            return
        if settings.admin_socket and ask_node(settings.admin_socket, request) is not None:
            return
    except (Refused, OSError, redis.RedisError) as e:
        print(f"gchat-admin: could not tell the nodes ({e})", file=sys.stderr)
    print("note: a node that was running without --admin-socket still takes these users for existing until "
          "it restarts (a message to them is refused)", file=sys.stderr)
