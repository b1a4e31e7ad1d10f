"""The nodes: which are alive, which died (until a live node sweeps them),
and the original's "reset everyone offline", done safely."""

from __future__ import annotations

import argparse
from typing import Any

from gchat.cluster.mirror import StateMirror
from gchat.cluster.reaper import Reaper
from gchat.config import Settings
from gchat.store import Database
from gchat.tools.admin.stores import Refused, ask_node, open_db, open_redis, show, text


def nodes(settings: Settings, args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]]
    if not settings.redis_url and not settings.admin_socket:
        raise Refused("nodes needs the cluster's Redis (--redis-url, GCHAT_REDIS_URL) or a lone node's admin "
                      "socket (--admin-socket, GCHAT_ADMIN_SOCKET)")
    if settings.redis_url:
        a = open_redis(settings, "nodes")
        known = Reaper(a.client, a.keys).live_nodes()
        for n in a.heartbeats():
            known.setdefault(n, True)
        # a dead node stays listed, with the users it still holds, until a
        # live node's sweep (or reset-online --node) frees them
        rows = [{"node": n, "state": "alive" if up else "dead",
                 "users": int(a.client.scard(a.keys.users_key(n)))}
                for n, up in sorted(known.items())]
    else:  # a lone node, through its admin socket
        reply = ask_node(settings.admin_socket, {"action": "ping"})
        if reply is None:
            raise Refused(f"no node answers on the admin socket {settings.admin_socket}")
        rows = [{"node": reply["node"], "state": "alive", "users": reply["users"]}]
    alive = sum(row["state"] == "alive" for row in rows)
    dead = len(rows) - alive
    if not rows and not args.json:
        print("no nodes")
        return
    show(rows, args.json, [("node", "<32"), ("state", "<6"), ("users", "")],
         f"{alive} alive, {dead} dead" + (" (a dead node's users are freed by the next sweep of a live node, "
                                          "or by reset-online --node)" if dead else ""))


def reset_online(settings: Settings, args: argparse.Namespace) -> None:
    if not args.node and not args.force:
        _refuse_while_alive(settings)  # before the database: nothing is opened for a refusal
    db = open_db(settings)
    try:
        if args.node:
            _reset_node(settings, db, args.node, args.force)
        else:
            _reset_all(settings, db)
    finally:
        db.dispose()


def _reset_node(settings: Settings, db: Database, node: str, force: bool) -> None:
    """A node's users offline, and only its users; refused while the node's
    heartbeat is fresh (its users may be connected: freeing them would let
    them log in twice) unless the operator knows better (--force)."""
    a = open_redis(settings, "reset-online --node")
    freed = Reaper(a.client, a.keys).reap(node, force=force)
    if freed is None:
        raise Refused(f"node {node} is alive (its heartbeat is fresh): stop it first (a node that stops "
                      "cleanly sets its own users offline), or add --force if you know it is dead")
    if force:
        a.client.delete(a.keys.node_key(node))  # dead for the cluster too, should it still be counted
    StateMirror(db).write(freed, "offline")
    print(f"node {node}: {len(freed)} user(s) set offline")


def _refuse_while_alive(settings: Settings) -> None:
    if not settings.redis_url:
        _refuse_if_lone_node_runs(settings)
        return
    a = open_redis(settings, "reset-online --all")
    alive = sorted({n for n, up in Reaper(a.client, a.keys).live_nodes().items() if up} | set(a.heartbeats()))
    if alive:
        raise Refused(f"{len(alive)} node(s) alive ({', '.join(alive)}): stop them first, reset one dead "
                      "node with --node, or add --force if you know they are dead")


def _reset_all(settings: Settings, db: Database) -> None:
    """Every user offline: only when no node is running (checked before,
    unless forced), as the original's reset was meant (it ran it at the exit
    of one node, and so set the users of every other node offline too)."""
    if settings.redis_url:
        a = open_redis(settings, "reset-online --all")
        r, keys = a.client, a.keys
        reaper = Reaper(r, keys)
        for node in [text(m) for m in r.smembers(keys.nodes)]:
            reaper.reap(node, force=True)
        # a node still running re-registers and re-claims its users when it
        # finds its heartbeat gone, so --force cannot leave one online twice
        stray = [*r.scan_iter(keys.node_key("*")), *r.scan_iter(keys.online_key("*")),
                 *r.scan_iter(keys.users_key("*"))]
        if stray:
            r.delete(*stray)
    n = StateMirror(db).reset()
    print(f"{n} user(s) set offline")


def _refuse_if_lone_node_runs(settings: Settings) -> None:
    if not settings.admin_socket:
        raise Refused("cannot tell whether a node is running on this database (no --redis-url, no "
                      "--admin-socket): give the node's GCHAT_ADMIN_SOCKET, or add --force if it is stopped "
                      "(a lone node also sets everyone offline itself when it starts)")
    reply = ask_node(settings.admin_socket, {"action": "ping"})
    if reply is not None:
        raise Refused(f"node {reply['node']} is running ({reply['users']} user(s) connected): stop it first "
                      "(it sets its users offline as it stops), or add --force")
