"""gchat-admin: an operator's view of a node or a cluster, and its actions.

It finds what it works on as the node does (--database-url, --redis-url,
--admin-socket, or their GCHAT_* variables), or in the node's environment
file (--env-file /etc/gchat/node0.env). A cluster's nodes are reached through Redis; a lone node
through its admin socket (gchat/control.py). Exit status: 0 done, 1 a store
or node could not be reached or the action was refused, 2 a wrong argument.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

import redis
from sqlalchemy import exc as sa_exc

from gchat import __version__, config
from gchat.config import Settings
from gchat.errors import Unavailable
from gchat.tools.admin.accounts import delete_user, groups, passwd, users
from gchat.tools.admin.migrate import migrate
from gchat.tools.admin.nodes import nodes, reset_online
from gchat.tools.admin.prune import prune
from gchat.tools.admin.reach import broadcast, kick
from gchat.tools.admin.stores import Refused, safe_url

Command = Callable[[Settings, argparse.Namespace], None]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gchat-admin",
        description="Inspect and run a gchat node or cluster: schema, nodes, users, groups, kicks, broadcasts.",
    )
    parser.add_argument("--version", action="version", version=f"gchat-admin {__version__}")
    parser.add_argument("--env-file", metavar="PATH",
                        help="read the GCHAT_* settings from the node's environment file (deploy/gchat.env); "
                        "they take precedence over the environment, flags over them")
    config.add_arguments(parser, names=["database_url", "redis_url", "admin_socket", "retention_days",
                                        "retention_keep"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        return p

    p = command("migrate", migrate, "bring the database schema to the one this gchat needs (the migrations "
                "ship in the package); a SQLite file is created if missing")
    p.add_argument("--check", action="store_true", help="only say whether it is up to date (exit 1 if not)")

    p = command("nodes", nodes, "the nodes, alive or dead (until swept), and how many users each holds")
    p.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    for name, run, what in (("users", users, "users, their state and node"), ("groups", groups, "groups")):
        p = command(name, run, f"list {what}")
        p.add_argument("--limit", type=_positive, default=1000, help="at most this many (default 1000)")
        p.add_argument("--json", action="store_true", help="one JSON array instead of a table")

    p = command("reset-online", reset_online, "set users offline: those of one dead node, or everyone when no "
                "node runs")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--node", help="a node that died: its users only (refused while it is alive)")
    which.add_argument("--all", action="store_true", help="every user (refused while any node is alive)")
    p.add_argument("--force", action="store_true", help="the node(s) are dead although it does not look so")

    p = command("kick", kick, "close a user's connection, on whichever node holds it")
    p.add_argument("user", metavar="USER", help="id or name")
    p.add_argument("--reason", default="", help="told to the user before the connection closes")

    p = command("broadcast", broadcast, "send a system message to every online user, on every node")
    p.add_argument("text", metavar="TEXT")

    p = command("delete-user", delete_user, "remove users with their friendships, group memberships and "
                "stored messages (and groups left empty); online ones are kicked first")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("user", metavar="USER", nargs="?", help="id or name")
    who.add_argument("--prefix", help="every user whose name starts with this")
    who.add_argument("--bench", action="store_true", help="every account gchat-bench made")
    p.add_argument("--yes", action="store_true", help="with --prefix or --bench: really delete them")

    command("prune", prune, "delete messages past the retention (--retention-days, --retention-keep); safe while "
            "nodes serve")

    p = command("passwd", passwd, "set a user's password (from GCHAT_NEW_PASSWORD, the terminal, or a line "
                "of standard input) and revoke its resume token")
    p.add_argument("user", metavar="USER", help="id or name")
    return parser


def _positive(raw: str) -> int:
    n = int(raw)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{raw} is not a positive number")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        environ = dict(os.environ)
        if args.env_file:
            environ.update(config.read_env_file(args.env_file))
        settings = config.from_sources(args, environ)
    except OSError as e:
        parser.error(f"--env-file: {e}")
    except ValueError as e:
        parser.error(str(e))
    run: Command = args.run
    # the stores' own warnings would repeat the one line printed below
    logging.basicConfig(level=logging.ERROR, format="gchat-admin: %(name)s: %(message)s")
    try:
        run(settings, args)
    except Refused as e:
        print(f"gchat-admin: {e}", file=sys.stderr)
        return 1
    except redis.RedisError as e:
        print(f"gchat-admin: cannot reach Redis at {safe_url(settings.redis_url)}: {e}", file=sys.stderr)
        return 1
    except sa_exc.ArgumentError as e:
        print(f"gchat-admin: bad --database-url {safe_url(settings.database_url)!r}: {e}", file=sys.stderr)
        return 2
    except (Unavailable, sa_exc.DBAPIError) as e:
        reason = e.orig if isinstance(e, sa_exc.DBAPIError) else e
        print(f"gchat-admin: cannot reach the database at {safe_url(settings.database_url)}: {reason}",
              file=sys.stderr)
        return 1
    return 0
