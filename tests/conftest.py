"""Fixtures: the real MariaDB and Redis (required: a missing service fails
the test, never skips it), fresh databases, and gchat-server processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from tests.cluster_support import RedisServer
from tests.support import ServerProcess

MYSQL_HOST = os.environ.get("GCHAT_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("GCHAT_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("GCHAT_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("GCHAT_TEST_MYSQL_PASSWORD", "")
REDIS_URL = os.environ.get("GCHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _mysql_admin() -> pymysql.connections.Connection:  # type: ignore[type-arg]
    try:
        return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                               connect_timeout=5, autocommit=True)
    except pymysql.MySQLError as e:
        pytest.fail(f"MariaDB is required at {MYSQL_HOST}:{MYSQL_PORT} (scripts/test starts it): {e}")


def mysql_url(database: str) -> str:
    auth = MYSQL_USER + (f":{MYSQL_PASSWORD}" if MYSQL_PASSWORD else "")
    return f"mysql+pymysql://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{database}?charset=utf8mb4"


class MariaDB:
    """Creates fresh databases and drops them when the session ends."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, migrate: bool = True) -> str:
        name = f"gchat_test_{uuid.uuid4().hex[:12]}"
        conn = _mysql_admin()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        conn.close()
        self.created.append(name)
        url = mysql_url(name)
        if migrate:
            from gchat import schema
            from gchat.store import Database

            db = Database(url)
            schema.upgrade(db)
            db.dispose()
        return url

    def drop_all(self) -> None:
        conn = _mysql_admin()
        with conn.cursor() as cur:
            for name in self.created:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


# The layers of docs/testing.md, so that one runs with -m unit, -m node or -m cluster.
UNIT = {"test_protocol", "test_ratelimit", "test_cache", "test_batch", "test_outbox", "test_service", "test_fuzz",
        "test_config", "test_throttle", "test_control_broadcast", "test_router_slices", "test_transport"}
CLUSTER = {"test_cluster", "test_admin", "test_redis_modes", "test_bench_crowd", "test_presence_batch",
           "test_redis_client"}
BROWSER = {"test_browser"}


# The modules that take longest (a minute or more on a loaded 2-core machine),
# run first: with pytest-xdist (scripts/test) each worker takes a whole module
# at a time, and one of these left for the end would run alone while the other
# worker idles.
SLOW_FIRST = ["test_schema", "test_browser", "test_churn", "test_bench", "test_redis_modes", "test_lifecycle",
              "test_install", "test_admin_actions", "test_metrics", "test_log", "test_outage", "test_log_cluster"]


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rpartition(".")[2] if item.module else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a stable sort: each module's tests stay together and in their order
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item), len(rank)))
    for item in items:
        module = _module(item)
        if module in CLUSTER:
            layer = "cluster"
        elif module in BROWSER:
            layer = "browser"
        elif module in UNIT and "socket" not in item.name:  # test_fuzz's socket fuzz starts a node
            layer = "unit"
        else:
            layer = "node"
        item.add_marker(layer)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    _mysql_admin().close()
    m = MariaDB()
    yield m
    m.drop_all()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis is required at {REDIS_URL} (scripts/test starts it): {e}")
    return REDIS_URL


def database_url(backend: str, mariadb: MariaDB | None, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'gchat.db'}"
    assert mariadb is not None
    return mariadb.create()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the module's own, on a free port: a test may stop
    and restart it without disturbing anyone else."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A running node on a fresh database, one per test module and backend.
    Tests share it, so each makes its own users (tests.support.unique)."""
    m = request.getfixturevalue("mariadb") if request.param == "mariadb" else None
    url = database_url(request.param, m, tmp_path_factory.mktemp("node"))
    proc = ServerProcess(url).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Start nodes with chosen flags on a fresh SQLite store; stopped after."""
    started: list[ServerProcess] = []

    def make(*extra: str, database_url: str | None = None, **kw: object) -> ServerProcess:
        url = database_url or f"sqlite:///{tmp_path / f'node{len(started)}.db'}"
        proc = ServerProcess(url, extra=extra, **kw)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.kill()
