"""How gchat-admin opens what it works on: the database (never creating
one by mistake), the cluster's Redis, or a lone node's admin socket; and how
it prints (a table, or --json)."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.cluster import RedisCluster
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from gchat import schema, store
from gchat.cluster.redis_client import Client, connect, parse
from gchat.cluster.redis_keys import ALL, Layout, node_channel
from gchat.config import Settings
from gchat.errors import Unavailable
from gchat.models import User
from gchat.store import Database

# a request on the admin socket is answered at once; the node may be busy
SOCKET_TIMEOUT = 10.0


class Refused(Exception):
    """The action would be unsafe or cannot be done; the message says why."""


def safe_url(url: str) -> str:
    """The URL without its password, for messages. Redis URLs have the same
    shape (scheme://user:password@host:port/db), so SQLAlchemy's parser
    serves both."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:  # not parsed: where a password would be is unknown, so none of it is shown
        return "(not a URL)"


def sqlite_path(settings: Settings) -> Path | None:
    """The file of a SQLite URL, made absolute (None: not SQLite, or in memory)."""
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).absolute()


def open_db(settings: Settings, *, must_exist: bool = True, at_head: bool = True) -> Database:
    """The database, checked: a SQLite file that is not there is an error
    (SQLite would create an empty one, and every command would then blame
    the schema), and a schema that is behind names `gchat-admin migrate`.
    migrate itself wants neither check."""
    path = sqlite_path(settings)
    if path is not None and must_exist and not path.is_file():
        relative = "" if Path(make_url(settings.sqlalchemy_url).database or "").is_absolute() else (
            f" ({settings.database_url} is relative to the current directory, {Path.cwd()})")
        raise Refused(f"no SQLite database at {path}{relative}: run gchat-admin in the node's directory, "
                      f"or give the absolute path (sqlite:///{path})")
    db = Database(settings.sqlalchemy_url, pool_size=1, overflow=0, timeout=5.0, tls=settings.database_tls)
    if not at_head:
        return db
    try:
        have, want = schema.current(db), schema.head()
    except sa_exc.DBAPIError as e:
        db.dispose()
        raise Unavailable(str(e.orig)) from e
    if have != want:
        db.dispose()
        where = str(path) if path is not None else safe_url(settings.database_url)
        raise Refused(f"the database at {where} has schema {have or 'none (not a gchat database?)'}, "
                      f"gchat needs {want}: run `gchat-admin migrate` with the same --database-url")
    return db


def find_user(db: Database, who: str) -> User:
    """USER on the command line: an id, or a name (a name made only of
    digits is given by its id)."""
    with db.transaction() as s:
        user = store.get_user(s, int(who)) if who.isdigit() else store.user_by_name(s, who)
    if user is None:
        raise Refused(f"no user {'with id ' + who if who.isdigit() else repr(who)}")
    return user


@dataclass(frozen=True)
class AdminRedis:
    """The cluster's Redis as gchat-admin sees it, on any of the three forms
    the nodes take (gchat/cluster/redis_client.py): the client, where the
    keys are (a Redis Cluster's carry the hash tag `{gchat}`: `keys`), and
    how a node's channel is reached (sharded on a Redis Cluster, where the
    node listens by SSUBSCRIBE)."""

    client: Client
    keys: Layout
    sharded: bool

    def to_node(self, node: str, envelope: bytes) -> int:
        """Publish to one node's channel; how many listen there (0: the node
        is not subscribed right now)."""
        if self.sharded:
            return int(self.client.spublish(node_channel(node), envelope))
        return int(self.client.publish(node_channel(node), envelope))

    def to_all(self, envelope: bytes) -> int:
        """Publish on the cluster-wide channel; how many nodes listen. On a
        Redis Cluster a PUBLISH reaches every node of the cluster but answers
        with the subscribers of the one it was sent to, so the listeners are
        counted first, over every node (PUBSUB NUMSUB, summed by redis-py)."""
        if not self.sharded:
            return int(self.client.publish(ALL, envelope))
        ((_, listening),) = self.client.pubsub_numsub(ALL, target_nodes=RedisCluster.ALL_NODES)
        self.client.publish(ALL, envelope)
        return int(listening)

    def heartbeats(self) -> list[str]:
        """Nodes with a heartbeat key, registered or not (yet)."""
        return [text(k).removeprefix(self.keys.node_key("")) for k in self.client.scan_iter(self.keys.node_key("*"))]


def open_redis(settings: Settings, need: str) -> AdminRedis:
    if not settings.redis_url:
        raise Refused(f"{need} needs the cluster's Redis: give --redis-url or GCHAT_REDIS_URL")
    target = parse(settings.redis_url)
    client = connect(settings.redis_url, timeout=5.0)
    client.ping()
    return AdminRedis(client, target.layout, target.kind == "cluster")


def text(raw: bytes | str) -> str:
    """A reply of the Redis client, which returns bytes (no decode_responses)
    although its types allow str."""
    return raw.decode() if isinstance(raw, bytes) else raw


def ask_node(path: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """One request on a lone node's admin socket (gchat/control.py); None
    when no node answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(SOCKET_TIMEOUT)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except PermissionError as e:
            raise Refused(f"not allowed on the admin socket {path} ({e.strerror}): run gchat-admin as "
                          "the node's user (or root)") from e
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise Refused(f"the node at {path} answered {data[:80]!r}")
    if not reply.get("ok"):
        raise Refused(f"the node refused: {reply.get('error')}")
    return reply


def show(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[tuple[str, str]], footer: str) -> None:
    """Print rows as JSON (one array) or as a table of `columns` (key,
    format with the header's width and alignment) with a footer line."""
    if as_json:
        json.dump(list(rows), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    print(" ".join(f"{key.upper():{fmt}}" for key, fmt in columns).rstrip())
    for row in rows:
        print(" ".join(f"{'-' if row[key] is None else row[key]:{fmt}}" for key, fmt in columns).rstrip())
    print(footer)
