"""The client library: against a scripted fake server (a real socket and a
thread), then against a real gchat node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gchat.client import (
    AlreadyOnline,
    AuthError,
    ChatMessage,
    Client,
    ConnectionLost,
    Friend,
    GchatError,
    Group,
    GroupMember,
    LoginResult,
    NotFound,
    RequestTimeout,
)
from gchat.client.framing import ReplySplitter
from tests.support import unique

# --- the fake server ---------------------------------------------------------

Handler = Callable[[dict[str, Any]], list[bytes] | None]


class FakeServer:
    """Accepts one connection; for each frame received, records it and sends
    what `handler` returns (None: close the connection)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.raw = bytearray()  # every byte received, to check the framing
        self.frames: list[dict[str, Any]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        buf = b""
        with conn:
            while data := conn.recv(65536):
                self.raw += data
                buf += data
                while True:
                    cut = min((i for i in (buf.find(b"\0"), buf.find(b"\n")) if i >= 0), default=-1)
                    if cut < 0:
                        break
                    frame, buf = buf[:cut], buf[cut + 1 :]
                    obj = json.loads(frame)
                    self.frames.append(obj)
                    out = self.handler(obj)
                    if out is None:
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    for chunk in out:
                        conn.sendall(chunk)

    def push(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake() -> Iterator[Callable[[Handler], FakeServer]]:
    servers: list[FakeServer] = []

    def make(handler: Handler) -> FakeServer:
        servers.append(FakeServer(handler))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def j(obj: Any, end: bytes = b"\n") -> bytes:
    return json.dumps(obj).encode() + end


# Exactly what the original C++ server sends: list elements are JSON text,
# and nothing ends a reply.
ORIGINAL_LOGIN = {
    "msgid": 2,
    "errno": 0,
    "id": 13,
    "name": "zhang san",
    "friends": [json.dumps({"id": 15, "name": "li si", "state": "online"})],
    "groups": [
        json.dumps(
            {
                "id": 2,
                "groupname": "devs",
                "groupdesc": "the team",
                "users": [
                    json.dumps({"id": 13, "name": "zhang san", "state": "online", "role": "creator"}),
                    json.dumps({"id": 15, "name": "li si", "state": "offline", "role": "normal"}),
                ],
            }
        )
    ],
    "offlinemsg": [
        json.dumps({"msgid": 5, "id": 15, "name": "li si", "to": 13, "msg": "hi", "time": "2024-01-02 03:04:05"}),
        json.dumps({"msgid": 9, "id": 15, "name": "li si", "groupid": 2, "msg": "all", "time": "2024-01-02 03:04:06"}),
    ],
}


def test_login_against_an_original_server_decodes_everything_and_stays_classic(fake):
    srv = fake(lambda req: [j(ORIGINAL_LOGIN, b"")] if req["msgid"] == 1 else [])
    with Client.connect("127.0.0.1", srv.port) as c:
        me = c.login(13, "pw")
        assert me == LoginResult(
            id=13,
            name="zhang san",
            friends=(Friend(15, "li si", "online"),),
            groups=(
                Group(
                    2,
                    "devs",
                    "the team",
                    (GroupMember(13, "zhang san", "online", "creator"), GroupMember(15, "li si", "offline", "normal")),
                ),
            ),
            offline=(
                ChatMessage(5, 15, "li si", "hi", "2024-01-02 03:04:05", to=13),
                ChatMessage(9, 15, "li si", "all", "2024-01-02 03:04:06", groupid=2),
            ),
        )
        assert me.friends[0].online and me.offline[1].is_group
        assert not c.acks  # no seq came back: the original server
        # silent requests are fire-and-forget, part-A fields, NUL-terminated
        assert c.chat(15, "hello", time="2024-01-02 03:04:07") is None
        assert c.create_group("g", "d") is None
        c.logout()
        deadline = time.monotonic() + 5
        while len(srv.frames) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert srv.frames[1] == {
        "msgid": 5,
        "id": 13,
        "name": "zhang san",
        "to": 15,
        "msg": "hello",
        "time": "2024-01-02 03:04:07",
    }
    assert srv.frames[2] == {"msgid": 7, "id": 13, "groupname": "g", "groupdesc": "d"}
    assert srv.frames[3] == {"msgid": 10, "id": 13}
    assert srv.raw.endswith(b'{"msgid":10,"id":13}\0')


def test_classic_mode_sends_no_seq_at_all(fake):
    srv = fake(lambda req: [j({"msgid": 4, "errno": 0, "id": 7}, b"\0")])
    with Client.connect("127.0.0.1", srv.port, acks=False) as c:
        assert c.register("ann", "pw") == 7
    assert srv.frames == [{"msgid": 3, "name": "ann", "password": "pw"}]


def gchat_like(req: dict[str, Any]) -> list[bytes]:
    """Echoes seq like a gchat node; pushes a delivery before every ack."""
    seq = req.get("seq")
    if req["msgid"] == 1:
        return [j({"msgid": 2, "errno": 0, "id": req["id"], "name": "me", "seq": seq})]
    push = j({"msgid": 5, "id": 99, "name": "x", "to": 1, "msg": f"during {seq}", "time": "t"})
    if req["msgid"] == 7:
        return [push, j({"msgid": 11, "ack": 7, "seq": seq, "errno": 0, "groupid": 42})]
    if req["msgid"] == 6:
        friend = {"id": req["friendid"], "name": "bob", "state": "offline"}
        return [push, j({"msgid": 11, "ack": 6, "seq": seq, "errno": 0, "friend": friend})]
    if req["msgid"] == 5:
        if req["to"] == 404:
            return [j({"msgid": 11, "ack": 5, "seq": seq, "errno": 7, "errmsg": "no such user"})]
        return [push, j({"msgid": 11, "ack": 5, "seq": seq, "errno": 0, "delivered": "offline"})]
    if req["msgid"] == 9:
        return [j({"msgid": 11, "ack": 9, "seq": seq, "errno": 0, "members": 3})]
    return [j({"msgid": 11, "ack": req["msgid"], "seq": seq, "errno": 0})]


def test_acks_give_results_and_deliveries_during_a_request_are_kept(fake):
    srv = fake(gchat_like)
    with Client.connect("127.0.0.1", srv.port) as c:
        c.login(1, "pw")
        assert c.acks
        assert c.create_group("g", "d") == 42
        assert c.add_friend(5) == Friend(5, "bob", "offline")
        assert c.chat(5, "hi") == "offline"
        assert c.group_chat(42, "all") == 3
        c.join_group(42)
        assert srv.frames[-1] == {"msgid": 8, "id": 1, "groupid": 42, "seq": srv.frames[-1]["seq"]}
        assert c.chat(5, "after the join") == "offline"  # the join's ack was taken as its reply, not this one's
        with pytest.raises(NotFound) as err:
            c.chat(404, "hi")
        assert err.value.errno == 7 and err.value.errmsg == "no such user" and err.value.msgid == 5
        got = [m.text for m in c.messages(timeout=0.5)]
    assert got == ["during 2", "during 3", "during 4", "during 7"]
    assert all("seq" in f for f in srv.frames)


def test_on_message_callback_and_on_reply_for_fire_and_forget(fake):
    srv = fake(gchat_like)
    seen: list[ChatMessage] = []
    replies: list[dict[str, Any]] = []
    done = threading.Event()

    def on_reply(r: dict[str, Any]) -> None:
        replies.append(r)
        if len(replies) == 100:
            done.set()

    with Client.connect("127.0.0.1", srv.port, on_message=seen.append, on_reply=on_reply) as c:
        c.login(1, "pw")
        c.send_many({"msgid": 5, "to": 2, "msg": str(i), "seq": c.next_seq()} for i in range(100))
        assert done.wait(5)
    assert [r["delivered"] for r in replies] == ["offline"] * 100
    assert len(seen) == 100 and c.next_message(timeout=0) is None


@pytest.mark.parametrize(("errno", "cls"), [(1, AuthError), (2, AlreadyOnline)])
def test_login_errors_are_typed(fake, errno, cls):
    msg = {1: "id or password error", 2: "id is online"}[errno]
    srv = fake(lambda req: [j({"msgid": 2, "errno": errno, "errmsg": msg}, b"")])
    with Client.connect("127.0.0.1", srv.port) as c, pytest.raises(cls) as err:
        c.login(1, "bad")
    assert (err.value.errno, err.value.errmsg, err.value.msgid) == (errno, msg, 1)
    assert isinstance(err.value, GchatError) and c.user is None


def test_connection_lost_during_a_request_and_in_messages(fake):
    closed: list[Any] = []
    srv = fake(lambda req: None)
    c = Client.connect("127.0.0.1", srv.port, on_close=closed.append)
    with pytest.raises(ConnectionLost):
        c.login(1, "pw")
    with pytest.raises(ConnectionLost):
        c.next_message(timeout=1)
    with pytest.raises(ConnectionLost):
        c.register("x", "y")
    assert c.closed and len(closed) == 1 and isinstance(closed[0], ConnectionLost)
    c.close()


def test_close_ends_messages_quietly(fake):
    closed: list[Any] = []
    srv = fake(lambda req: [])
    c = Client.connect("127.0.0.1", srv.port, on_close=closed.append)
    threading.Timer(0.2, c.close).start()
    assert list(c.messages()) == []
    assert closed == [None]


def test_timeout(fake):
    srv = fake(lambda req: [])
    with Client.connect("127.0.0.1", srv.port) as c, pytest.raises(RequestTimeout):
        c.request({"msgid": 1, "id": 1, "password": "x"}, timeout=0.2)


def test_cannot_connect():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        Client.connect("127.0.0.1", port, timeout=2)


# --- the splitting of server output --------------------------------------------


def split_all(chunks: list[bytes]) -> list[dict[str, Any]]:
    s = ReplySplitter()
    return [json.loads(f) for c in chunks for f in s.feed(c)]


STREAM = j({"msgid": 2, "a": "x}"}) + j({"msgid": 5, "msg": "é\n\0"}, b"\0") + j({"msgid": 11, "b": [1, {}]})


def test_splitter_one_byte_at_a_time():
    expected = [{"msgid": 2, "a": "x}"}, {"msgid": 5, "msg": "é\n\0"}, {"msgid": 11, "b": [1, {}]}]
    assert split_all([STREAM]) == expected
    assert split_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == expected


def test_splitter_unterminated_frames_of_the_original_server():
    a, b = j({"msgid": 2, "x": 1}, b""), j({"msgid": 5, "y": "}"}, b"")
    assert split_all([a]) == [{"msgid": 2, "x": 1}]
    assert split_all([a + b]) == [{"msgid": 2, "x": 1}, {"msgid": 5, "y": "}"}]
    assert split_all([a + b[:5], b[5:]]) == [{"msgid": 2, "x": 1}, {"msgid": 5, "y": "}"}]
    # a terminator that arrives late is not a frame of its own
    assert split_all([a, b"\n", b]) == [{"msgid": 2, "x": 1}, {"msgid": 5, "y": "}"}]


# --- against a real node ---------------------------------------------------------


def pair(server: Any, **kwargs: Any) -> tuple[Client, Client, LoginResult, LoginResult]:
    a, b = Client.connect(server.host, server.port, **kwargs), Client.connect(server.host, server.port, **kwargs)
    ida, idb = a.register(unique("alice"), "pa"), b.register(unique("bob"), "pb")
    return a, b, a.login(ida, "pa"), b.login(idb, "pb")


def test_node_every_call(server):
    a, b, ma, mb = pair(server)
    with a, b:
        assert a.acks and ma.friends == () and ma.groups == () and ma.offline == ()
        friend = a.add_friend(mb.id)
        assert friend == Friend(mb.id, mb.name, "online")
        gid = a.create_group("room" + str(ma.id), "a room")
        assert isinstance(gid, int)
        b.join_group(gid)
        assert a.group_chat(gid, "welcome") == 1  # b is a member now
        w = b.next_message(timeout=5)
        assert w is not None and (w.groupid, w.text) == (gid, "welcome")
        assert a.chat(mb.id, "hello bob") == "online"
        m = b.next_message(timeout=5)
        assert m is not None and (m.msgid, m.sender_id, m.sender_name, m.text, m.to) == (
            5,
            ma.id,
            ma.name,
            "hello bob",
            mb.id,
        )
        assert m.time
        assert b.group_chat(gid, "hello room") == 1
        g = a.next_message(timeout=5)
        assert g is not None and g.is_group and (g.groupid, g.sender_id, g.text) == (gid, mb.id, "hello room")
        b.logout()
        assert a.chat(mb.id, "while away") == "offline"
        me = b.login(mb.id, "pb")
        assert [o.text for o in me.offline] == ["while away"]
        assert {(x.id, x.name, x.role) for x in me.groups[0].members} == {
            (ma.id, ma.name, "creator"),
            (mb.id, mb.name, "normal"),
        }
        assert (me.groups[0].id, me.groups[0].desc) == (gid, "a room")
        assert me.friends == ()  # add friend is one direction, as in the original


def test_node_errors(server):
    a, b, ma, _ = pair(server)
    with a, b:
        with pytest.raises(NotFound) as err:
            a.chat(2**31 - 2, "nobody")
        assert err.value.errno == 7
        with pytest.raises(NotFound):
            a.join_group(2**31 - 2)
        with pytest.raises(AuthError) as auth:
            a.register(ma.name, "x")
        assert auth.value.errno == 1
        with Client.connect(server.host, server.port) as c:
            with pytest.raises(AuthError) as bad:
                c.login(ma.id, "wrong")
            assert bad.value.errno == 1 and bad.value.errmsg == "id or password error"
            with pytest.raises(AlreadyOnline) as online:
                c.login(ma.id, "pa")
            assert online.value.errno == 2 and online.value.errmsg == "id is online"


def test_node_deliveries_during_requests_are_not_lost(server):
    a, b, ma, mb = pair(server)
    n = 300
    with a, b:
        sender = threading.Thread(
            target=lambda: a.send_many(
                {"msgid": 5, "id": ma.id, "name": ma.name, "to": mb.id, "msg": str(i), "time": "t"} for i in range(n)
            )
        )
        sender.start()
        for i in range(20):  # b is busy with its own requests meanwhile
            assert isinstance(b.create_group(f"busy{mb.id}-{i}", ""), int)
        sender.join()
        got = []
        while len(got) < n and (m := b.next_message(timeout=5)) is not None:
            got.append(m.text)
    assert got == [str(i) for i in range(n)]


def test_node_classic_client(server):
    errors: list[dict[str, Any]] = []
    a, b, ma, mb = pair(server, acks=False)
    a.on_reply = errors.append
    with a, b:
        assert not a.acks
        assert a.chat(mb.id, "plain") is None
        m = b.next_message(timeout=5)
        assert m is not None and m.text == "plain" and m.sender_id == ma.id
        a.chat(2**31 - 2, "nobody")  # errors are answered even without seq
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert errors and errors[0]["errno"] == 7 and errors[0]["ack"] == 5


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import sys, time
    from gchat.client import Client
    host, port = sys.argv[1], int(sys.argv[2])
    a, b = Client.connect(host, port), Client.connect(host, port)
    s = str(time.monotonic_ns())
    ida, idb = a.register("ga" + s, "p"), b.register("gb" + s, "p")
    a.login(ida, "p"); b.login(idb, "p")
    assert a.chat(idb, "under gevent") == "online"
    m = b.next_message(timeout=5)
    assert m is not None and m.text == "under gevent", m
    from gevent.monkey import is_module_patched
    assert is_module_patched("threading") and is_module_patched("socket")
    a.close(); b.close()
    print("ok")
    """
)


def test_node_under_gevent(server):
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, server.host, str(server.port)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
