"""gchat-bench: a load generator for any server of docs/protocol.md part A.

    gchat-bench pingpong --server 127.0.0.1:6000 --pairs 50 --server-pid PID
    gchat-bench group --members 50 --rate 2000 --procs 2
    gchat-bench onetoone --pairs 100 --rate 1000 --procs 2 --resume --users-file users.jsonl
    gchat-bench login --users 1000 --concurrency 30 --register
    gchat-bench login --users 20000 --concurrency 200 --resume --users-file users.jsonl
    gchat-bench connections --users 50000 --sources 127.0.0.1,127.0.0.2 --users-file users.jsonl
    gchat-bench offline --pairs 1 --messages 1000
    gchat-bench pingpong --server ws://127.0.0.1:6080 --pairs 50    # over WebSocket
    gchat-bench crowd --server 127.0.0.1:6001 --server 127.0.0.1:6002 --server 127.0.0.1:6003 \
        --redis-url redis://127.0.0.1:6390/0 --users 50000 --procs 4 --users-file crowd.jsonl

The parent process prepares (users, the group), starts `--procs` bench
processes, each driving its share of the users on gevent, starts them all at
one instant, prints a progress line each second and merges their counts.
With `--server-pid` (repeatable: the nodes of a cluster) it reads the
server's CPU time and memory from /proc. A bench process that used more than
90% of a core is reported: its figures then measure the bench, not the server.
A cluster variant is any scenario run with several `--server` (users spread
round-robin: every pingpong or onetoone pair spans two nodes, a group all
of them; --local keeps each pair, or each of `--groups` groups, on one
node) or through nginx.

No monkey patching: the bench uses gevent's sockets explicitly, so the
parent's blocking waits (pipes, /proc) stay plain.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import asdict, fields
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from gchat.client import RequestTimeout
from gchat.protocol import MsgId
from gchat.tools.bench import scenarios
from gchat.tools.bench.stats import proc_cpu, proc_rss, raise_fd_limit, self_cpu
from gchat.tools.bench.wire import BenchError, Conn, parse_address

# a bench process above this share of one core measures itself
SATURATED = 0.9
READY_TIMEOUT = 600.0


def _worker_main(scenario: str, task: scenarios.Task, opts: dict[str, Any], shared: Any, index: int,
                 pipe: Connection, barrier: Any) -> None:
    import gevent

    raise_fd_limit(1 << 20)
    try:
        worker = scenarios.WORKERS[scenario](task, scenarios.Options(**opts))
        worker.barrier = barrier

        def publish() -> None:
            while True:
                shared[3 * index: 3 * index + 3] = [worker.sent, worker.received, worker.errors]
                gevent.sleep(0.2)

        worker.prepare()
        publisher = gevent.spawn(publish)
        pipe.send(("ready", None))
        go = pipe.recv()
        cpu0, wall0 = self_cpu(), time.monotonic()
        result = worker.run(go)
        result["cpu_s"] = self_cpu() - cpu0
        result["wall_s"] = max(time.monotonic() - max(wall0, go), 1e-9)
        publisher.kill()
        shared[3 * index: 3 * index + 3] = [worker.sent, worker.received, worker.errors]
        pipe.send(("done", result))
    except BaseException:  # reported to the parent, which stops the run
        pipe.send(("error", traceback.format_exc()))


def probe_part_b(address: tuple[str, int]) -> bool:
    """Does the server echo `seq` (part B)? A login with an id nobody has:
    gchat answers errno 1 with the seq, the original without it."""
    conn = Conn(address, timeout=15)
    try:
        reply = conn.call({"msgid": MsgId.LOGIN, "id": 0, "password": "probe", "seq": 1})
    except RequestTimeout:
        return False
    finally:
        conn.close()
    return reply.get("seq") == 1


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_before": os.getloadavg()[0]}


def run(opts: scenarios.Options, pids: list[int], quiet: bool = False,
        redis_pids: list[int] | None = None) -> dict[str, Any]:
    """Plan, start the processes, drive the progress line, merge. The CPU of
    redis_pids is reported beside the server's, not in it."""
    redis_pids = redis_pids or []
    raise_fd_limit(1 << 20)
    info = machine()
    tasks = scenarios.PLANS[opts.scenario](opts)
    ctx = multiprocessing.get_context("spawn")
    shared = ctx.Array("q", 3 * len(tasks), lock=False)
    barrier = ctx.Barrier(len(tasks))
    pipes: list[Connection] = []
    procs = []
    for i, task in enumerate(tasks):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(opts.scenario, task, asdict(opts), shared, i, child_end, barrier),
                        daemon=True)
        p.start()
        procs.append(p)
        pipes.append(parent_end)
    try:
        for pipe in pipes:
            if not pipe.poll(READY_TIMEOUT):
                raise RuntimeError("a bench process did not get ready")
            kind, payload = pipe.recv()
            if kind != "ready":
                raise RuntimeError(f"bench process failed while preparing:\n{payload}")
        rss0 = sum(proc_rss(p) for p in pids)
        cpu0 = sum(proc_cpu(p) for p in pids)
        redis0 = sum(proc_cpu(p) for p in redis_pids)
        go = time.monotonic() + 0.3
        for pipe in pipes:
            pipe.send(go)
        results, peak = _collect(pipes, shared, go, pids, opts, quiet)
        cpu1 = sum(proc_cpu(p) for p in pids)
        redis1 = sum(proc_cpu(p) for p in redis_pids)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    report = scenarios.MERGES[opts.scenario](results, opts)
    report["machine"] = info
    report["part_b"] = opts.part_b
    deliveries = report.get("deliveries") or report.get("logins") or 0
    if pids:
        report["server_cpu_s"] = round(cpu1 - cpu0, 3)
        report["server_cpu_us_per_delivery" if "deliveries" in report else "server_cpu_us_per_login"] = (
            round((cpu1 - cpu0) / deliveries * 1e6, 2) if deliveries else None)
        if opts.scenario == "connections":
            n = report["connections"]
            report["server_rss_before_mib"] = round(rss0 / 2**20, 1)
            report["server_rss_held_mib"] = round(peak / 2**20, 1)
            report["server_bytes_per_connection"] = round((peak - rss0) / n) if n else None
    if redis_pids:
        report["redis_cpu_s"] = round(redis1 - redis0, 3)
        report["redis_cpu_us_per_delivery"] = round((redis1 - redis0) / deliveries * 1e6, 2) if deliveries else None
    bench_cpu = [r["cpu_s"] / r["wall_s"] for r in results]
    report["bench_cpu_per_proc"] = [round(x, 2) for x in bench_cpu]
    report["bench_saturated"] = any(x > SATURATED for x in bench_cpu)
    return report


def _collect(pipes: list[Connection], shared: Any, go: float, pids: list[int], opts: scenarios.Options,
             quiet: bool) -> tuple[list[dict[str, Any]], int]:
    results: dict[int, dict[str, Any]] = {}
    last_recv, last_t = 0, go
    cpu_last = sum(proc_cpu(p) for p in pids) if pids else 0.0
    peak_rss = 0
    while len(results) < len(pipes):
        for ready in wait([p for i, p in enumerate(pipes) if i not in results], timeout=1.0):
            pipe = cast(Connection, ready)  # wait() returns what it was given
            kind, payload = pipe.recv()
            if kind == "error":
                raise RuntimeError(f"bench process failed:\n{payload}")
            results[pipes.index(pipe)] = payload
        now = time.monotonic()
        sent, recv, errors = (sum(shared[i::3]) for i in range(3))
        if pids:
            peak_rss = max(peak_rss, sum(proc_rss(p) for p in pids))
        if not quiet and now - last_t >= 0.9:
            rate = (recv - last_recv) / (now - last_t)
            line = f"{now - go:6.1f}s sent {sent:>9} received {recv:>10} ({rate:>9.0f}/s) errors {errors}"
            if pids:
                cpu = sum(proc_cpu(p) for p in pids)
                line += f" server cpu {100 * (cpu - cpu_last) / (now - last_t):5.0f}%"
                cpu_last = cpu
            tty = sys.stderr.isatty()
            print(("\r" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last_recv, last_t = recv, now
    if not quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    return [results[i] for i in range(len(pipes))], peak_rss


def format_report(r: dict[str, Any]) -> str:
    lines = [f"scenario {r['scenario']} on {', '.join(r['servers'])} ({r['procs']} bench process(es); "
             f"{r['machine']['cores']} cores, {r['machine']['memory_gib']} GiB, {r['machine']['date']})"]
    skip = {"scenario", "servers", "procs", "machine", "error_samples"}
    for k, v in r.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            v = " ".join(f"{kk}={vv}" for kk, vv in v.items())
        lines.append(f"  {k:32} {v}")
    if r.get("error_samples"):
        lines.append("  first errors:")
        lines += [f"    {e}" for e in r["error_samples"]]
    if r.get("bench_saturated"):
        lines.append("  WARNING: a bench process saturated its core: these figures measure the bench; "
                     "run with more --procs")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gchat-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(scenarios.WORKERS))
    p.add_argument("--server", action="append", default=[], metavar="HOST:PORT",
                   help="a server to drive (repeat for a cluster: users are spread round-robin); "
                        "ws://HOST:PORT drives a node's web listener over WebSocket; default 127.0.0.1:6000")
    p.add_argument("--server-pid", action="append", type=int, default=[], metavar="PID",
                   help="read this server process's CPU and memory from /proc (repeatable)")
    p.add_argument("--redis-pid", action="append", type=int, default=[], metavar="PID",
                   help="read this Redis server's CPU from /proc, reported beside the server's (repeatable)")
    p.add_argument("--procs", type=int, default=1, help="bench processes (default 1)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load (pingpong, group, onetoone)")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for messages still on their way")
    p.add_argument("--pairs", type=int, default=50, help="pingpong, onetoone, offline: pairs of users")
    p.add_argument("--members", type=int, default=50, help="group: members of a group, all online, all sending")
    p.add_argument("--groups", type=int, default=1,
                   help="group: groups of --members users each, sharing --rate (default 1)")
    p.add_argument("--rate", type=float, default=2000.0, help="group, onetoone: messages per second offered, in total")
    p.add_argument("--local", action="store_true",
                   help="onetoone, pingpong: both users of a pair on one node (pairs round-robin over --server); "
                        "group: a group's members all on one node (groups round-robin); so no message crosses. "
                        "Default: users round-robin, every pair and group spans the nodes")
    p.add_argument("--messages", type=int, default=1000, help="offline: messages stored per receiver")
    p.add_argument("--users", type=int, default=1000, help="login, connections, crowd: users")
    p.add_argument("--concurrency", type=int, default=10, help="login, connections, crowd: logins at once (in total)")
    p.add_argument("--register", action="store_true", help="login: register each user in the storm too")
    p.add_argument("--resume", action="store_true",
                   help="login, connections, onetoone: log in with resume tokens (fetched once, kept in --users-file)")
    p.add_argument("--hold", type=float, default=5.0, help="connections: seconds to hold them open; "
                                                                "crowd: seconds idle before the nodes are sampled")
    p.add_argument("--redis-url", default="", help="crowd: the cluster's Redis (broadcasts, who is online)")
    p.add_argument("--broadcasts", type=int, default=3, help="crowd: operator broadcasts sent to the whole crowd")
    p.add_argument("--users-file", default="", help="reuse (and extend) the users kept in this JSON-lines file")
    p.add_argument("--sources", default="", help="comma-separated source addresses (127.0.0.x) to go past "
                                                "the ~28,000 ephemeral ports of one address")
    p.add_argument("--setup-concurrency", type=int, default=16,
                   help="registrations at once while preparing (1 against a server that does not echo seq)")
    p.add_argument("--acks", action="store_true", help="put seq on chat messages and count acknowledgements")
    p.add_argument("--classic", action="store_true", help="part A only: never send seq")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    servers = [parse_address(s) for s in args.server] or [("127.0.0.1", 6000)]
    known = {f.name for f in fields(scenarios.Options)}
    values = {k: v for k, v in vars(args).items() if k in known}
    values["sources"] = [s for s in args.sources.split(",") if s]
    opts = scenarios.Options(servers=servers, **values)
    opts.part_b = False if args.classic else probe_part_b(servers[0])
    if not opts.part_b:
        # a server without part B may be the C++ original, which crashes when
        # registrations overlap
        opts.setup_concurrency = 1
    if args.acks and not opts.part_b:
        print("gchat-bench: --acks needs a server that echoes seq (part B)", file=sys.stderr)
        return 2
    try:
        report = run(opts, args.server_pid, quiet=args.quiet, redis_pids=args.redis_pid)
    except (RuntimeError, OSError, BenchError) as e:
        print(f"gchat-bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    return 0
