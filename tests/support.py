"""Test support: free ports, gchat-server processes, a raw wire client (the
client library's RawClient, held to terminated frames).

Servers run as real processes on real sockets (python -m gchat), started
on a free port and stopped after; nothing here is mocked.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gchat.client import ConnectionLost, RawClient, RequestTimeout
from gchat.protocol import FrameDecoder, loads

ROOT = Path(__file__).resolve().parent.parent
_names = itertools.count(1)


class HandedOver:
    """The part of a fake connection (gchat.sessions.LogPeer) that hands
    every push to the kernel at once: nothing unsent, nothing queued,
    nothing to settle before a cursor is written."""

    def unsent(self) -> dict[int, int]:
        return {}

    def queued(self) -> int:
        return 0

    def settle(self) -> dict[int, int]:
        return {}


def _unassigned_ports() -> range:
    """Ports the kernel never gives a connecting socket: those above its
    ephemeral range (below it where that range reaches the top)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    ports = range(high + 1, 65536) if 65535 - high >= 1000 else range(max(1024, low - 8000), low)
    # pytest-xdist's workers (gw0, gw1, ...) each take every n-th one: never the same port twice
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return ports[int(worker) % n::n] if worker.isdigit() else ports


_UNASSIGNED = _unassigned_ports()
_handed: set[int] = set()
_pick = random.Random(os.getpid() ^ time.monotonic_ns())


def free_port() -> int:
    """A free port for a server that binds it later (redis-server, nginx,
    mariadbd cannot bind port 0 and say which they got). Not one the kernel
    picks (bind to port 0): any of the suite's thousands of client sockets
    could be given that one meanwhile, and the server then fails to start
    (EADDRINUSE). Taken from outside the ephemeral range, never twice in a
    run, and free now: nothing but a server told its port binds there."""
    for _ in range(1000):
        port = _pick.choice(_UNASSIGNED)
        if port in _handed:
            continue
        _handed.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT is not free either
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_UNASSIGNED}")


def unique(prefix: str = "u") -> str:
    """A user or group name no other test uses (the stores outlive a test)."""
    return f"{prefix}{next(_names)}_{uuid.uuid4().hex[:8]}"


class ServerProcess:
    """A gchat-server process. `start()` returns once it logged "ready"."""

    def __init__(self, database_url: str, *, redis_url: str = "", extra: Sequence[str] = (),
                 env: dict[str, str] | None = None, port: int | None = None, node_id: str = "") -> None:
        self.host = "127.0.0.1"
        # Not 0 (a port the kernel picks): a restart keeps the port, and one
        # from the ephemeral range could be given to any of the suite's client
        # sockets while the node is down; free_port's never is. The node logs
        # the ports it bound, which are read back from its log.
        self.port = port or free_port()
        self.web_port = free_port()  # the web app and WebSocket (--web-bind)
        self.database_url = database_url
        self.redis_url = redis_url
        self.node_id = node_id or f"test-{uuid.uuid4().hex[:8]}"
        self.extra = list(extra)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.metrics_port = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def web_address(self) -> tuple[str, int]:
        return self.host, self.web_port

    @property
    def url(self) -> str:
        """The web app's page."""
        return f"http://{self.host}:{self.web_port}/"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gchat", "--bind", f"{self.host}:{self.port}",
               "--database-url", self.database_url, "--node-id", self.node_id,
               "--web-bind", f"{self.host}:{self.web_port}",
               # tests hash many passwords: the cheapest argon2id the library allows
               "--hash-time-cost", "1", "--hash-memory-kib", "8",
               # each node its own /metrics port: the default one is shared by every node on the host
               "--metrics-bind", "127.0.0.1:0"]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        return cmd + self.extra

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._ready.clear()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     cwd=ROOT, env=env)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise RuntimeError(f"gchat-server did not get ready:\n{self.log()}")
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            text = line
            if line.startswith("{"):  # --log-format json
                try:
                    text = str(json.loads(line).get("msg", line))
                except ValueError:
                    pass
            if " web app on http://" in text:
                self.web_port = int(text.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            if " ready on " in text:
                self.port = int(text.rsplit(":", 1)[1])
                self._ready.set()
            elif "metrics on http://" in text:
                self.metrics_port = int(text.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def metrics_url(self, path: str = "/metrics") -> str:
        """The node's HTTP endpoint (gchat/metrics.py), once it said where."""
        self.wait_for_log("metrics on http://")
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"gchat-server did not stop on signal {sig}:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{self.log()}")


class Flows:
    """The flows nearly every test needs, over any test client whose
    `request` sends one object and returns the next one (TCP or WebSocket)."""

    def request(self, obj: Any) -> dict[str, Any]:
        raise NotImplementedError

    def register(self, name: str | None = None, password: str = "pw") -> int:
        reply = self.request({"msgid": 3, "name": name or unique(), "password": password})
        assert reply["errno"] == 0, reply
        return int(reply["id"])

    def login(self, user_id: int, password: str = "pw") -> dict[str, Any]:
        reply = self.request({"msgid": 1, "id": user_id, "password": password})
        assert reply["msgid"] == 2 and reply["errno"] == 0, reply
        return reply


class Wire(Flows, RawClient):
    """A raw protocol client for the tests that are about the wire itself:
    frames exactly as given, and every frame the node sends, in order
    (`request` is the next frame, not the matched reply of `call`). Frames
    must be terminated: the decoder is the node's own FrameDecoder, not the
    client's splitter that also takes the C++ original's unterminated ones."""

    def __init__(self, address: tuple[str, int], terminator: bytes = b"\n", timeout: float = 10.0,
                 source: str | None = None) -> None:
        # source: a local address to connect from (any of 127/8 on loopback)
        sock = socket.create_connection(address, timeout=timeout, source_address=(source, 0) if source else None)
        super().__init__(sock, terminator=terminator, timeout=timeout, splitter=FrameDecoder(1 << 24))

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next frame, decoded; AssertionError if none arrives in time."""
        return loads(self.recv_frame(timeout))  # type: ignore[no-any-return]

    def recv_frame(self, timeout: float | None = None) -> bytes:
        """The next frame; AssertionError if none arrives in time,
        ConnectionError once the node has closed the connection."""
        try:
            return self.next_frame(timeout)
        except RequestTimeout:
            raise AssertionError("no frame arrived") from None
        except ConnectionLost as e:
            raise ConnectionError(str(e)) from e

    def nothing(self, wait: float = 0.3) -> None:
        """Assert that no frame arrives within `wait` seconds. Passes falsely
        on a slow machine: prefer a positive sign (a later message on the same
        path is the next frame), as the tests do."""
        try:
            frame = self.recv_frame(wait)
        except AssertionError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (after any frames)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    self.frames += self.read()
                except RequestTimeout:
                    return False
                except ConnectionLost:
                    return True
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def request(self, obj: Any) -> dict[str, Any]:
        self.send(obj)
        return self.recv()


def user(address: tuple[str, int], terminator: bytes = b"\n", name: str | None = None) -> tuple[Wire, int]:
    """A new registered user, logged in on its own connection."""
    w = Wire(address, terminator)
    uid = w.register(name)
    w.login(uid)
    return w, uid
