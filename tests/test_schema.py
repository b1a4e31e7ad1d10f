"""The schema belongs to Alembic: migrations and models cannot drift, SQLite
nodes migrate themselves, and a node refuses a MySQL schema that is behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gchat import schema
from gchat.passwords import Passwords
from tests.conftest import MariaDB
from tests.support import ROOT, ServerProcess, Wire, free_port


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GCHAT_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def upgrade_then_check(url: str) -> None:
    up = alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    check = alembic(url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    down = alembic(url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert alembic(url, "upgrade", "head").returncode == 0


def test_alembic_upgrade_then_check_on_sqlite(tmp_path: Path) -> None:
    upgrade_then_check(f"sqlite:///{tmp_path / 'a.db'}")


def test_alembic_upgrade_then_check_on_mariadb(mariadb: MariaDB) -> None:
    upgrade_then_check(mariadb.create(migrate=False))


def refused(url: str) -> tuple[int, str]:
    """Exit code and last line of a node started on `url`."""
    cmd = ServerProcess(url, port=free_port()).command()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return out.returncode, out.stderr.strip().splitlines()[-1]


def test_a_node_refuses_a_mysql_schema_that_is_behind(mariadb: MariaDB) -> None:
    url = mariadb.create(migrate=False)
    want = schema.head()
    fix = "run `gchat-admin migrate` with the same --database-url (or GCHAT_DATABASE_URL) first"
    # exit code 2 and the operator's instruction, not a crash on a missing table
    assert refused(url) == (2, f"gchat-server: database schema is at nothing, gchat needs {want}: {fix}")
    # one migration behind: the same
    assert alembic(url, "upgrade", "head").returncode == 0
    assert alembic(url, "downgrade", "-1").returncode == 0
    code, last = refused(url)
    assert code == 2 and last.startswith("gchat-server: database schema is at ") and f"gchat needs {want}: " in last
    assert " at nothing," not in last and f" at {want}," not in last
    # after the operator's migration it starts
    assert alembic(url, "upgrade", "head").returncode == 0
    ServerProcess(url).start().stop()


def admin(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCHAT_")}
    env["PYTHONPATH"] = str(ROOT)  # run from anywhere, on this tree's gchat
    return subprocess.run([sys.executable, "-m", "gchat.tools.admin", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_node_refuses_a_mysql_schema_that_is_behind_and_names_the_command(mariadb: MariaDB) -> None:
    url = mariadb.create(migrate=False)
    cmd = ServerProcess(url, port=free_port()).command()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "gchat-admin migrate" in last
    check = admin("--database-url", url, "migrate", "--check")
    assert check.returncode == 1 and "gchat-admin migrate" in check.stderr
    # the command it names, run as the operator would: it needs no checkout
    done = admin("--database-url", url, "migrate")
    assert done.returncode == 0, done.stderr
    assert "(was empty)" in done.stdout
    check = admin("--database-url", url, "migrate", "--check")
    assert check.returncode == 0 and "newest schema" in check.stdout
    assert alembic(url, "check").returncode == 0
    ServerProcess(url).start().stop()


def test_admin_on_a_relative_sqlite_url_elsewhere_says_where_it_looked(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["users"], ["groups", "--json"], ["migrate", "--check"], ["reset-online", "--all", "--force"]):
        out = admin("--database-url", "sqlite:///gchat.db", *args, cwd=elsewhere)
        assert out.returncode == 1, out
        assert f"no SQLite database at {elsewhere / 'gchat.db'}" in out.stderr
        assert "relative to the current directory" in out.stderr and "Traceback" not in out.stderr
    assert list(elsewhere.iterdir()) == []  # nothing created
    # migrate is the one command that makes the file, and says where
    out = admin("--database-url", "sqlite:///gchat.db", "migrate", cwd=elsewhere)
    assert out.returncode == 0 and str(elsewhere / "gchat.db") in out.stdout
    assert admin("--database-url", "sqlite:///gchat.db", "users", cwd=elsewhere).returncode == 0


def test_a_sqlite_node_brings_its_own_database_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    node = ServerProcess(url).start()
    node.stop()
    check = alembic(url, "check")
    assert check.returncode == 0 and "No new upgrade operations detected" in check.stdout + check.stderr
    assert not any("Traceback" in line for line in node.lines), node.log()


def _fill_at_0002(url: str) -> tuple[int, int, int]:
    """A database as the release before the log left it: two users, a group
    of both, and messages stored for the second user. Returns (a, b, group)."""
    from sqlalchemy import create_engine, text

    assert alembic(url, "upgrade", "0002").returncode == 0
    engine = create_engine(url)
    with engine.begin() as conn:
        for name in ("old_a", "old_b"):
            conn.execute(text("INSERT INTO user (name, password, state) VALUES (:n, :p, 'online')"),
                         {"n": name, "p": Passwords(time_cost=1, memory_kib=8).hash("pw")})
        a, b = (conn.execute(text("SELECT id FROM user WHERE name = :n"), {"n": n}).scalar_one()
                for n in ("old_a", "old_b"))
        conn.execute(text("INSERT INTO allgroup (groupname, groupdesc) VALUES ('old_g', '')"))
        g = conn.execute(text("SELECT id FROM allgroup WHERE groupname = 'old_g'")).scalar_one()
        conn.execute(text("INSERT INTO groupuser (groupid, userid, grouprole) VALUES (:g, :a, 'creator'), "
                          "(:g, :b, 'normal')"), {"g": g, "a": a, "b": b})
        for i in range(3):
            body = json.dumps({"msgid": 5, "id": a, "name": "old_a", "to": b, "msg": f"stored {i}",
                               "time": "2026-11-26 10:00:00"})
            conn.execute(text("INSERT INTO offlinemessage (userid, message) VALUES (:u, :m)"), {"u": b, "m": body})
    engine.dispose()
    return a, b, g


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_upgrading_to_the_log_keeps_stored_messages_and_groups(backend: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else \
        request.getfixturevalue("mariadb").create(migrate=False)
    a, b, g = _fill_at_0002(url)
    assert alembic(url, "upgrade", "head").returncode == 0
    node = ServerProcess(url).start()
    try:
        with Wire(node.address) as wb:
            stored = [json.loads(m)["msg"] for m in wb.login(b).get("offlinemsg", [])]
            assert stored == ["stored 0", "stored 1", "stored 2"]  # oldest first, as before the upgrade
            with Wire(node.address) as wa:
                wa.login(a)
                # the group kept its members: the log's conversation reaches them
                ack = wa.request({"msgid": 9, "groupid": g, "msg": "after", "seq": 1})
                assert (ack["errno"], ack["members"], ack["cseq"]) == (0, 1, 1)
                assert wb.recv()["msg"] == "after"
            assert wb.request({"msgid": 10, "seq": 9})["errno"] == 0
        with Wire(node.address) as again:  # handed over once
            assert "offlinemsg" not in again.login(b)
    finally:
        node.stop()
