"""scripts/cluster, as a developer runs it: its overrides work, and it keeps
out of another cluster's Redis database."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pymysql

from gchat.client import Client
from tests.cluster_support import RedisServer, admin, wait_until
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, mysql_url
from tests.support import ROOT, free_port, unique

SCRIPT = ROOT / "scripts" / "cluster"


def consecutive_free_ports(n: int) -> int:
    """The first of n free ports in a row (the script numbers its nodes so)."""
    while True:
        first = free_port()
        socks = []
        try:
            for p in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


def test_overrides_and_a_redis_database_of_its_own(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    db = f"gchat_test_{uuid.uuid4().hex[:12]}"
    port, base, web_port, web_base = free_port(), consecutive_free_ports(2), free_port(), consecutive_free_ports(2)
    prefix = f"t{uuid.uuid4().hex[:6]}-node"
    env = {**os.environ, "GCHAT_CLUSTER_DIR": str(tmp_path / "state"), "GCHAT_CLUSTER_DB": db,
           "GCHAT_CLUSTER_NODE": prefix, "GCHAT_CLUSTER_REDIS": f"redis://127.0.0.1:{redis_server.port}",
           "GCHAT_CLUSTER_PORT": str(port), "GCHAT_CLUSTER_BASE": str(base),
           "GCHAT_CLUSTER_WEB_PORT": str(web_port), "GCHAT_CLUSTER_WEB_BASE": str(web_base)}
    # someone else's live cluster in database 0
    other = redis_server.client()
    other.set("gchat:node:someone-node0", "x", px=600_000)
    other.sadd("gchat:nodes", "someone-node0")
    log = open(tmp_path / "out.log", "w")
    up = subprocess.Popen([str(SCRIPT), "-n", "2"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        out = tmp_path / "out.log"
        wait_until(lambda: "gchat cluster: 2 node(s)" in out.read_text() or up.poll() is not None, 120,
                   what="scripts/cluster up")
        text = out.read_text()
        assert "gchat cluster: 2 node(s)" in text, text
        redis_url = f"redis://127.0.0.1:{redis_server.port}/1"
        assert f"redis:     {redis_url}" in text
        with Client.connect("127.0.0.1", port) as c:  # through its nginx
            c.login(c.register(unique("try"), "pw"), "pw")
        e = {"GCHAT_DATABASE_URL": mysql_url(db), "GCHAT_REDIS_URL": redis_url}
        nodes = admin("nodes", env=e)
        assert nodes.returncode == 0 and f"{prefix}0" in nodes.stdout and f"{prefix}1" in nodes.stdout
        assert "someone" not in nodes.stdout
    finally:
        down = subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        up.wait(30)
        log.close()
        redis_server.stop()
        conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                               autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        conn.close()
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
