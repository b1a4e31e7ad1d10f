"""The deploy/ files: the systemd unit passes `systemd-analyze verify`, and
the environment file holds only real settings and starts a node as it is
(with the stores swapped for this test's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from gchat import config
from gchat.config import Settings
from tests.cluster_support import admin
from tests.support import ROOT, ServerProcess, user

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "gchat@.service"
ENV_FILE = DEPLOY / "gchat.env"
# where the unit expects the installed program (a virtual environment in /opt)
UNIT_EXEC = "/opt/gchat/venv/bin/gchat-server"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is required to check deploy/gchat@.service (scripts/test installs systemd)")
    return found


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    """The unit as shipped, with its ExecStart and EnvironmentFile pointed at
    this machine's gchat-server and the example file: verify checks that
    they exist, so the paths of a real install cannot be used here."""
    server = Path(sys.executable).parent / "gchat-server"
    installed = str(server) if server.exists() else shutil.which("gchat-server")
    assert installed, "gchat-server is not installed (pip install -e .)"
    text = UNIT.read_text()
    assert UNIT_EXEC in text and "EnvironmentFile=/etc/gchat/%i.env" in text
    unit = tmp_path / "gchat@node0.service"
    unit.write_text(text.replace(UNIT_EXEC, installed).replace("/etc/gchat/%i.env", str(ENV_FILE)))
    done = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # unknown keys and sections are only warnings for systemd: they are errors here
    assert "Unknown" not in done.stderr, done.stderr


def test_a_broken_unit_fails_the_check(tmp_path: Path) -> None:
    """The check above can fail: a typo in a key is caught."""
    unit = tmp_path / "gchat@node0.service"
    unit.write_text(UNIT.read_text().replace("Restart=on-failure", "Restrat=on-failure"))
    done = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert "Unknown key" in done.stderr


def test_the_environment_file_names_only_real_settings() -> None:
    values = config.read_env_file(str(ENV_FILE))
    names = {"GCHAT_" + f.name.upper() for f in fields(Settings)}
    assert set(values) <= names, set(values) - names
    settings = config.from_sources(None, values)
    assert settings.redis_url and settings.admin_socket.startswith("/run/gchat/")
    # every setting is there, set or commented out with its default
    text = ENV_FILE.read_text()
    missing = [f.name for f in fields(Settings) if f"GCHAT_{f.name.upper()}=" not in text]
    assert not missing


def test_a_node_runs_from_the_environment_file_and_admin_reads_it(tmp_path: Path) -> None:
    env = config.read_env_file(str(ENV_FILE))
    # this test's stores and socket instead of /etc's: a lone node on SQLite
    env.update(GCHAT_DATABASE_URL=f"sqlite:///{tmp_path / 'node.db'}", GCHAT_REDIS_URL="",
               GCHAT_ADMIN_SOCKET=str(tmp_path / "admin.sock"), GCHAT_BIND="127.0.0.1:0",
               GCHAT_WEB_BIND="127.0.0.1:0")
    env_file = tmp_path / "node0.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    class FromFile(ServerProcess):
        def command(self) -> list[str]:  # nothing but the environment, as systemd starts it
            return [sys.executable, "-m", "gchat"]

    node = FromFile("unused", env=env).start()
    try:
        w, uid = user(node.address)
        done = admin("--env-file", str(env_file), "users", "--json")
        assert done.returncode == 0, done.stderr
        assert f'"id": {uid}' in done.stdout
        nodes = admin("--env-file", str(env_file), "nodes")
        assert nodes.returncode == 0 and "node0" in nodes.stdout, nodes.stderr
        w.close()
    finally:
        node.stop()
    bad = tmp_path / "bad.env"
    bad.write_text("GCHAT_BIND 127.0.0.1:6000\n")
    done = admin("--env-file", str(bad), "users")
    assert done.returncode == 2 and "bad.env:1: not KEY=VALUE" in done.stderr
