"""Fuzzed input (issue 5, point 1). Property tests of the frame decoder and
request validation, then a socket-level fuzz of a running node: several
connections send thousands of random and mutated frames while two users
chat; every bad frame is answered as docs/protocol.md says, the chat loses
nothing and the node stays up."""

from __future__ import annotations

import random
import threading

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gchat.protocol import (
    MAX_ID,
    FrameDecoder,
    FrameTooLarge,
    MsgId,
    ProtocolError,
    dumps,
    error_reply,
    parse_request,
)
from tests.support import Wire, unique, user

CAP = 256

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["msgid", "id", "seq", "name", "password", "to", "msg", "time", "friendid", "groupid",
          "groupname", "groupdesc", "sync", "conv", "cseq", "before", "after", "limit",
          "note", "from", "accept", "userid", "block", "page", "notices"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3 * CAP), max_size=8))
def test_decoder_only_raises_its_own_error_and_never_buffers_past_the_cap(chunks):
    d = FrameDecoder(CAP)
    for chunk in chunks:
        try:
            frames = d.feed(chunk)
        except FrameTooLarge:
            return
        assert all(0 < len(f) <= CAP for f in frames)
        assert d.buffered <= CAP


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"").replace(b"\n", b"")),
                max_size=6),
       st.lists(st.sampled_from([b"\0", b"\n", b"\r\n", b"\0\0"]), min_size=6, max_size=6),
       st.data())
def test_frames_split_at_every_position_decode_the_same(bodies, terms, data):
    stream = b"".join(body + terms[i] for i, body in enumerate(bodies))
    whole = FrameDecoder(CAP).feed(stream)
    cut = data.draw(st.integers(0, len(stream)))
    d = FrameDecoder(CAP)
    assert d.feed(stream[:cut]) + d.feed(stream[cut:]) == whole
    d = FrameDecoder(CAP)
    assert [f for i in range(len(stream)) for f in d.feed(stream[i : i + 1])] == whole


def no_terminator(body: bytes) -> bytes:
    return body.replace(b"\0", b"x").replace(b"\n", b"x")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, CAP).flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(no_terminator),
                max_size=4),
       st.sampled_from([b"\0", b"\n"]))
@example([b"c" * CAP], b"\n")
def test_frames_up_to_the_cap_always_pass(bodies, term):
    """The other side of the cap: no frame within it is ever refused."""
    frames = FrameDecoder(CAP).feed(b"".join(body + term for body in bodies))
    assert frames == [f for f in (body.strip(b"\0\n\r\t ") for body in bodies) if f]


# the integer fields of each request (others pass through untouched)
INT_FIELDS = {1: ["id"], 3: [], 5: ["id", "to"], 6: ["id", "friendid"], 7: ["id"], 8: ["id", "groupid"],
              9: ["id", "groupid"], 10: ["id"],
              # docs/protocol.md section D
              12: ["id", "conv", "cseq"], 13: ["id", "conv", "cseq"], 15: ["id", "conv", "cseq"],
              16: ["id", "conv", "to", "groupid", "before", "after", "limit"],
              # section F
              20: ["id", "to"], 21: ["id", "from"], 22: ["id", "friendid"], 23: ["id", "userid"],
              24: ["id", "page", "limit"], 25: ["id", "groupid"], 26: ["id", "groupid", "userid"],
              27: ["id", "groupid", "userid"], 28: ["id", "groupid"], 29: ["id", "groupid"],
              30: ["id", "page", "limit"]}


def check_parse(frame: bytes) -> None:
    """parse_request raises nothing but ProtocolError, and its answer can be
    encoded without a raw terminator inside."""
    try:
        req = parse_request(frame)
    except ProtocolError as e:
        body = dumps(error_reply(e))
        assert b"\0" not in body and b"\n" not in body
        assert error_reply(e)["errno"] in range(1, 12)
        return
    assert isinstance(req.msgid, MsgId)
    for key in INT_FIELDS[req.msgid]:
        if key in req.body:
            assert type(req.body[key]) is int and 0 <= req.body[key] <= MAX_ID


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_parse_arbitrary_bytes(frame):
    check_parse(frame)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([1, 3, 5, 6, 7, 8, 9, 10, 12, 13, 15, 16, *range(20, 31)]),
       st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
       st.dictionaries(st.sampled_from(FIELDS),
                       st.integers(0, 20) | st.text(max_size=10), max_size=6))
def test_parse_arbitrary_json_in_every_field(msgid, wild, plausible):
    check_parse(dumps({"msgid": msgid, **plausible, **wild}))
    check_parse(dumps({**plausible, "msgid": msgid}))


# --- socket level ------------------------------------------------------------

SEEDS = [
    {"msgid": 3, "name": "fz", "password": "fuzz-secret"},
    {"msgid": 1, "id": 1, "password": "wrong-password"},
    {"msgid": 5, "id": 1, "to": 2, "msg": "hello", "time": "now", "seq": 1},
    {"msgid": 6, "friendid": 1},
    {"msgid": 7, "groupname": "g", "groupdesc": "d", "seq": 3},
    {"msgid": 8, "groupid": 1},
    {"msgid": 9, "groupid": 1, "msg": "x"},
    {"msgid": 10},
    {"msgid": 11, "ack": 1},
    {"msgid": 20, "to": 1, "note": "n", "seq": 4},
    {"msgid": 21, "from": 1, "accept": True},
    {"msgid": 23, "userid": 1},
    {"msgid": 24, "name": "f", "limit": 5},
    {"msgid": 26, "groupid": 1, "userid": 2},
    {"msgid": 29, "groupid": 1},
]


def mutate(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.25:  # random bytes
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 60)))
    seed = dict(rng.choice(SEEDS))
    if kind < 0.55:  # wrong values in fields
        for _ in range(rng.randint(1, 3)):
            seed[rng.choice(FIELDS)] = rng.choice(
                [None, True, -1, 2**31, 2**40, 1.5, "", "x" * rng.randint(0, 9000), [], {}, "\u2028",
                 "\ud7ff", rng.randint(0, 12), "a\u0000b"])
        return dumps(seed)
    raw = bytearray(dumps(seed))
    for _ in range(rng.randint(1, 4)):  # byte-level mutations
        op, pos = rng.random(), rng.randrange(len(raw) + 1)
        if op < 0.4 and raw:
            raw[min(pos, len(raw) - 1)] = rng.getrandbits(8)
        elif op < 0.7:
            raw[pos:pos] = bytes([rng.choice(b'{}[]",:\\0123456789')])
        else:
            del raw[pos : pos + rng.randint(1, 5)]
    return bytes(raw)


def expected(frame: bytes) -> tuple[int, int | None, int | None]:
    """(reply msgid, errno or None for "any of a register's", ack) for a frame
    from a connection that is not logged in."""
    try:
        req = parse_request(frame)
    except ProtocolError as e:
        r = error_reply(e)
        return r["msgid"], r["errno"], r.get("ack")
    if req.msgid == MsgId.REG:
        return 4, None, None
    if req.msgid == MsgId.LOGIN:
        return 2, 1, None
    return 11, 5, int(req.msgid)


def fuzzer(address: tuple[str, int], seed: int, n: int, stats: dict[str, int], failures: list[str]) -> None:
    rng = random.Random(seed)
    w = Wire(address, timeout=30)
    mirror = FrameDecoder()  # splits the stream exactly as the node does
    try:
        sent = 0
        while sent < n:
            chunk = b"".join(mutate(rng) + rng.choice([b"\n", b"\0"]) for _ in range(rng.randint(1, 20)))
            sent += chunk.count(b"\n") + chunk.count(b"\0")
            frames = mirror.feed(chunk)
            for i in range(0, len(chunk), 97):  # in pieces, as TCP may cut it
                w.send_raw(chunk[i : i + 97])
            for frame in frames:
                want_msgid, want_errno, want_ack = expected(frame)
                got = w.recv()
                stats["answered"] += 1
                if (got["msgid"], got.get("ack")) != (want_msgid, want_ack) or (
                    want_errno is not None and got["errno"] != want_errno
                ):
                    failures.append(f"{frame[:80]!r}: expected {want_msgid}/{want_errno}/{want_ack}, got {got}")
                    return
        # a frame past the cap: errno 9, then closed; what came before is answered
        w.send_raw(b'{"msgid":10}\n{"msgid":5,"msg":"' + b"y" * 70000 + b'"}\n')
        assert w.recv()["errno"] == 5
        assert w.recv()["errno"] == 9
        assert w.closed()
        stats["frames"] += sent
    except Exception as e:
        failures.append(f"fuzzer {seed}: {e!r}")
    finally:
        w.close()


def test_socket_fuzz_while_two_users_chat(make_server):
    # the login throttle off: this checks each answer of the protocol, and
    # the fuzz's many wrong logins would be told to wait (tests/test_attack.py)
    node = make_server("--login-backoff", "0")
    (a, aid), (b, bid) = user(node.address), user(node.address)
    stats = {"answered": 0, "frames": 0}
    failures: list[str] = []
    threads = [threading.Thread(target=fuzzer, args=(node.address, seed, 1500, stats, failures))
               for seed in range(4)]
    for t in threads:
        t.start()
    chats = 0
    while any(t.is_alive() for t in threads) or chats < 200:
        src, dst, did = (a, b, bid) if chats % 2 else (b, a, aid)
        ack = src.request({"msgid": 5, "to": did, "msg": f"c{chats}", "seq": chats})
        assert ack["errno"] == 0 and ack["delivered"] == "online", ack
        assert dst.recv()["msg"] == f"c{chats}"
        chats += 1
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    # the node is up and serves newcomers
    with Wire(node.address) as w:
        w.login(w.register(unique()))
    print(f"\nsocket fuzz: {stats['frames']} random and mutated frames from 4 connections, "
          f"{stats['answered']} answers all as expected; {chats} chat messages between two users, none lost")
    a.close(), b.close()
    assert node.proc is not None and node.proc.poll() is None
    assert not any("Traceback" in line for line in node.lines), node.log()
