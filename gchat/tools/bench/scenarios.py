"""The scenarios, each in two halves: `plan_*` runs in the parent (users,
groups, the split over processes) and a `Worker` runs in each bench process
(connections, the load, the counting). `merge_*` folds the workers' results
into the figures of the report.

Counting is exact: every chat message carries its sender and number (see
wire.py), senders count what they wrote (or what was acknowledged, with
--acks), receivers count each (sender, number) once; lost = expected minus
received, duplicates = received again.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.pool import Pool

from gchat.client import GchatError
from gchat.protocol import Errno, MsgId, dumps, loads
from gchat.tools.bench import accounts
from gchat.tools.bench.stats import Latencies, percentiles
from gchat.tools.bench.wire import BenchError, Conn, read_tag, tag

Task = dict[str, Any]
Result = dict[str, Any]

CHAT_TIME = "2024-01-01 00:00:00"  # the original client's `time` field; content is not checked
# Between two requests on one connection where the server gives no reply to
# wait for (part A): long enough that they never share a read on the server.
PART_A_PAUSE = 0.2


@dataclass
class Options:
    scenario: str
    servers: list[tuple[str, int]]
    sources: list[str] = field(default_factory=list)
    procs: int = 1
    duration: float = 10.0
    drain: float = 10.0
    acks: bool = False  # seq on chat messages: count what the server acknowledged
    part_b: bool = True  # the server echoes seq (set by the parent's probe)
    pairs: int = 50
    members: int = 50
    groups: int = 1  # group: how many groups of `members`, the rate shared
    rate: float = 2000.0
    messages: int = 1000
    users: int = 1000
    concurrency: int = 10
    resume: bool = False
    local: bool = False  # onetoone, pingpong: both users of a pair on one node; group: a group's members
    register: bool = False
    hold: float = 5.0
    users_file: str = ""
    setup_concurrency: int = 16
    # crowd (crowd.py): the cluster's Redis, the broadcasts sent, the nodes sampled
    redis_url: str = ""
    broadcasts: int = 3
    server_pid: list[int] = field(default_factory=list)

    def address(self, i: int) -> tuple[str, int]:
        """Users are spread over the servers round-robin: with two nodes,
        user 2k is on the first and 2k+1 on the second."""
        return self.servers[i % len(self.servers)]

    def source(self, i: int) -> str | None:
        return self.sources[i % len(self.sources)] if self.sources else None


def _split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


class Worker:
    """One bench process's share. Counters are read by the progress line.
    `barrier` (every bench process of the run) is for scenarios in phases."""

    barrier: Any = None

    def __init__(self, task: Task, opts: Options) -> None:
        self.task = task
        self.opts = opts
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.lat = Latencies()
        self.error_samples: list[str] = []
        self.sent_by: dict[int, int] = defaultdict(int)  # sender -> messages sent (open-loop scenarios)
        self.last_delivery = time.monotonic()

    def prepare(self) -> None:
        pass

    def run(self, go: float) -> Result:
        raise NotImplementedError

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:200])

    def _count_reply(self, frame: bytes) -> None:
        """A frame that is not a delivery: an ACK (with --acks) or an error."""
        try:
            reply = loads(frame)
        except ValueError:
            self.error(f"bad frame {frame[:80]!r}")
            return
        if reply.get("errno"):
            self.error(str(reply))

    def _send_paced(self, a: accounts.Account, conn: Conn, frame: Callable[[int, int, bool], bytes],
                    first: float, interval: float, stop: float) -> None:
        """The open-loop scenarios' sender: frame(n, t_ns, seq) at first,
        first + interval, ... until stop, each tagged with its *scheduled*
        time, whatever came back."""
        seq, n, t = self.opts.acks, 0, first
        base_ns = time.monotonic_ns() - int(time.monotonic() * 1e9)
        while t < stop:
            _sleep_until(t)
            try:
                conn.sock.sendall(frame(n, int(t * 1e9) + base_ns, seq) + conn.terminator)
            except OSError as e:
                self.error(f"send {a.id}: {e}")
                return
            self.sent += 1
            n += 1
            self.sent_by[a.id] = n
            t = first + n * interval

    def _deliveries(self, who: int, conn: Conn, deliver: Callable[[int, int], None]) -> None:
        """The open-loop scenarios' reader, the measured path (as in
        PingPong._read): each tagged delivery's latency is counted and
        deliver(sender, n) told; any other frame is a reply. Ends when the
        connection fails."""
        lat = self.lat
        while True:
            try:
                frames = conn.read_frames()
            except GchatError as e:
                self.error(f"user {who}: {e}")
                return
            now = time.monotonic_ns()
            for frame in frames:
                t = read_tag(frame)
                if t is None:
                    self._count_reply(frame)
                    continue
                sender, n, sent_ns = t
                self.received += 1
                lat.add_ns(now - sent_ns)
                deliver(sender, n)
            self.last_delivery = time.monotonic()

    def base(self) -> Result:
        return {"sent": self.sent, "received": self.received, "errors": self.errors,
                "error_samples": self.error_samples, "lat": self.lat.dump()}


def _sleep_until(t: float) -> None:
    left = t - time.monotonic()
    if left > 0:
        gevent.sleep(left)


def _chat(sender: accounts.Account, to: int, n: int, t_ns: int, seq: bool) -> bytes:
    req: dict[str, Any] = {"msgid": MsgId.ONE_CHAT, "id": sender.id, "name": sender.name, "to": to,
                           "msg": tag(sender.id, n, t_ns), "time": CHAT_TIME}
    if seq:
        req["seq"] = n + 1
    return dumps(req)


def _group_chat(sender: accounts.Account, group_id: int, n: int, t_ns: int, seq: bool) -> bytes:
    req: dict[str, Any] = {"msgid": MsgId.GROUP_CHAT, "id": sender.id, "name": sender.name, "groupid": group_id,
                           "msg": tag(sender.id, n, t_ns), "time": CHAT_TIME}
    if seq:
        req["seq"] = n + 1
    return dumps(req)


def _login(opts: Options, index: int, a: accounts.Account) -> Conn:
    conn = Conn(opts.address(index), source=opts.source(index))
    reply = conn.login(a.id, a.password, token=a.token if opts.resume else "", seq=opts.part_b)
    a.name = reply.get("name", a.name)
    return conn


# --- pingpong: N pairs, one message in flight per pair, closed loop ---------


def plan_pingpong(opts: Options) -> list[Task]:
    users = accounts.ensure(opts.servers[0], 2 * opts.pairs, opts.users_file, opts.setup_concurrency)
    pairs = [(i, users[2 * i], users[2 * i + 1]) for i in range(opts.pairs)]
    return [{"pairs": [(i, accounts.to_wire([a, b])) for i, a, b in share]}
            for share in _split(pairs, opts.procs)]


class PingPong(Worker):
    def prepare(self) -> None:
        self.pairs: list[tuple[accounts.Account, Conn, accounts.Account, Conn]] = []
        for i, wire in self.task["pairs"]:
            a, b = accounts.from_wire(wire)
            # on two servers the pair spans both; --local: both on one
            ia, ib = pair_nodes(self.opts, i)
            ca, cb = _login(self.opts, ia, a), _login(self.opts, ib, b)
            self.pairs.append((a, ca, b, cb))
        self.stopped = False
        self.in_flight = 0

    def run(self, go: float) -> Result:
        _sleep_until(go)
        seq = self.opts.acks
        readers = []
        for a, ca, b, cb in self.pairs:
            # a opens with message 0, b answers 1, a 2...: b expects the even numbers
            readers.append(gevent.spawn(self._read, ca, a, b, 1))
            readers.append(gevent.spawn(self._read, cb, b, a, 0))
        for a, ca, b, _ in self.pairs:
            ca.sock.sendall(_chat(a, b.id, 0, time.monotonic_ns(), seq) + ca.terminator)
            self.sent += 1
            self.in_flight += 1
        _sleep_until(go + self.opts.duration)
        self.stopped = True
        end = time.monotonic()
        while self.in_flight and time.monotonic() < end + self.opts.drain:
            gevent.sleep(0.05)
        gevent.killall(readers)
        for _, ca, _, cb in self.pairs:
            ca.close()
            cb.close()
        out = self.base()
        out["lost"] = self.in_flight  # each pair has at most one message on its way
        out["window"] = end - go
        return out

    def _read(self, conn: Conn, me: accounts.Account, partner: accounts.Account, expected: int) -> None:
        seq = self.opts.acks
        lat = self.lat
        # The measured path: frames as read, their tag by regular expression
        # (read_tag), no JSON decode and no reply matching.
        while True:
            try:
                frames = conn.read_frames()
            except GchatError as e:
                self.error(f"user {me.id}: {e}")
                return
            for frame in frames:
                t = read_tag(frame)
                if t is None:
                    self._count_reply(frame)
                    continue
                now = time.monotonic_ns()
                _, n, sent_ns = t
                self.in_flight -= 1
                self.received += 1
                lat.add_ns(now - sent_ns)
                if n != expected:
                    self.error(f"user {me.id}: got message {n}, expected {expected}")
                expected = n + 2
                if not self.stopped:
                    conn.sock.sendall(_chat(me, partner.id, n + 1, now, seq) + conn.terminator)
                    self.sent += 1
                    self.in_flight += 1


def merge_pingpong(results: list[Result], opts: Options) -> Result:
    out = _merge_common(results, opts, deliveries=sum(r["received"] for r in results))
    out["pairs"] = opts.pairs
    out["local"] = opts.local
    return out


# --- group: M members all online, all sending, open loop at an offered rate -


def plan_group(opts: Options) -> list[Task]:
    """--groups G groups of --members users each, every member sending.
    Users are spread round-robin over the servers by their index in the
    whole run (with two nodes, half of each group's members on each);
    --local puts group g's members all on server g (round-robin), so the
    nodes carry the same load and no message crosses."""
    n = opts.members
    users = accounts.ensure(opts.servers[0], opts.groups * n, opts.users_file, opts.setup_concurrency)
    groups = [users[g * n:(g + 1) * n] for g in range(opts.groups)]
    ids: list[int] = []
    for g, members in enumerate(groups):
        creator = members[0]
        conn = Conn(opts.servers[0])  # a connection each: one login a connection, as clients do
        try:
            conn.login(creator.id, creator.password)
            name = f"g_{creator.id}_{int(time.time() * 1000) % 10**9}_{g}"
            ids.append(_create_group(conn, creator, name, opts.part_b))
            conn.send({"msgid": MsgId.LOGINOUT, "id": creator.id})
        finally:
            conn.close()
    # per member: its send phase (the groups' members take turns, so each
    # group's messages come evenly spaced, G / rate apart), the index of
    # the server it logs in to (Options.address), its group, its account
    everyone = [(k * opts.groups + g, g if opts.local else g * n + k, ids[g], a)
                for g, members in enumerate(groups) for k, a in enumerate(members)]
    return [{"members": [(i, node, group_id, accounts.to_wire([a])[0]) for i, node, group_id, a in share],
             "creators": [members[0].id for members in groups]}
            for share in _split(everyone, opts.procs)]


def _create_group(conn: Conn, creator: accounts.Account, name: str, part_b: bool) -> int:
    req = {"msgid": MsgId.CREATE_GROUP, "id": creator.id, "groupname": name, "groupdesc": "gchat-bench"}
    if part_b:
        return int(conn.request({**req, "seq": 7}, "create group")["groupid"])
    # Part A has no reply: the group shows in the creator's next login. The
    # original server drops a second request that arrives in the same read
    # as the first, so each goes alone, a pause after the one before.
    conn.send(req)
    gevent.sleep(PART_A_PAUSE)
    conn.send({"msgid": MsgId.LOGINOUT, "id": creator.id})
    gevent.sleep(PART_A_PAUSE)
    reply = conn.login(creator.id, creator.password)
    for text in reply.get("groups", []):
        group = loads(text)
        if group.get("groupname") == name:
            return int(group["id"])
    raise BenchError(f"group {name} not in the creator's login reply")


class Group(Worker):
    def prepare(self) -> None:
        # (send phase, account, its connection, its group)
        self.members: list[tuple[int, accounts.Account, Conn, int]] = []
        creators = set(self.task["creators"])
        for index, node, group_id, wire in self.task["members"]:
            a = accounts.Account(**wire)
            conn = _login(self.opts, node, a)
            if a.id not in creators:
                join = {"msgid": MsgId.ADD_GROUP, "id": a.id, "groupid": group_id}
                if self.opts.part_b:
                    try:
                        reply = conn.call({**join, "seq": 8})
                    except GchatError as e:
                        raise BenchError(f"join group: {e}") from e
                    if reply.get("errno") not in (Errno.OK, Errno.CONFLICT):  # CONFLICT: a member already
                        raise BenchError(f"join group: {reply}")
                else:
                    conn.send(join)
            self.members.append((index, a, conn, group_id))
        if not self.opts.part_b:
            gevent.sleep(1.0)  # part A joins are silent: give them time to land
        # receiver -> sender -> bitmap of message numbers seen
        self.seen: dict[int, dict[int, bytearray]] = {a.id: {} for _, a, _, _ in self.members}
        self.dups = 0
        self.last_delivery = time.monotonic()

    def run(self, go: float) -> Result:
        readers = [gevent.spawn(self._read, a, c) for _, a, c, _ in self.members]
        n_all = self.opts.groups * self.opts.members  # every member of the run, each on a phase of its own
        interval = n_all / self.opts.rate  # each member sends rate / (all members) per second
        stop = go + self.opts.duration
        # phases spread over one interval, so the offered load is smooth
        senders = [gevent.spawn(self._send_paced, a, c, functools.partial(_group_chat, a, group_id),
                                go + interval * (index / n_all), interval, stop)
                   for index, a, c, group_id in self.members]
        gevent.joinall(senders)
        end = time.monotonic()
        # drain: until deliveries stop for a second, or the drain limit
        while time.monotonic() < end + self.opts.drain and time.monotonic() - self.last_delivery < 1.0:
            gevent.sleep(0.1)
        gevent.killall(readers)
        for _, _, c, _ in self.members:
            c.close()
        out = self.base()
        out["window"] = end - go
        out["sent_by"] = dict(self.sent_by)
        out["unique"] = sum(sum(bin_count(b) for b in per.values()) for per in self.seen.values())
        out["dups"] = self.dups
        return out

    def _read(self, me: accounts.Account, conn: Conn) -> None:
        seen = self.seen[me.id]

        def deliver(sender: int, n: int) -> None:
            bitmap = seen.get(sender)
            if bitmap is None:
                bitmap = seen[sender] = bytearray(1024)
            if mark(bitmap, n):
                self.dups += 1

        self._deliveries(me.id, conn, deliver)


def mark(bitmap: bytearray, n: int) -> bool:
    """Note message n as received (the bitmap grows as needed); True when
    it was already: a duplicate."""
    if n >= len(bitmap):
        bitmap.extend(bytes(max(n + 1 - len(bitmap), len(bitmap))))
    seen = bool(bitmap[n])
    bitmap[n] = 1
    return seen


def bin_count(bitmap: bytearray) -> int:
    return len(bitmap) - bitmap.count(0)


def merge_group(results: list[Result], opts: Options) -> Result:
    sent_by: dict[int, int] = {}
    for r in results:
        sent_by.update(r["sent_by"])
    others = opts.members - 1
    expected = sum(sent_by.values()) * others
    unique = sum(r["unique"] for r in results)
    out = _merge_common(results, opts, deliveries=sum(r["received"] for r in results))
    out["expected"] = expected
    out["lost"] = expected - unique
    out["duplicates"] = sum(r["dups"] for r in results)
    out["members"] = opts.members
    out["groups"] = opts.groups
    out["local"] = opts.local
    out["offered_msgs_per_s"] = opts.rate
    return out


# --- onetoone: N pairs, each user writing to its partner, open loop --------


def plan_onetoone(opts: Options) -> list[Task]:
    users = accounts.ensure(opts.servers[0], 2 * opts.pairs, opts.users_file, opts.setup_concurrency)
    if opts.resume:  # log in by token: the runs of a sweep do not each pay 2N password hashes
        accounts.fetch_tokens(opts.servers[0], users, opts.users_file, opts.setup_concurrency)
    pairs = [(i, users[2 * i], users[2 * i + 1]) for i in range(opts.pairs)]
    # a pair stays in one bench process, so the process knows when its drain is over
    return [{"pairs": [(i, accounts.to_wire([a, b])) for i, a, b in share]} for share in _split(pairs, opts.procs)]


def pair_nodes(opts: Options, i: int) -> tuple[int, int]:
    """The indexes (for Options.address) of pair i's two users. Round-robin
    by user (2i, 2i+1): on two or three nodes every pair spans two nodes.
    --local: both on pair i's node, so the nodes carry the same users and the
    same load, and no message crosses."""
    return (i, i) if opts.local else (2 * i, 2 * i + 1)


class OneToOne(Worker):
    """Every user sends to its partner every 2N/rate seconds, whatever came
    back (open loop, unlike pingpong), so the offered rate is the rate asked
    and a server that falls behind shows it in the latency. As in `group`,
    latency runs from the *scheduled* send time."""

    def prepare(self) -> None:
        # (send phase in 2N-ths of the interval, user, its connection, its partner)
        self.users: list[tuple[int, accounts.Account, Conn, accounts.Account]] = []
        for i, wire in self.task["pairs"]:
            a, b = accounts.from_wire(wire)
            ia, ib = pair_nodes(self.opts, i)
            ca, cb = _login(self.opts, ia, a), _login(self.opts, ib, b)
            # send phases: a pair's two users half an interval apart, all phases spread evenly
            n = self.opts.pairs
            self.users += [(i, a, ca, b), (i + n, b, cb, a)]
        self.seen: dict[int, bytearray] = {a.id: bytearray(1024) for _, a, _, _ in self.users}
        self.unique = 0
        self.dups = 0

    def run(self, go: float) -> Result:
        readers = [gevent.spawn(self._read, a, c, partner) for _, a, c, partner in self.users]
        n_all = 2 * self.opts.pairs
        interval = n_all / self.opts.rate
        stop = go + self.opts.duration
        senders = [gevent.spawn(self._send_paced, a, c, functools.partial(_chat, a, partner.id),
                                go + interval * (k / n_all), interval, stop)
                   for k, a, c, partner in self.users]
        gevent.joinall(senders)
        end = time.monotonic()
        # drain: until every message sent here has arrived (both ends of a pair
        # are in this process), or the drain limit
        while self.unique < self.sent and time.monotonic() < end + self.opts.drain:
            gevent.sleep(0.05)
        gevent.killall(readers)
        for _, _, c, _ in self.users:
            c.close()
        out = self.base()
        out["window"] = end - go
        out["unique"] = self.unique
        out["dups"] = self.dups
        out["lost"] = self.sent - self.unique
        out["lost_samples"] = self._missing(5)
        return out

    def _missing(self, limit: int) -> list[str]:
        """The first few messages that did not arrive, to tell a loss at
        login (one user's first messages) from a loss in flight."""
        out: list[str] = []
        for _, a, _, partner in self.users:
            seen = self.seen[partner.id]
            gaps = [n for n in range(self.sent_by.get(a.id, 0)) if n >= len(seen) or not seen[n]]
            if gaps:
                out.append(f"{a.id}->{partner.id}: {len(gaps)} of {self.sent_by[a.id]}, first {gaps[:5]}")
            if len(out) >= limit:
                break
        return out

    def _read(self, me: accounts.Account, conn: Conn, partner: accounts.Account) -> None:
        seen = self.seen[me.id]

        def deliver(sender: int, n: int) -> None:
            if sender != partner.id:
                self.error(f"user {me.id}: a message from {sender}, not from its partner {partner.id}")
            elif mark(seen, n):
                self.dups += 1
            else:
                self.unique += 1

        self._deliveries(me.id, conn, deliver)


def merge_onetoone(results: list[Result], opts: Options) -> Result:
    out = _merge_common(results, opts, deliveries=sum(r["received"] for r in results))
    out["unique"] = sum(r["unique"] for r in results)
    out["duplicates"] = sum(r["dups"] for r in results)
    out["lost_samples"] = [x for r in results for x in r["lost_samples"]][:5]
    out["pairs"] = opts.pairs
    out["local"] = opts.local
    out["offered_msgs_per_s"] = opts.rate
    return out


# --- offline: messages to an offline user, then the login that drains them --


def plan_offline(opts: Options) -> list[Task]:
    users = accounts.ensure(opts.servers[0], 2 * opts.pairs, opts.users_file, opts.setup_concurrency)
    pairs = [(2 * i, users[2 * i], users[2 * i + 1]) for i in range(opts.pairs)]
    return [{"pairs": [(i, accounts.to_wire([a, b])) for i, a, b in share]} for share in _split(pairs, opts.procs)]


class Offline(Worker):
    def prepare(self) -> None:
        self.pairs = []
        for index, wire in self.task["pairs"]:
            a, b = accounts.from_wire(wire)
            self.pairs.append((index, a, _login(self.opts, index, a), b))

    def run(self, go: float) -> Result:
        _sleep_until(go)
        results = Pool(len(self.pairs) or 1).map(self._one, self.pairs)
        out = self.base()
        out["window"] = time.monotonic() - go
        out["stored_s"] = [r[0] for r in results]
        out["drained"] = sum(r[1] for r in results)
        out["in_order"] = all(r[2] for r in results)
        out["lost"] = sum(r[3] for r in results)
        out["reply_bytes"] = max((r[4] for r in results), default=0)
        return out

    def _one(self, item: tuple[int, accounts.Account, Conn, accounts.Account]) -> tuple[float, int, bool, int, int]:
        index, a, conn, b = item
        m, seq = self.opts.messages, self.opts.part_b
        t0 = time.monotonic()
        conn.sock.sendall(b"".join(_chat(a, b.id, n, time.monotonic_ns(), seq) + conn.terminator for n in range(m)))
        self.sent += m
        if seq:  # the last ack means all m are stored (one connection is handled in order)
            acked = 0
            while acked < m:
                for frame in conn.read_frames():
                    reply = loads(frame)
                    if reply.get("msgid") == MsgId.ACK:
                        acked += 1
                        if reply.get("errno"):
                            self.error(str(reply))
        else:
            gevent.sleep(2.0)
        stored = time.monotonic() - t0
        conn.close()
        t1 = time.monotonic()
        rconn = Conn(self.opts.address(index + 1), source=self.opts.source(index + 1))
        try:
            reply = rconn.call({"msgid": MsgId.LOGIN, "id": b.id, "password": b.password})
        except GchatError as e:
            reply = {"error": str(e)}
        self.lat.add_s(time.monotonic() - t1)
        size = len(dumps(reply))
        rconn.close()
        if reply.get("errno") != 0:
            self.error(f"login {b.id}: {reply}")
            return stored, 0, False, m, size
        tags = (read_tag(text.encode()) for text in reply.get("offlinemsg", []))
        ns = [t[1] for t in tags if t is not None]
        self.received += len(ns)
        return stored, len(ns), ns == sorted(ns), m - len(set(ns)), size


def merge_offline(results: list[Result], opts: Options) -> Result:
    out = _merge_common(results, opts, deliveries=sum(r["received"] for r in results))
    stored = [s for r in results for s in r["stored_s"]]
    out["messages_per_user"] = opts.messages
    # the pairs store at once: the rate is all messages over the slowest pair's time
    out["store_msgs_per_s"] = round(opts.messages * len(stored) / max(max(stored, default=0), 1e-9), 1)
    out["drained"] = sum(r["drained"] for r in results)
    out["in_order"] = all(r["in_order"] for r in results)
    out["lost"] = sum(r["lost"] for r in results)
    out["login_reply_bytes"] = max(r["reply_bytes"] for r in results)
    out["drain_login_ms"] = out.pop("latency_ms")
    return out


# --- login: a storm of N logins at a given concurrency ----------------------


def plan_login(opts: Options) -> list[Task]:
    if opts.register:
        return [{"register": True, "count": len(share)} for share in _split(list(range(opts.users)), opts.procs)]
    users = accounts.ensure(opts.servers[0], opts.users, opts.users_file, opts.setup_concurrency)
    if opts.resume:
        accounts.fetch_tokens(opts.servers[0], users, opts.users_file, opts.setup_concurrency)
    return [{"users": [(i, accounts.to_wire([a])[0]) for i, a in share]}
            for share in _split(list(enumerate(users)), opts.procs)]


class Login(Worker):
    def prepare(self) -> None:
        self.conns: list[Conn] = []
        self.done_at = 0.0

    def run(self, go: float) -> Result:
        _sleep_until(go)
        conc = max(1, self.opts.concurrency // self.opts.procs)
        if self.task.get("register"):
            prefix = f"s{int(time.time() * 1000) % 10**9}_{id(self) % 10**4}"
            jobs = [(i, accounts.Account(0, f"pw{i}", f"{prefix}_{i}")) for i in range(self.task["count"])]
        else:
            jobs = [(i, accounts.Account(**w)) for i, w in self.task["users"]]
        Pool(conc).map(self._one, jobs)
        window = time.monotonic() - go
        self.hold()
        for c in self.conns:
            c.close()
        out = self.base()
        out["window"] = window
        out["lost"] = 0
        return out

    def hold(self) -> None:
        pass

    def _one(self, job: tuple[int, accounts.Account]) -> None:
        index, a = job
        t0 = time.monotonic()
        try:
            conn = Conn(self.opts.address(index), source=self.opts.source(index))
        except OSError as e:
            self.error(f"connect: {e}")
            return
        self.conns.append(conn)
        try:
            if self.task.get("register"):
                a.id, _ = conn.register(a.name, a.password)
            conn.login(a.id, a.password, token=a.token if self.opts.resume else "")
        except (BenchError, OSError, ConnectionError) as e:
            self.error(f"user {a.id}: {e}")
            return
        self.lat.add_s(time.monotonic() - t0)
        self.sent += 1
        self.received += 1


def merge_login(results: list[Result], opts: Options) -> Result:
    out = _merge_common(results, opts, deliveries=sum(r["received"] for r in results))
    out["logins"] = out.pop("deliveries")
    out["logins_per_s"] = out.pop("delivered_per_s")
    out["all_online_s"] = round(max(r["window"] for r in results), 3)
    return out


# --- connections: N idle logged-in connections, held ------------------------


def plan_connections(opts: Options) -> list[Task]:
    return plan_login(opts)


class Connections(Login):
    def hold(self) -> None:
        gevent.sleep(self.opts.hold)  # the parent samples the server's memory meanwhile


def merge_connections(results: list[Result], opts: Options) -> Result:
    out = merge_login(results, opts)
    out["connections"] = out["logins"]
    return out


# --- common -----------------------------------------------------------------


def _merge_common(results: list[Result], opts: Options, deliveries: int) -> Result:
    window = max((r["window"] for r in results), default=0.0) or 1e-9
    return {
        "scenario": opts.scenario,
        "servers": [f"{h}:{p}" for h, p in opts.servers],
        "procs": opts.procs,
        "sent": sum(r["sent"] for r in results),
        "deliveries": deliveries,
        "delivered_per_s": round(deliveries / window, 1),
        "window_s": round(window, 3),
        "latency_ms": percentiles(r["lat"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:5],
        "lost": sum(r.get("lost", 0) for r in results),
    }


# the crowd builds on this module's Worker and Options
from gchat.tools.bench import crowd  # noqa: E402

WORKERS: dict[str, type[Worker]] = {
    "crowd": crowd.Crowd,
    "pingpong": PingPong,
    "group": Group,
    "onetoone": OneToOne,
    "offline": Offline,
    "login": Login,
    "connections": Connections,
}
PLANS = {
    "crowd": crowd.plan_crowd,
    "pingpong": plan_pingpong,
    "group": plan_group,
    "onetoone": plan_onetoone,
    "offline": plan_offline,
    "login": plan_login,
    "connections": plan_connections,
}
MERGES = {
    "crowd": crowd.merge_crowd,
    "pingpong": merge_pingpong,
    "group": merge_group,
    "onetoone": merge_onetoone,
    "offline": merge_offline,
    "login": merge_login,
    "connections": merge_connections,
}
