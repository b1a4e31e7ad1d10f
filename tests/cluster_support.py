"""Cluster fixtures' parts: a Redis server of our own (so a test can restart
it), nginx from the repository's nginx.conf on free ports, and several
gchat-server nodes on one MariaDB database and that Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from gchat.tools.nginxconf import STREAM_MODULE, Tls
from gchat.tools.nginxconf import render as render_nginx_conf
from tests.support import ROOT, ServerProcess, Wire, free_port

REDIS_SERVER = "/usr/bin/redis-server"
NGINX = "/usr/sbin/nginx"
# small enough to keep the kill -9 test short, large enough for a loaded
# 2-core CI machine (the heartbeat runs every second on its own thread)
FAST = ("--node-ttl", "3", "--heartbeat-interval", "1")


def wait_until(check, timeout: float = 20.0, every: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll check() until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(every)


class RedisServer:
    """redis-server on a free port, without persistence: a restart comes back
    empty, the hardest case for the cluster."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        if not os.path.exists(REDIS_SERVER):
            pytest.fail(f"{REDIS_SERVER} is required for the cluster tests (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._pings, 10, what=f"redis-server on port {self.port}")
        return self

    def _pings(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


def group_chat_until_all_in(sender: Wire, gid: int, others: int, what: str) -> str:
    """Joins made on other nodes reach the sender's node through an
    invalidation: send to the group (seq 4, 5, ...) until a reply counts
    `others` recipients; the text of that message, which every member gets."""
    tries = iter(range(4, 1000))

    def everyone() -> str | None:
        n = next(tries)
        reply = sender.request({"msgid": 9, "groupid": gid, "msg": f"all {n}", "seq": n})
        assert reply["errno"] == 0, reply
        return f"all {n}" if reply["members"] == others else None

    return str(wait_until(everyone, what=what))


def received_until(w: Wire, last: str) -> list[dict[str, Any]]:
    """Every frame up to the one whose msg is `last` (earlier tries may have
    reached this member too)."""
    got = [w.recv()]
    while got[-1]["msg"] != last:
        got.append(w.recv())
    return got

def ensure_nginx() -> None:
    """nginx with the stream module, installed when missing (as root, as CI
    runs); a missing nginx fails the test, never skips it."""
    if os.path.exists(NGINX) and STREAM_MODULE.exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx", "libnginx-mod-stream"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"nginx is required for the cluster tests; {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    if not os.path.exists(NGINX):
        pytest.fail("nginx is required for the cluster tests and was not installed")


class Nginx:
    """nginx from the repository's nginx.conf: TCP on `port`; with
    `web_upstreams` (the nodes' web listeners), the app and WebSocket on
    `web_port` too; with (certificate, key), the chat over TLS on
    `tls_port` (`tls_address`)."""

    def __init__(self, upstreams: Sequence[tuple[str, int]], workdir: Path,
                 web_upstreams: Sequence[tuple[str, int]] = (),
                 certificate: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.web_port = free_port() if web_upstreams else 0
        self.tls_port = free_port() if certificate else 0
        self.https_port = free_port() if certificate and web_upstreams else 0
        self.workdir = workdir
        self.conf = workdir / "nginx.conf"
        tls = (Tls(f"127.0.0.1:{self.tls_port}", *certificate,
                   web_listen=f"127.0.0.1:{self.https_port}" if self.https_port else "") if certificate else None)
        self.conf.write_text(render_nginx_conf((ROOT / "nginx.conf").read_text(), upstreams,
                                               f"127.0.0.1:{self.port}", workdir, web_upstreams,
                                               f"127.0.0.1:{self.web_port}" if web_upstreams else "", tls))

    @property
    def tls_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.tls_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def web_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.web_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    def start(self) -> Nginx:
        ensure_nginx()
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(self.conf), "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_until(self._listening, 10, what="nginx listening")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"nginx exited with {self.proc.returncode}: {err}")
        try:
            with Wire(self.address, timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    """Nodes on one MariaDB database and one Redis; more can be added."""

    def __init__(self, database_url: str, redis_server: RedisServer, extra: Sequence[str] = FAST) -> None:
        self.database_url = database_url
        self.redis = redis_server
        self.extra = list(extra)
        self.nodes: list[ServerProcess] = []
        self._names = 0

    def add_node(self, *extra: str) -> ServerProcess:
        self._names += 1
        node = ServerProcess(self.database_url, redis_url=self.redis.url, extra=[*self.extra, *extra],
                             node_id=f"n{self._names}-{free_port()}")
        self.nodes.append(node)
        return node.start(timeout=60)

    def add_nodes(self, n: int, *extra: str) -> list[ServerProcess]:
        """n nodes, started side by side (each spends a second or two
        importing and connecting)."""
        started: list[ServerProcess | BaseException] = [RuntimeError("not started")] * n

        def one(i: int) -> None:
            try:
                started[i] = self.add_node(*extra)
            except BaseException as e:  # reported below, in the test's thread
                started[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in started:
            if isinstance(s, BaseException):
                raise s
        return [s for s in started if isinstance(s, ServerProcess)]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def owner(self, user_id: int) -> str | None:
        """The node holding the user, as the presence store says."""
        raw = self.redis.client().get(f"gchat:online:{user_id}")
        return raw.decode() if raw else None

    def set_owner(self, user_id: int, node: ServerProcess | str | None) -> None:
        """Make the presence store name `node` (or a node id) as the user's
        (None: nobody): what a routing decision sees when the user has just
        left, or when its node has just died."""
        key = f"gchat:online:{user_id}"
        if node is None:
            self.redis.client().delete(key)
        else:
            self.redis.client().set(key, node if isinstance(node, str) else node.node_id)

    def fake_heartbeat(self, node_id: str, alive: bool) -> None:
        """A heartbeat for a node that has no process (so nothing listens on
        its channel), or none."""
        if alive:
            self.redis.client().set(f"gchat:node:{node_id}", "1", ex=120)
        else:
            self.redis.client().delete(f"gchat:node:{node_id}")


def admin(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """gchat-admin as an operator runs it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GCHAT_")}
    return subprocess.run([sys.executable, "-m", "gchat.tools.admin", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@contextlib.contextmanager
def running_cluster(database_url: str, redis_server: RedisServer, nodes: int) -> Iterator[Cluster]:
    """`nodes` nodes on one database and one Redis, stopped on the way out."""
    c = Cluster(database_url, redis_server)
    try:
        c.add_nodes(nodes)
        yield c
    finally:
        c.stop()
