"""One frozen `Settings` object: command-line flag, then `GCHAT_*` environment
variable, then default. Built once at start-up and passed down; nothing else
in gchat reads the environment."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy.engine import make_url

from gchat.protocol import Limits
from gchat.store import TLS_MODES


def _opt(default: Any, help: str, *, flag: bool = True, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


LOG_FORMATS = ("text", "json")

# one Redis (redis-py's own forms), a master found through Sentinel, a Redis
# Cluster (gchat/cluster/redis_client.py parses them; docs/operations.md)
REDIS_FORMS = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


@dataclass(frozen=True)
class Settings:
    bind: str = _opt("0.0.0.0:6000", "HOST:PORT to listen on")
    database_url: str = _opt(
        "sqlite:///gchat.db",
        "SQLAlchemy URL of the store; mysql://USER:PASS@HOST/DB uses PyMySQL",
    )
    redis_url: str = _opt("", "the cluster bus's Redis: redis://HOST:PORT/DB (one server), "
                              "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] (the master Sentinel names), "
                              "redis+cluster://HOST:PORT[,HOST:PORT...] (a Redis Cluster, sharded pub/sub); "
                              "empty = single node, in-process bus (docs/operations.md)")
    node_id: str = _opt("", "this node's name in the cluster (default: HOSTNAME:PORT)")
    log_level: str = _opt("INFO", "how much the node logs", choices=LOG_LEVELS)
    log_format: str = _opt("text", "text (one readable line per event) or json (one JSON object per line)")
    login_failures_logged: int = _opt(10, "failed logins logged one by one per window; the rest are summarised")
    login_failures_window: float = _opt(60.0, "seconds of the window that failed logins are summarised over")
    metrics_bind: str = _opt(
        "127.0.0.1:9600", "HOST:PORT of the HTTP endpoint for /metrics (Prometheus), /healthz and /readyz; "
        "empty = none. Loopback by default: the counts are for the operator, not the world")
    admin_socket: str = _opt(
        "",
        "Unix socket (mode 0600) where gchat-admin reaches a node that has no Redis (kick, broadcast); "
        "empty = none",
    )

    # database
    pool_size: int = _opt(10, "database connection pool size")
    pool_overflow: int = _opt(10, "connections allowed beyond the pool under bursts")
    cache_groups: int = _opt(100_000, "group member lists kept in memory (the oldest goes first)")
    db_timeout: float = _opt(5.0, "seconds to wait for the database (connect, read, pool) before errno 11")
    database_tls: str = _opt(
        "auto", "TLS to MySQL/MariaDB: preferred (when the server offers it, certificate unchecked: PyMySQL's "
        "default), required (certificate and name checked against the system's CAs), off, or auto (off to "
        "a database on this host, preferred to another); ssl_* options in the URL take precedence",
        choices=TLS_MODES)

    # passwords: argon2id, the OWASP minimum profile by default (19 MiB, t=2)
    hash_time_cost: int = _opt(2, "argon2id iterations")
    hash_memory_kib: int = _opt(19456, "argon2id memory in KiB")

    # protocol limits (docs/protocol.md part B)
    frame_max: int = _opt(Limits.frame_max, "largest frame in bytes")
    msg_max: int = _opt(Limits.msg_max, "longest chat message in characters")
    name_max: int = _opt(Limits.name_max, "longest user or group name")
    desc_max: int = _opt(Limits.desc_max, "longest group description")
    password_max: int = _opt(Limits.password_max, "longest password")
    login_timeout: float = _opt(30.0, "seconds a connection may stay without logging in")
    resume_ttl: int = _opt(24 * 3600, "seconds a resume token (docs/protocol.md section C) stays valid")

    # failed logins (gchat/throttle.py): errno 10 and a growing wait, no hash
    login_backoff: float = _opt(
        1.0, "first wait in seconds after too many failed logins, doubled at each further one; 0 = off"
    )
    login_backoff_max: float = _opt(300.0, "longest wait in seconds after failed logins")
    login_free: int = _opt(5, "failed logins on one account from one address before it must wait")
    login_free_per_address: int = _opt(50, "failed logins from one address, on any accounts, before it must wait")
    login_free_per_account: int = _opt(
        20, "failed logins on one account, from anywhere, before its logins are spaced by login_backoff"
    )
    login_forget: float = _opt(900.0, "seconds after its last failed login that an account or address starts afresh")

    # connections
    max_connections: int = _opt(100_000, "connections served at once (gevent pool size)")
    max_per_ip: int = _opt(0, "connections per client address; 0 = no limit")
    outbox_max_messages: int = _opt(10_000, "messages queued for one slow reader before it is cut off")
    outbox_max_bytes: int = _opt(
        8 * 1024 * 1024, "bytes of delivered messages queued for one slow reader before it is cut off "
        "(replies, such as a login's backlog, are not counted)")
    classic_gap: float = _opt(
        0.005, "seconds between two frames written to a client that speaks only part A (the original "
        "ChatClient reads one frame per recv and drops the rest); 0 = no pacing")
    rate: float = _opt(0.0, "requests per second per connection; 0 = no limit")
    rate_burst: int = _opt(200, "requests a connection may send at once above the rate")
    keepalive_idle: int = _opt(60, "TCP keepalive: idle seconds before the first probe")
    keepalive_interval: int = _opt(10, "TCP keepalive: seconds between probes")
    keepalive_count: int = _opt(3, "TCP keepalive: unanswered probes before the peer is dead")

    # the web app and WebSocket (docs/protocol.md, "WebSocket")
    web_bind: str = _opt(
        "127.0.0.1:6080", "HOST:PORT of the web app and its WebSocket (/ws); empty = off. Loopback by "
        "default: open the address printed at start-up; put nginx (nginx.conf) in front for others")
    web_origins: str = _opt(
        "", "comma-separated Origins a browser may open the WebSocket from (e.g. https://chat.example.org); "
        "empty = only pages this node (or the proxy before it) served; * = any")
    web_ping_interval: float = _opt(
        20.0, "seconds of WebSocket silence before a ping; a peer silent for two of these is dropped")

    # friends (docs/protocol.md section F)
    friend_requests: bool = _opt(False, "the classic ADD_FRIEND (msgid 6) sends a friend request instead of "
                                 "adding at once (true/false)")
    group_notices_live: int = _opt(1000, "a join or leave is pushed live to the members of a group only while it "
                                   "has at most this many; beyond, the notice is in the group's log only "
                                   "(sync login, history): 0 = never pushed (docs/protocol.md section F)")
    # the conversation log (docs/architecture.md)
    cursor_flush: float = _opt(1.0, "seconds between writes of classic clients' delivered cursors "
                                    "(a node killed loses at most this much: those messages come again)")
    log_linger: float = _opt(
        0.010, "seconds the log's writer waits, while messages keep coming, to gather more of them into its "
        "next batch (one commit for all: less CPU per message, that much more latency): a batch "
        "less than this after the last waits for the rest when more messages are due in it; a message after "
        "a quiet spell this long is written at once; 0 = never wait")
    log_gather: int = _opt(
        16, "messages waiting that end the writer's linger at once: a fast stream's batch goes as soon as it "
        "holds this many, a slow one waits log_linger; 0 = always the whole linger")
    sync_max: int = _opt(5000, "messages in a sync login's reply, all its conversations together (the rest "
                         "through history)")
    sync_bytes: int = _opt(4 * 1024 * 1024, "bytes of messages in a sync login's reply (the rest through history)")
    repair_sweep: float = _opt(10.0, "seconds between two checks of the node's sessions against the log: a "
                               "message whose live delivery was lost and that is the last of its conversation "
                               "arrives within two of these; 0 = no sweep")
    retention_days: float = _opt(0.0, "gchat-admin prune: delete messages older than this many days; 0 = keep")
    retention_keep: int = _opt(0, "gchat-admin prune: keep at most this many messages per conversation; 0 = all")

    # cluster presence
    heartbeat_interval: float = _opt(2.0, "seconds between this node's heartbeats")
    node_ttl: float = _opt(10.0, "seconds after its last heartbeat that a silent node counts as dead")
    redis_timeout: float = _opt(2.0, "seconds to wait for Redis (connect, command) before a request gets errno 11")
    bus_idle_check: float = _opt(5.0, "seconds of silence on the bus subscription before its connection is pinged")
    bus_reconnect_max: float = _opt(2.0, "longest wait, in seconds, between the bus subscriber's reconnect attempts")

    @property
    def limits(self) -> Limits:
        return Limits(
            frame_max=self.frame_max,
            msg_max=self.msg_max,
            name_max=self.name_max,
            desc_max=self.desc_max,
            password_max=self.password_max,
        )

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])

    @property
    def web_address(self) -> tuple[str, int] | None:
        if not self.web_bind:
            return None
        host, _, port = self.web_bind.rpartition(":")
        return host or "0.0.0.0", int(port)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.web_origins.split(",") if o.strip())

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if not self.metrics_bind:
            return None
        host, _, port = self.metrics_bind.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def node(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with a driver SQLAlchemy can use under gevent: plain
        mysql:// would pick mysqlclient (C, blocks the whole node); PyMySQL is
        pure Python and yields on the patched socket. Raises
        sqlalchemy.exc.ArgumentError when database_url is not a URL."""
        url = make_url(self.database_url)
        if url.drivername in ("mysql", "mariadb", "mariadb+pymysql"):
            url = url.set(drivername="mysql+pymysql")
        if url.drivername == "mysql+pymysql" and "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})  # MySQL's utf8 is 3 bytes: no emoji
        return url.render_as_string(hide_password=False)


def _bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _env_name(name: str) -> str:
    return "GCHAT_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add a --flag for each setting (or for `names` only), documenting its
    environment variable and default."""
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']}{_choices(f.metadata['choices'])} "
            f"(env {_env_name(f.name)}; default {f.default!r})",
        )


def _choices(choices: tuple[str, ...]) -> str:
    return f": one of {', '.join(choices)}" if choices else ""


def read_env_file(path: str) -> dict[str, str]:
    """The KEY=VALUE lines of an environment file as systemd's EnvironmentFile
    reads the simple ones (deploy/gchat.env): blank lines and # comments
    skipped, one pair of surrounding quotes removed. Raises OSError, or
    ValueError naming the line that is not KEY=VALUE."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip().isidentifier():
                raise ValueError(f"{path}:{n}: not KEY=VALUE: {line[:60]!r}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def from_sources(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flag, then GCHAT_* variable, then default; values converted to the
    field's type. Raises ValueError naming the setting on a bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(_env_name(f.name))
        if raw is None:
            continue
        kind: type = type(f.default)
        try:
            values[f.name] = _bool(raw) if kind is bool else kind(raw) if kind is not str else raw
        except ValueError:
            raise ValueError(f"{f.name}: {raw!r} is not a valid {kind.__name__}") from None
        choices = f.metadata["choices"]
        if choices:  # any case; the value is the choice as spelled here
            canonical = {c.lower(): c for c in choices}
            if raw.lower() not in canonical:
                raise ValueError(f"{f.name}: {raw!r} is not one of {', '.join(choices)}")
            values[f.name] = canonical[raw.lower()]
    settings = Settings(**values)
    if not settings.bind.rpartition(":")[2].isdigit():
        raise ValueError(f"bind: {settings.bind!r} is not HOST:PORT")
    if settings.web_bind and not settings.web_bind.rpartition(":")[2].isdigit():
        raise ValueError(f"web_bind: {settings.web_bind!r} is not HOST:PORT (or empty for no web app)")
    if settings.metrics_bind and not settings.metrics_bind.rpartition(":")[2].isdigit():
        raise ValueError(f"metrics_bind: {settings.metrics_bind!r} is not HOST:PORT (or empty: none)")
    if settings.redis_url and not settings.redis_url.startswith(REDIS_FORMS):
        raise ValueError(f"redis_url: {settings.redis_url!r} does not start with one of {', '.join(REDIS_FORMS)}")
    if settings.log_format not in LOG_FORMATS:
        raise ValueError(f"log_format: {settings.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    return settings
