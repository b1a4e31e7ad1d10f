"""A plain `pip install .` (not editable) in a fresh virtual environment gives
a working gchat-server: the migrations ship inside the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support import ROOT, Wire

META = """
import importlib.metadata as m
md = m.metadata("gchat")
print(md["License"]); print(md["Version"]); print("|".join(md.get_all("Classifier") or []))
print("|".join(md.get_all("Provides-Extra") or []))
print("|".join(r for r in md.get_all("Requires-Dist") or [] if "extra" in r and "plot" in r))
"""


def test_pip_install_in_a_fresh_venv_gives_a_working_server(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__", "*.db"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", str(src)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]

    work = tmp_path / "work"
    work.mkdir()
    # the package's metadata, and the migrations usable without the checkout
    meta = subprocess.run([str(venv / "bin" / "python"), "-c", META], capture_output=True, text=True, cwd=work,
                          timeout=60)
    assert meta.returncode == 0, meta.stderr
    license_, version, classifiers, extras, plot = meta.stdout.splitlines()
    from gchat import __version__

    assert (license_, version) == ("MIT", __version__)
    assert "Topic :: Communications :: Chat" in classifiers and "License :: OSI Approved :: MIT License" in classifiers
    assert "plot" in extras and "matplotlib" in plot
    version_out = subprocess.run([str(venv / "bin" / "gchat-server"), "--version"], capture_output=True, text=True,
                                 timeout=60)
    assert version_out.stdout.strip() == f"gchat-server {__version__}"
    migrated = subprocess.run([str(venv / "bin" / "gchat-admin"), "--database-url", "sqlite:///admin.db", "migrate"],
                              capture_output=True, text=True, cwd=work, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    assert f"{work / 'admin.db'} is at" in migrated.stdout
    help_out = subprocess.run([str(venv / "bin" / "gchat-server"), "--help"], capture_output=True, text=True,
                              cwd=work, timeout=60)
    assert help_out.returncode == 0
    for flag in ("--database-url", "--redis-url", "--node-id", "--log-level", "GCHAT_DATABASE_URL"):
        assert flag in help_out.stdout

    proc = subprocess.Popen([str(venv / "bin" / "gchat-server"), "--bind", "127.0.0.1:0", "--web-bind", "127.0.0.1:0"],
                            cwd=work, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        web_port = 0
        for line in proc.stderr:
            if " web app on http://" in line:
                web_port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            if " ready on " in line:
                port = int(line.rsplit(":", 1)[1])
                break
        else:
            raise AssertionError("the installed server never got ready")
        with Wire(("127.0.0.1", port)) as w:
            w.login(w.register())
        # the web app ships inside the package too
        for path, text in (("/", b"<!doctype html>"), ("/app.js", b"WebSocket")):
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=10) as page:
                assert page.status == 200 and text in page.read()
        assert (work / "gchat.db").exists()  # the embedded default: SQLite here
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
