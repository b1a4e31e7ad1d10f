"""The schema belongs to Alembic: migrations and models cannot drift, SQLite
nodes migrate themselves, and a node refuses a MySQL schema that is behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gchat import schema
from tests.conftest import MariaDB
from tests.support import ROOT, ServerProcess, free_port


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
