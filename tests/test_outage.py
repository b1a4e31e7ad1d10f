"""Outages (issue 5, point 5): with MariaDB gone under a running node,
requests that need it get errno 11 and change nothing; live chat between
users already online keeps working; when MariaDB is back the node recovers
without a restart. MariaDB here is a private, throwaway mariadbd (the shared
one on 3306 serves other tests), killed or frozen and brought back on the
same data directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from gchat import schema
from gchat.store import Database
from tests.cluster_support import wait_until
from tests.support import ServerProcess, Wire, free_port, unique, user


class PrivateMariaDB:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.datadir = root / "data"
        self.tmpdir = root / "tmp"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        for tool in ("mariadb-install-db", "/usr/sbin/mariadbd"):
            if not shutil.which(tool):
                pytest.fail(f"{tool} is required for the outage test")
        # A tmpdir of its own: in /tmp, the bootstrap's temporary tables once
        # met a file of the same name (CI: "Could not remove temporary table
        # '/tmp/#sql-temptable-...'", then "Unknown table 'mysql.tmp_user_sys'").
        self.tmpdir.mkdir(exist_ok=True)
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                        f"--tmpdir={self.tmpdir}", "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--tmpdir={self.tmpdir}",
             f"--socket={self.root / 'sock'}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
             "--skip-log-bin", "--innodb-buffer-pool-size=16M", f"--pid-file={self.root / 'pid'}"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "err.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 60
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2).close()
                return
            except pymysql.MySQLError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.root / "err.log").read_text()[-2000:]) from None
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}?charset=utf8mb4"


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    m = PrivateMariaDB(tmp_path)
    m.install()
    m.start()
    conn = pymysql.connect(host="127.0.0.1", port=m.port, user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE gchat CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    conn.close()
    db = Database(m.url("gchat"))
    schema.upgrade(db)
    db.dispose()
    yield m
    m.kill()


def timed(w: Wire, req: dict) -> tuple[dict, float]:
    start = time.monotonic()
    reply = w.request(req)
    return reply, time.monotonic() - start


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_database_outage_errno_11_live_chat_and_recovery(private_mariadb, fault, tmp_path):
    m = private_mariadb
    node = ServerProcess(m.url("gchat"), extra=["--db-timeout", "2"]).start()
    try:
        (a, _), (b, bid) = user(node.address), user(node.address)
        with Wire(node.address) as c:
            cid = c.register()
        gid = a.request({"msgid": 7, "groupname": unique("g"), "seq": 1})["groupid"]
        assert b.request({"msgid": 8, "groupid": gid, "seq": 2})["errno"] == 0
        assert a.request({"msgid": 9, "groupid": gid, "msg": "before", "seq": 3})["members"] == 1
        assert b.recv()["msg"] == "before"

        if fault == "killed":
            m.kill()
        else:
            m.proc.send_signal(signal.SIGSTOP)
        waits: dict[str, float] = {}

        # an ACK means the message is in the log (docs/protocol.md section D):
        # without the database every chat is errno 11, in bounded time, and
        # nothing of it is delivered
        ack, waits["chat to an offline user"] = timed(a, {"msgid": 5, "to": cid, "msg": "lost?", "seq": 30})
        assert (ack["ack"], ack["errno"]) == (5, 11), ack
        ack, waits["chat to an online user"] = timed(a, {"msgid": 5, "to": bid, "msg": "live?", "seq": 10})
        assert (ack["ack"], ack["errno"]) == (5, 11), ack
        ack, waits["group chat"] = timed(a, {"msgid": 9, "groupid": gid, "msg": "group?", "seq": 20})
        assert (ack["ack"], ack["errno"]) == (9, 11), ack
        b.nothing(0.5)
        ack, waits["add friend"] = timed(a, {"msgid": 6, "friendid": bid, "seq": 31})
        assert (ack["ack"], ack["errno"]) == (6, 11), ack
        name = unique()
        with Wire(node.address, timeout=60) as w:
            reply, waits["register"] = timed(w, {"msgid": 3, "name": name, "password": "pw"})
            assert (reply["msgid"], reply["errno"]) == (4, 11), reply
            reply, waits["login"] = timed(w, {"msgid": 1, "id": cid, "password": "pw"})
            assert (reply["msgid"], reply["errno"]) == (2, 11), reply

        if fault == "killed":
            m.start()
        else:
            m.proc.send_signal(signal.SIGCONT)

        # the same node, not restarted, serves every request again
        with Wire(node.address, timeout=60) as w:
            def served() -> dict | None:  # type: ignore[type-arg]
                reply = w.request({"msgid": 3, "name": name, "password": "pw"})
                return reply if reply["errno"] != 11 else None

            reply = wait_until(served, 30, every=0.5, what="the store back")
            assert reply["errno"] == 0, reply  # the refused register left no user behind
        with Wire(node.address) as c:
            assert "offlinemsg" not in c.login(cid)  # the refused chat was not stored
        ack = a.request({"msgid": 6, "friendid": bid, "seq": 40})
        assert ack["errno"] == 0, ack  # the refused add friend left nothing behind
        ack = a.request({"msgid": 5, "to": bid, "msg": "after", "seq": 41})
        assert ack["errno"] == 0 and b.recv()["msg"] == "after"  # the refused ones never come
        b.nothing(0.5)
        assert node.proc is not None and node.proc.poll() is None
        print(f"\nMariaDB {fault} (db_timeout 2 s): errno 11 after "
              + ", ".join(f"{k} {v:.1f} s" for k, v in waits.items())
              + "; recovered without a restart")
        a.close(), b.close()
    finally:
        node.stop()
        assert os.path.exists(m.datadir)
