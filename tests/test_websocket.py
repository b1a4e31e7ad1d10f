"""The WebSocket transport as a raw client sees it (wsproto in the test):
the same protocol as TCP, one JSON object per text message, every rule of
docs/protocol.md the same; binary, oversized and broken messages get the
protocol's errors and the node keeps serving everyone."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from wsproto.events import CloseConnection
from wsproto.utilities import LocalProtocolError

from gchat.protocol import dumps
from tests.cluster_support import wait_until
from tests.support import ROOT, ServerProcess, Wire, user
from tests.websocket_support import Rejected, WsWire, ws_user


@pytest.fixture(scope="module")
def node(mariadb: Any) -> Iterator[ServerProcess]:
    proc = ServerProcess(mariadb.create(), extra=["--frame-max", "4096", "--web-origins", "https://chat.example.org"])
    proc.start()
    yield proc
    proc.stop()


def test_register_login_and_chat_with_a_tcp_user(node: ServerProcess) -> None:
    ws, ws_id = ws_user(node.web_address)
    tcp, tcp_id = user(node.address)
    ack = ws.request({"msgid": 5, "to": tcp_id, "msg": "hi from the browser", "seq": 1})
    # the log's place of the message and the server's time (docs/protocol.md section D)
    assert ack.pop("cseq") == 1 and isinstance(ack.pop("conv"), int) and ack.pop("ts") > 0
    assert ack == {"msgid": 11, "ack": 5, "seq": 1, "errno": 0, "delivered": "online"}
    got = tcp.recv()
    assert (got["msg"], got["id"]) == ("hi from the browser", ws_id)
    tcp.send({"msgid": 5, "to": ws_id, "msg": "hi from the terminal ✓"})
    got = ws.recv()
    assert (got["msgid"], got["msg"], got["id"]) == (5, "hi from the terminal ✓", tcp_id)


def test_same_rules_as_tcp(node: ServerProcess) -> None:
    with WsWire(node.web_address) as ws:
        # not logged in: errno 5, addressed to the request
        assert ws.request({"msgid": 5, "to": 1, "msg": "x", "seq": 7})["errno"] == 5
        uid = ws.register()
        ws.login(uid)
        # the session is the identity
        assert ws.request({"msgid": 6, "id": uid + 1, "friendid": uid, "seq": 2})["errno"] == 6
        # a second login of an online user, over TCP, is refused
        with Wire(node.address) as tcp:
            assert tcp.request({"msgid": 1, "id": uid, "password": "pw"})["errno"] == 2


def test_offline_messages_wait_for_a_websocket_login(node: ServerProcess) -> None:
    tcp, tcp_id = user(node.address)
    with WsWire(node.web_address) as ws:
        ws_id = ws.register()
    tcp.send({"msgid": 5, "to": ws_id, "msg": "while you were away", "seq": 1})
    assert tcp.recv()["delivered"] == "offline"
    with WsWire(node.web_address) as ws:
        reply = ws.login(ws_id)
        assert [m for m in reply["offlinemsg"] if "while you were away" in m]


def test_binary_non_json_and_oversized_messages_get_errors_and_the_node_keeps_serving(node: ServerProcess) -> None:
    bystander, bystander_id = user(node.address)
    ws, ws_id = ws_user(node.web_address)
    ws.send_bytes(dumps({"msgid": 5, "to": bystander_id, "msg": "as binary"}))
    reply = ws.recv()
    assert (reply["msgid"], reply["errno"]) == (11, 3) and "binary" in reply["errmsg"]
    ws.send_text("this is not JSON")
    assert ws.recv()["errno"] == 3
    ws.send_text("[1, 2]")
    assert ws.recv()["errno"] == 3
    # still logged in, still chatting: a bad message never closes the connection
    assert ws.request({"msgid": 5, "to": bystander_id, "msg": "still here", "seq": 3})["errno"] == 0
    assert bystander.recv()["msg"] == "still here"

    # a message over frame_max (4096 here): errno 9, then close code 1009
    ws.send_text(dumps({"msgid": 5, "to": bystander_id, "msg": "x" * 5000}).decode())
    reply = ws.recv()
    assert (reply["errno"], reply["msgid"]) == (9, 11)
    assert ws.closed_with() == 1009
    # its user went offline: a message to it is stored
    bystander.send({"msgid": 5, "to": ws_id, "msg": "later", "seq": 4})
    assert bystander.recv()["delivered"] == "offline"

    # the node serves others as before, on both transports
    other, other_id = ws_user(node.web_address)
    bystander.send({"msgid": 5, "to": other_id, "msg": "fine?"})
    assert other.recv()["msg"] == "fine?"


def test_multibyte_message_at_the_limit_counts_bytes(node: ServerProcess) -> None:
    ws, _ = ws_user(node.web_address)
    # 1500 characters of 3 bytes: under frame_max in characters, over it in bytes
    ws.send_text(dumps({"msgid": 5, "to": 1, "msg": "€" * 1500}).decode())
    assert ws.recv()["errno"] == 9
    assert ws.closed_with() == 1009


def test_a_broken_frame_closes_with_a_protocol_error_only_that_connection(node: ServerProcess) -> None:
    ws, _ = ws_user(node.web_address)
    # an unmasked frame from a client is a protocol error (RFC 6455 5.1)
    ws.sock.sendall(b"\x81\x05hello")
    assert ws.closed_with() == 1002
    other, _ = ws_user(node.web_address)
    assert other.request({"msgid": 6, "friendid": 0, "seq": 1})["errno"] in (3, 7)


def test_close_from_the_client_is_answered_and_its_user_goes_offline(node: ServerProcess) -> None:
    tcp, tcp_id = user(node.address)
    ws, ws_id = ws_user(node.web_address)
    ws.sock.sendall(ws.ws.send(CloseConnection(code=1000)))
    assert ws.closed_with() == 1000

    def offline() -> bool:
        tcp.send({"msgid": 5, "to": ws_id, "msg": "gone?", "seq": 9})
        return tcp.recv()["delivered"] == "offline"

    wait_until(offline, what="the WebSocket user offline")


def test_origin_is_checked(node: ServerProcess) -> None:
    host = f"127.0.0.1:{node.web_port}"
    with pytest.raises(Rejected) as refused:
        WsWire(node.web_address, origin="https://evil.example.com")
    assert refused.value.status == 403
    WsWire(node.web_address, origin=f"http://{host}").sock.close()  # a page the node served
    WsWire(node.web_address, origin="https://chat.example.org").sock.close()  # listed in --web-origins
    WsWire(node.web_address).sock.close()  # no Origin: not a browser


def test_the_app_is_served_on_the_same_address(node: ServerProcess) -> None:
    with socket.create_connection(node.web_address, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"not found\n"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"<!doctype html>" in data.lower()
    assert b"HTTP/1.1 404 " in data


def test_compression_offered_by_a_browser_is_declined(node: ServerProcess) -> None:
    """Chromium and Firefox offer permessage-deflate in every handshake; the
    node answers without it, so every frame goes uncompressed both ways (a
    chat message is a hundred bytes: deflate would cost CPU per frame on
    each side and save little, docs/benchmarks.md)."""
    with socket.create_connection(node.web_address, timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            assert chunk, head
            head += chunk
        # an uncompressed text frame, masked as a client must (RFC 6455 5.3)
        mask, text = b"\x01\x02\x03\x04", b'{"msgid":6,"friendid":1,"seq":1}'
        s.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
        data = head.partition(b"\r\n\r\n")[2]
        while len(data) < 2 or len(data) < 2 + data[1]:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-extensions" not in head.lower()
    # the reply: one text frame, FIN set, RSV1 (compressed) clear, its JSON readable as it is
    assert data[0] == 0x81 and data[1] < 126
    assert json.loads(data[2 : 2 + data[1]])["errno"] == 5  # not logged in


def test_a_plain_get_of_the_websocket_path_is_refused(node: ServerProcess) -> None:
    with socket.create_connection(node.web_address, timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 404 ")


def test_dead_websocket_peers_are_pinged_then_dropped(make_server: Any) -> None:
    node = make_server("--web-ping-interval", "0.5")
    tcp, _ = user(node.address)
    live, live_id = ws_user(node.web_address)  # reads, so it answers pings (wsproto's pong)
    dead, dead_id = ws_user(node.web_address)  # never reads again: its pings go unanswered

    def dead_dropped() -> bool:
        try:
            live.recv_message(timeout=0.2)
        except AssertionError:
            pass
        return any("after a ping, dropping" in line and f"user {dead_id}" in line for line in node.lines)

    wait_until(dead_dropped, timeout=30, every=0, what="the silent WebSocket dropped")
    assert live.pings >= 1
    tcp.send({"msgid": 5, "to": dead_id, "msg": "x", "seq": 1})
    assert tcp.recv()["delivered"] == "offline"
    tcp.send({"msgid": 5, "to": live_id, "msg": "still with us", "seq": 2})
    assert tcp.recv()["delivered"] == "online"
    assert live.recv()["msg"] == "still with us"


def test_rate_limit_and_login_deadline_apply_as_on_tcp(make_server: Any) -> None:
    node = make_server("--rate", "1", "--rate-burst", "3", "--login-timeout", "2")
    ws = WsWire(node.web_address)
    for seq in range(6):
        ws.send({"msgid": 6, "friendid": 1, "seq": seq})
    errnos = [ws.recv()["errno"] for _ in range(6)]
    assert errnos[:3] == [5, 5, 5] and 10 in errnos[3:], errnos
    # never logged in: closed at the deadline, with "policy violation"
    assert ws.closed_with(timeout=20) == 1008
    assert ws.close_reason == "login timeout"


def test_gchat_bench_drives_websocket_clients(node: ServerProcess) -> None:
    """gchat-bench --server ws://...: the same scenarios, every message counted."""
    for args in (["pingpong", "--pairs", "2", "--duration", "1", "--acks"],
                 ["group", "--members", "4", "--rate", "40", "--duration", "1"]):
        cmd = [sys.executable, "-m", "gchat.tools.bench", *args, "--server", f"ws://127.0.0.1:{node.web_port}",
               "--json", "--quiet", "--drain", "5"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["errors"] == 0 and report["lost"] == 0, report
        assert report["deliveries"] > 10
        if args[0] == "group":
            assert report["expected"] == report["sent"] * 3 == report["deliveries"]


def test_the_per_address_limit_counts_both_transports(make_server: Any) -> None:
    node = make_server("--max-per-ip", "1")
    with Wire(node.address) as tcp:
        tcp.login(tcp.register())
        ws = WsWire(node.web_address)
        reply = ws.recv()
        assert (reply["errno"], reply["ack"]) == (10, 0) and "too many connections" in reply["errmsg"]
        assert ws.closed_with() == 1013
    # the TCP connection gone, a WebSocket is welcome again
    wait_until(lambda: _admitted(node), what="a WebSocket admitted once the TCP client left")


def _admitted(node: ServerProcess) -> bool:
    with WsWire(node.web_address) as ws:
        try:
            ws.send({"msgid": 6, "friendid": 1, "seq": 1})
            return ws.recv()["errno"] == 5  # not logged in: served, not refused
        # still refused: closed before our request was read, or (wsproto
        # refuses to send then) before it was even sent
        except (ConnectionError, LocalProtocolError):
            return False
