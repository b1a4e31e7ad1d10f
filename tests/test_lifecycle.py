"""Start-up and shutdown of a node as an operator sees them."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, ServerProcess, user


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_clean_stop_sets_connected_users_offline(tmp_path: Path, sig: int) -> None:
    db = tmp_path / "n.db"
    node = ServerProcess(f"sqlite:///{db}").start()
    ready = [line for line in node.lines if " ready on " in line]
    assert len(ready) == 1 and f"127.0.0.1:{node.port}" in ready[0]
    a, a_id = user(node.address)
    b, b_id = user(node.address)
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from user where state='online'").fetchone()[0] == 2
    assert node.stop(sig) == 0
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("select id, state from user").fetchall())
    assert states == {a_id: "offline", b_id: "offline"}
    assert a.closed() and b.closed()
    assert not any("Traceback" in line for line in node.lines), node.log()
    # a clean stop is not a lost connection (it logged "connection lost ([Errno 9] File descriptor
    # was closed in another greenlet)" for each)
    assert not any("connection lost" in line or "Errno" in line for line in node.lines), node.log()


def test_help_documents_every_flag_with_its_environment_variable() -> None:
    out = subprocess.run([sys.executable, "-m", "gchat", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag, env in [("--bind", "GCHAT_BIND"), ("--database-url", "GCHAT_DATABASE_URL"),
                      ("--redis-url", "GCHAT_REDIS_URL"), ("--node-id", "GCHAT_NODE_ID"),
                      ("--log-level", "GCHAT_LOG_LEVEL")]:
        assert flag in out.stdout and env in out.stdout


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "env.db"

    class EnvOnly(ServerProcess):
        def command(self) -> list[str]:  # no --database-url: the variable must be used
            cmd = super().command()
            i = cmd.index("--database-url")
            return cmd[:i] + cmd[i + 2 :]

    node = EnvOnly("ignored", env={"GCHAT_DATABASE_URL": f"sqlite:///{db}"}).start()
    user(node.address)
    node.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from user").fetchone()[0] == 1


def test_a_bad_flag_value_is_one_clear_error() -> None:
    out = subprocess.run([sys.executable, "-m", "gchat", "--pool-size", "many"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "pool_size" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_log_level_is_one_line_with_the_choices(how: str) -> None:
    args, env = (["--log-level", "foo"], {}) if how == "flag" else ([], {"GCHAT_LOG_LEVEL": "foo"})
    out = subprocess.run([sys.executable, "-m", "gchat", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, **env})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gchat-server: log_level: 'foo' is not one of DEBUG, INFO, WARNING, ERROR (see gchat-server --help)"]


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    node = ServerProcess(f"sqlite:///{tmp_path / 'n.db'}", extra=["--log-level", "debug"]).start()
    node.stop()
    assert any(" DEBUG " in line for line in node.lines), node.log()


def test_version() -> None:
    from gchat import __version__

    for module in ("gchat", "gchat.tools.admin"):
        out = subprocess.run([sys.executable, "-m", module, "--version"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip().endswith(f" {__version__}"), out


def test_a_stop_right_after_ready_is_clean(tmp_path: Path) -> None:
    """SIGTERM as soon as "ready" is logged (systemd, a script): the handler
    was installed after it, and the default action killed the node (status
    -15, its admin socket left behind)."""
    sock = tmp_path / "admin.sock"
    for i in range(3):
        node = ServerProcess(f"sqlite:///{tmp_path / 'n.db'}", extra=["--admin-socket", str(sock)]).start()
        assert node.stop() == 0, node.log()
        assert not sock.exists(), i
