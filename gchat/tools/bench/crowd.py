"""The crowd: every user of a large run logged in at once over the nodes of a
cluster, then reached by one message each (issue 16: 50,000 connections over
three nodes, each process under the 20,000 open-file limit).

One run, in phases that every bench process starts together (a barrier
across the processes, waited on in a native thread so that the gevent loop
goes on reading meanwhile):

1. **password**: each user connects to its node (users spread round-robin
   over `--server`, source addresses over `--sources`) and logs in with its
   password, asking for a resume token; the crowd's time is from the first
   connect to the last login reply, over every process.
2. the nodes' resident memory is sampled after `--hold` seconds idle: the
   bytes per connection of each node are its growth since the start of the
   run over the connections it holds.
3. **resume**: every connection is closed (no log-out: that would revoke the
   token), the bench waits until Redis says the nodes let every user go,
   then the whole crowd logs in again with its tokens; timed the same way,
   with the nodes' CPU per login.
4. **broadcast**, `--broadcasts` times: gchat-admin's broadcast (a system
   message to every user online, through the cluster's Redis) carries the
   tag `b0.<k>.<t_ns>` (see wire.py); every connection counts what it got,
   so lost and duplicated are exact, and the time to the last delivery is
   taken on the system-wide monotonic clock.
5. **group**, `--broadcasts` times, when the users file has a group
   (`USERS_FILE.group`, written by `scripts/crowd-seed --group`): the run's
   first user sends a group message (msgid 9) to the group whose members
   are the whole crowd, tagged `b<sender>.<k>.<t_ns>`; counted as the
   broadcasts are (the sender gets no copy: expected is the crowd less
   one). With a group, every login leaves the member lists out
   (`"group_members": false`, docs/protocol.md section F, "A large group"):
   part A's reply would list all the group's members, some 5.5 MB each.

Worker 0 of the run samples the nodes (`--server-pid`, in the order of
`--server`) and sends the broadcasts and the group messages.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import gevent
import redis
from gevent.pool import Pool

from gchat.client import GchatError, RequestTimeout
from gchat.cluster.reaper import Reaper
from gchat.cluster.redis_keys import users_key
from gchat.config import Settings
from gchat.protocol import Errno, MsgId
from gchat.tools.admin import reach
from gchat.tools.bench import accounts
from gchat.tools.bench.scenarios import Options, Result, Task, Worker, _split
from gchat.tools.bench.stats import Latencies, percentiles, proc_cpu, proc_rss
from gchat.tools.bench.wire import BenchError, Conn, read_tag

# one process may hold at most 20,000 open files on this machine: a bench
# process's share of the crowd stays below, with room for its own files
MAX_PER_PROC = 19_000
# how long the nodes may take to let a closed crowd go, and a broadcast to arrive
RELEASE_TIMEOUT = 180.0
BARRIER_TIMEOUT = 1800.0


def online(client: redis.Redis) -> int:
    """Users the live nodes hold, as the presence store counts them."""
    alive = [n for n, up in Reaper(client).live_nodes().items() if up]
    return sum(int(client.scard(users_key(n))) for n in alive)


def plan_crowd(opts: Options) -> list[Task]:
    if not opts.redis_url:
        raise BenchError("crowd needs the cluster's --redis-url (the broadcast and the wait for release go through it)")
    per_proc = -(-opts.users // opts.procs)
    if per_proc > MAX_PER_PROC:
        raise BenchError(f"{per_proc} connections per bench process is past the open-file limit: "
                         f"use --procs {-(-opts.users // MAX_PER_PROC)} or more")
    users = accounts.ensure(opts.servers[0], opts.users, opts.users_file, opts.setup_concurrency)
    before = online(redis.Redis.from_url(opts.redis_url, socket_timeout=10))
    group = crowd_group(opts.users_file, opts.users)
    return [{"users": [(i, accounts.to_wire([a])[0]) for i, a in share], "first": k == 0, "online_before": before,
             "group": group, "sender": users[0].id}
            for k, share in enumerate(_split(list(enumerate(users)), opts.procs))]


def crowd_group(users_file: str, users: int) -> int | None:
    """The group scripts/crowd-seed made of the file's users, if any; it must
    hold every user of the run (the file's first `users`)."""
    path = users_file + ".group"
    if not users_file or not os.path.exists(path):
        return None
    with open(path) as f:
        group = json.load(f)
    if group["members"] < users:
        raise BenchError(f"{path}: the group has {group['members']} members, fewer than --users {users}: "
                         f"run scripts/crowd-seed --group again for {users}")
    return int(group["groupid"])


class Crowd(Worker):
    def prepare(self) -> None:
        self.users = [(i, accounts.Account(**w)) for i, w in self.task["users"]]
        self.conns: dict[int, Conn] = {}
        self.first: bool = self.task["first"]
        self.group: int | None = self.task.get("group")
        self.sender: int = self.task.get("sender", 0)
        self.redis = redis.Redis.from_url(self.opts.redis_url, socket_timeout=10)
        self.nodes: list[dict[str, Any]] = []
        self.fds_peak = 0
        if self.first:
            # the nodes before any connection of this run: the base of the memory figure
            self.rss_base = [proc_rss(p) for p in self.opts.server_pid]

    def run(self, go: float) -> Result:
        out: Result = {}
        conc = max(1, self.opts.concurrency // self.opts.procs)
        self.sync()
        out["password"] = self._storm(conc, token=False)
        self.sync()
        out["held_password"] = self._sample_nodes()
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
        self._wait_released()
        self.sync()
        cpu0 = [proc_cpu(p) for p in self.opts.server_pid] if self.first else []
        out["resume"] = self._storm(conc, token=True)
        self.sync()
        if self.first:
            out["resume_server_cpu_s"] = [proc_cpu(p) - c for p, c in zip(self.opts.server_pid, cpu0, strict=True)]
        out["held_resume"] = self._sample_nodes()
        out["broadcasts"] = self._reach(0, self._broadcast)
        if self.group is not None:
            out["group"] = self._reach(self.sender, self._group_message)
        out["fds_peak"] = self.fds_peak
        out["window"] = out["resume"]["end"] - out["resume"]["start"]
        for conn in self.conns.values():
            conn.close()
        return {**self.base(), **out}

    # --- the phases ------------------------------------------------------------

    def sync(self) -> None:
        """Wait for every bench process, in a native thread: this process's
        greenlets (readers, the progress counter) go on meanwhile."""
        barrier = self.barrier
        if barrier is not None:
            gevent.get_hub().threadpool.apply(barrier.wait, (BARRIER_TIMEOUT,))

    def _storm(self, conc: int, token: bool) -> dict[str, Any]:
        lat = Latencies()
        ok = throttled = 0

        def one(job: tuple[int, accounts.Account]) -> None:
            nonlocal ok, throttled
            index, a = job
            if token and not a.token:
                return  # its password login failed (counted there)
            t0 = time.monotonic()
            try:
                conn = Conn(self.opts.address(index), source=self.opts.source(index))
            except OSError as e:
                self.error(f"connect {a.id}: {e}")
                return
            try:
                while True:
                    req: dict[str, Any] = {"msgid": MsgId.LOGIN, "id": a.id, "seq": 1}
                    req.update({"token": a.token} if token else {"password": a.password, "resume": True})
                    if self.group is not None:
                        req["group_members"] = False
                    reply = conn.call(req)
                    wait = _retry_in(reply)
                    if wait is None:
                        break
                    # the node's login throttle (docs/protocol.md part C): a
                    # client waits as told and tries again, as a real one would
                    # (on a new connection: the old one's login deadline runs)
                    throttled += 1
                    conn.close()
                    gevent.sleep(wait)
                    conn = Conn(self.opts.address(index), source=self.opts.source(index))
                if reply.get("errno") != 0:
                    raise BenchError(f"login {a.id}: {reply}")
                if not token:
                    a.token = reply.get("token", "")
            except (BenchError, GchatError, OSError) as e:
                self.error(f"user {a.id}: {e}")
                conn.close()
                return
            self.conns[index] = conn
            lat.add_s(time.monotonic() - t0)
            ok += 1
            self.sent += 1
            self.received += 1

        start = time.monotonic()
        Pool(conc).map(one, self.users)
        end = time.monotonic()
        self.fds_peak = max(self.fds_peak, len(os.listdir("/proc/self/fd")))
        return {"start": start, "end": end, "logins": ok, "throttled": throttled, "lat": lat.dump()}

    def _sample_nodes(self) -> list[dict[str, Any]]:
        """After `--hold` s idle: each node's memory, descriptors and share."""
        gevent.sleep(self.opts.hold)
        self.sync()
        if not self.first:
            return []
        n = len(self.opts.servers)
        out = []
        for k, pid in enumerate(self.opts.server_pid):
            out.append({"pid": pid, "rss": proc_rss(pid), "base": self.rss_base[k],
                        "fds": len(os.listdir(f"/proc/{pid}/fd")),
                        # users are spread round-robin: node k holds the indexes k, k + n, ...
                        "users": len(range(k, self.opts.users, n)) if k < n else 0})
        return out

    def _wait_released(self) -> None:
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while online(self.redis) > self.task["online_before"]:
            if time.monotonic() > deadline:
                raise BenchError(f"the nodes still hold users {RELEASE_TIMEOUT:.0f} s after the crowd left")
            gevent.sleep(0.2)

    def _broadcast(self, k: int) -> tuple[int, str]:
        sent_ns = time.monotonic_ns()
        return sent_ns, broadcast(self.opts.redis_url, f"b0.{k}.{sent_ns}")

    def _group_message(self, k: int) -> tuple[int, str]:
        """The run's first user says something to the crowd's group (its
        ACK, read by the connection's reader, is counted if it is an error)."""
        conn = self.conns.get(0)
        if conn is None:
            raise BenchError("the group's sender (the run's first user) is not logged in")
        sent_ns = time.monotonic_ns()
        conn.send({"msgid": MsgId.GROUP_CHAT, "groupid": self.group, "msg": f"b{self.sender}.{k}.{sent_ns}",
                   "seq": 100 + k})
        return sent_ns, f"group {self.group}"

    def _reach(self, sender: int, send: Callable[[int], tuple[int, str]]) -> list[dict[str, Any]]:
        """`--broadcasts` rounds of `send` (worker 0), each counted on every
        connection by its tag: `b<sender>.<k>.<t_ns>`."""
        k_max = self.opts.broadcasts
        # per connection, one byte per round: how many times it arrived
        self.seen = {index: bytearray(k_max) for index in self.conns}
        self.got = [0] * k_max
        self.last = [0] * k_max
        self.lat_k = [Latencies() for _ in range(k_max)]
        self.tagged = sender
        readers = [gevent.spawn(self._read, index, conn) for index, conn in self.conns.items()]
        # the sender of a group message gets no copy of its own
        expect = len(self.conns) - (1 if sender and 0 in self.conns else 0)
        out = []
        for k in range(k_max):
            self.sync()
            sent_ns = 0
            said = ""
            if self.first:
                sent_ns, said = send(k)
            deadline = time.monotonic() + self.opts.drain
            while self.got[k] < expect and time.monotonic() < deadline:
                gevent.sleep(0.01)
            self.sync()
            out.append({"expected": expect, "got": self.got[k], "last_ns": self.last[k], "sent_ns": sent_ns,
                        "said": said, "lat": self.lat_k[k].dump()})
        gevent.sleep(0.5)  # a duplicate would come right behind
        for k in range(k_max):
            out[k]["unique"] = sum(1 for s in self.seen.values() if s[k])
            out[k]["dups"] = sum(s[k] - 1 for s in self.seen.values() if s[k] > 1)
        gevent.killall(readers)
        return out

    def _read(self, index: int, conn: Conn) -> None:
        seen = self.seen[index]
        while True:
            try:
                frames = conn.read_frames()
            except RequestTimeout:
                continue  # idle between broadcasts
            except GchatError as e:
                self.error(f"connection {index}: {e}")
                return
            now = time.monotonic_ns()
            for frame in frames:
                t = read_tag(frame)
                if t is None or t[0] != self.tagged or t[1] >= len(seen):
                    self._count_reply(frame)
                    continue
                _, k, sent_ns = t
                seen[k] = min(seen[k] + 1, 255)
                if seen[k] == 1:
                    self.got[k] += 1
                    self.last[k] = max(self.last[k], now)
                    self.lat_k[k].add_ns(now - sent_ns)


def _retry_in(reply: dict[str, Any]) -> float | None:
    """The wait of a login refused by the node's throttle (errno 10, "retry
    in N s"); None for any other reply."""
    if reply.get("errno") != Errno.RATE_LIMITED:
        return None
    m = re.search(r"retry in (\d+) s", str(reply.get("errmsg", "")))
    return float(m[1]) if m else 1.0


def broadcast(redis_url: str, text: str) -> str:
    """gchat-admin broadcast, as the operator runs it; what it printed."""
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        reach.broadcast(Settings(redis_url=redis_url), argparse.Namespace(text=text))
    return said.getvalue().strip()


def merge_crowd(results: list[Result], opts: Options) -> Result:
    first = results[0]  # the worker that sampled the nodes

    def phase(name: str) -> dict[str, Any]:
        start = min(r[name]["start"] for r in results)
        end = max(r[name]["end"] for r in results)
        logins = sum(r[name]["logins"] for r in results)
        return {"logins": logins, "all_online_s": round(end - start, 3),
                "told_to_wait": sum(r[name]["throttled"] for r in results),
                "logins_per_s": round(logins / max(end - start, 1e-9), 1),
                "latency_ms": percentiles(r[name]["lat"] for r in results)}

    def nodes(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"pid": s["pid"], "connections": s["users"], "open_files": s["fds"],
                 "rss_before_mib": round(s["base"] / 2**20, 1), "rss_held_mib": round(s["rss"] / 2**20, 1),
                 "bytes_per_connection": round((s["rss"] - s["base"]) / s["users"]) if s["users"] else None}
                for s in samples]

    def rounds(name: str) -> list[dict[str, Any]]:
        out = []
        for k in range(opts.broadcasts):
            parts = [r[name][k] for r in results]
            sent_ns = max(p["sent_ns"] for p in parts)
            expected = sum(p["expected"] for p in parts)
            unique = sum(p["unique"] for p in parts)
            last = max(p["last_ns"] for p in parts)
            out.append({"reached": unique, "expected": expected, "lost": expected - unique,
                        "duplicates": sum(p["dups"] for p in parts),
                        "last_delivery_ms": round((last - sent_ns) / 1e6, 1) if last else None,
                        "latency_ms": percentiles(p["lat"] for p in parts),
                        "admin": next((p["said"] for p in parts if p["said"]), "")})
        return out

    casts = rounds("broadcasts")
    group = rounds("group") if "group" in first else []
    resume = phase("resume")
    cpu = sum(first.get("resume_server_cpu_s", []))
    out: Result = {
        "scenario": opts.scenario,
        "servers": [f"{h}:{p}" for h, p in opts.servers],
        "procs": opts.procs,
        "users": opts.users,
        "password": phase("password"),
        "resume": resume,
        "resume_server_cpu_us_per_login": round(cpu / resume["logins"] * 1e6, 1) if resume["logins"] else None,
        "nodes_after_password": nodes(first["held_password"]),
        "nodes_after_resume": nodes(first["held_resume"]),
        "broadcasts": casts,
        "group_messages": group,
        "not_logged_in": opts.users - resume["logins"],
        "lost": sum(c["lost"] for c in casts + group),
        "duplicates": sum(c["duplicates"] for c in casts + group),
        "bench_open_files_peak": [r["fds_peak"] for r in results],
        "sent": sum(r["sent"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:5],
    }
    return out
