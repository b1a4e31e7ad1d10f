"""gchat-admin: an operator's view of a cluster, and the original's "reset
everyone offline", done safely.

It finds the stores as the server does (--database-url / --redis-url, or
GCHAT_DATABASE_URL / GCHAT_REDIS_URL). Exit status: 0 done, 1 a store could
not be reached or the action was refused, 2 a wrong argument.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

import redis
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from gchat import config, convlog, store
from gchat.cluster.mirror import StateMirror
from gchat.cluster.reaper import Reaper
from gchat.cluster.redis_client import connect
from gchat.cluster.redis_keys import NODES, node_key, online_key, users_key
from gchat.config import Settings
from gchat.errors import Unavailable
from gchat.store import Database


class Refused(Exception):
    """The action would be unsafe or cannot be done; the message says why."""


def _db(settings: Settings) -> Database:
    return Database(settings.sqlalchemy_url, pool_size=1, overflow=0, timeout=5.0)


def _redis(settings: Settings, need: str) -> redis.Redis:
    if not settings.redis_url:
        raise Refused(f"{need} needs the cluster's Redis: give --redis-url or GCHAT_REDIS_URL")
    client = connect(settings.redis_url, timeout=5.0)
    client.ping()
    return client


def _text(raw: bytes | str) -> str:
    """A reply of the Redis client, which returns bytes (no decode_responses)
    although its types allow str."""
    return raw.decode() if isinstance(raw, bytes) else raw


def reset_online(settings: Settings, args: argparse.Namespace) -> None:
    db = _db(settings)
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
    r = _redis(settings, "reset-online --node")
    freed = Reaper(r).reap(node, force=force)
    if freed is None:
        raise Refused(f"node {node} is alive (its heartbeat is fresh): stop it first (a node that stops "
                      "cleanly sets its own users offline), or add --force if you know it is dead")
    if force:
        r.delete(node_key(node))  # dead for the cluster too, should it still be counted
    StateMirror(db).write(freed, "offline")
    print(f"node {node}: {len(freed)} user(s) set offline")


def _reset_all(settings: Settings, db: Database) -> None:
    """Every user offline: only when no node is running, as the original's
    reset was meant (it ran it at the exit of one node, and so set the
    users of every other node offline too)."""
    if settings.redis_url:
        r = _redis(settings, "reset-online --all")
        reaper = Reaper(r)
        alive = [n for n, up in reaper.live_nodes().items() if up]
        alive += [k.decode().removeprefix(node_key("")) for k in r.scan_iter(node_key("*"))
                  if k.decode().removeprefix(node_key("")) not in alive]
        if alive:
            raise Refused(f"{len(alive)} node(s) alive ({', '.join(sorted(alive))}): stop them first, "
                          "or reset one dead node with --node")
        for node in [_text(m) for m in r.smembers(NODES)]:
            reaper.reap(node, force=True)
        stray = list(r.scan_iter(online_key("*"))) + list(r.scan_iter(users_key("*")))
        if stray:
            r.delete(*stray)
    n = StateMirror(db).reset()
    print(f"{n} user(s) set offline")


def nodes(settings: Settings, args: argparse.Namespace) -> None:
    r = _redis(settings, "nodes")
    known = Reaper(r).live_nodes()
    for k in r.scan_iter(node_key("*")):  # a heartbeat not registered (yet)
        known.setdefault(k.decode().removeprefix(node_key("")), True)
    if not known:
        print("no nodes")
        return
    print(f"{'NODE':<32} {'STATE':<6} USERS")
    for n in sorted(known):
        print(f"{n:<32} {'alive' if known[n] else 'dead':<6} {r.scard(users_key(n))}")
    alive = sum(known.values())
    print(f"{alive} alive, {len(known) - alive} dead (a dead node's users are freed by the next sweep)")


def users(settings: Settings, args: argparse.Namespace) -> None:
    db = _db(settings)
    try:
        with db.transaction() as s:
            rows = [(u.id, u.name, u.state) for u in store.list_users(s, args.limit)]
    finally:
        db.dispose()
    where: dict[int, str] = {}
    if settings.redis_url and rows:
        r = _redis(settings, "users")
        held = r.mget([online_key(uid) for uid, _, _ in rows])
        where = {uid: _text(h) for (uid, _, _), h in zip(rows, held, strict=True) if h}
    print(f"{'ID':>8}  {'NAME':<32} {'STATE':<8} NODE")
    for uid, name, state in rows:
        print(f"{uid:>8}  {name:<32} {state:<8} {where.get(uid, '-')}")
    print(f"{len(rows)} user(s)" + (f" (first {args.limit})" if len(rows) == args.limit else ""))


def groups(settings: Settings, args: argparse.Namespace) -> None:
    db = _db(settings)
    try:
        with db.transaction() as s:
            rows = [(g.id, g.groupname, g.groupdesc, n) for g, n in store.list_groups(s, args.limit)]
    finally:
        db.dispose()
    print(f"{'ID':>8}  {'NAME':<32} {'MEMBERS':>7}  DESCRIPTION")
    for gid, name, desc, n in rows:
        print(f"{gid:>8}  {name:<32} {n:>7}  {desc}")
    print(f"{len(rows)} group(s)" + (f" (first {args.limit})" if len(rows) == args.limit else ""))


# messages deleted per transaction: a node writing to the same conversations
# waits at most for one such batch
PRUNE_BATCH = 2000


def prune(settings: Settings, args: argparse.Namespace) -> None:
    """Retention (docs/architecture.md, "The conversation log"): delete the
    messages past the configured age or count, in small transactions, so it
    is safe while nodes serve. Sequence numbers and cursors stay: numbers are
    never reused, and what was pruned is simply absent from history."""
    if settings.retention_days <= 0 and settings.retention_keep <= 0:
        raise Refused("nothing to prune by: set --retention-days and/or --retention-keep "
                      "(GCHAT_RETENTION_DAYS, GCHAT_RETENTION_KEEP)")
    older = int((time.time() - settings.retention_days * 86400) * 1000) if settings.retention_days > 0 else None
    keep = settings.retention_keep if settings.retention_keep > 0 else None
    db = _db(settings)
    total = 0
    try:
        while True:
            with db.transaction() as s:
                n = convlog.prune(s, older_than_ms=older, keep_last=keep, limit=PRUNE_BATCH)
            total += n
            if n < PRUNE_BATCH:
                break
    finally:
        db.dispose()
    print(f"pruned {total} message(s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gchat-admin",
        description="Inspect a gchat cluster and repair its online states.",
    )
    config.add_arguments(parser, names=["database_url", "redis_url", "retention_days", "retention_keep"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("reset-online", help="set users offline: those of one dead node, or everyone "
                       "when no node runs")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--node", help="a node that died: its users only (refused while it is alive)")
    which.add_argument("--all", action="store_true", help="every user (refused while any node is alive)")
    p.add_argument("--force", action="store_true",
                   help="with --node: the node is dead although its heartbeat has not expired yet")
    p.set_defaults(run=reset_online)
    sub.add_parser("nodes", help="the nodes, alive or dead, and how many users each holds").set_defaults(run=nodes)
    sub.add_parser("prune", help="delete messages past the retention (--retention-days, --retention-keep); "
                   "safe while nodes serve").set_defaults(run=prune)
    for name, run, what in (("users", users, "users, their state and node"), ("groups", groups, "groups")):
        p = sub.add_parser(name, help=f"list {what}")
        p.add_argument("--limit", type=_positive, default=1000, help="at most this many (default 1000)")
        p.set_defaults(run=run)
    return parser


def _positive(raw: str) -> int:
    n = int(raw)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{raw} is not a positive number")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "reset-online" and args.force and not args.node:
        parser.error("--force goes with --node only")
    try:
        settings = config.from_sources(args)
    except ValueError as e:
        parser.error(str(e))
    run: Callable[[Settings, argparse.Namespace], None] = args.run
    # the stores' own warnings would repeat the one line printed below
    logging.basicConfig(level=logging.ERROR, format="gchat-admin: %(name)s: %(message)s")
    try:
        run(settings, args)
    except Refused as e:
        print(f"gchat-admin: {e}", file=sys.stderr)
        return 1
    except redis.RedisError as e:
        print(f"gchat-admin: cannot reach Redis at {_safe(settings.redis_url)}: {e}", file=sys.stderr)
        return 1
    except sa_exc.ArgumentError as e:
        print(f"gchat-admin: bad --database-url {_safe(settings.database_url)!r}: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"gchat-admin: cannot reach the database at {_safe(settings.database_url)}: {e}", file=sys.stderr)
        return 1
    return 0


def _safe(url: str) -> str:
    """The URL without its password, for messages. Redis URLs have the same
    shape (scheme://user:password@host:port/db), so SQLAlchemy's parser
    serves both."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:  # not parsed: where a password would be is unknown, so none of it is shown
        return "(not a URL)"


if __name__ == "__main__":
    sys.exit(main())
