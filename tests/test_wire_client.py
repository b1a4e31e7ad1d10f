"""RawClient, the client library's connection without a reader thread (the
bench's and the tests' wire): replies matched to their request, frames that
came meanwhile kept in order, the C++ original's unterminated frames read."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from gchat.client import ConnectionLost, RawClient, RequestTimeout


def j(obj: object, end: bytes = b"") -> bytes:
    """A frame as the original writes it (`json::dump()`, no terminator)."""
    return json.dumps(obj, separators=(",", ":")).encode() + end


@pytest.fixture
def pair() -> Iterator[tuple[RawClient, socket.socket]]:
    ours, theirs = socket.socketpair()
    client = RawClient(ours, timeout=5)
    yield client, theirs
    client.close()
    theirs.close()


def test_the_reply_is_found_among_unterminated_frames_glued_together(
    pair: tuple[RawClient, socket.socket],
) -> None:
    client, server = pair
    delivery = {"id": 7, "msg": "hi}{", "msgid": 5, "name": "ann", "to": 3}
    server.sendall(j(delivery) + j({"errno": 0, "id": 3, "msgid": 4}))
    reply = client.call({"msgid": 3, "name": "bob", "password": "pw", "seq": 1})
    assert reply == {"errno": 0, "id": 3, "msgid": 4}
    assert [json.loads(f) for f in client.read_frames()] == [delivery]
    # what went out: the request, NUL-terminated as the original client sends it
    assert server.recv(4096) == j({"msgid": 3, "name": "bob", "password": "pw", "seq": 1}, b"\0")


def test_an_ack_is_matched_by_its_seq_and_a_frame_cut_anywhere_waits(
    pair: tuple[RawClient, socket.socket],
) -> None:
    client, server = pair
    other, mine = j({"ack": 8, "errno": 0, "msgid": 11, "seq": 4}, b"\0"), j({"ack": 7, "msgid": 11, "seq": 5})
    server.sendall(other + mine[:9])
    with pytest.raises(RequestTimeout):
        client.call({"msgid": 7, "groupname": "g", "seq": 5}, timeout=0.2)
    server.sendall(mine[9:])
    assert client.next_frame() == other.rstrip(b"\0")
    assert client.next_frame() == mine


def test_a_part_a_request_without_seq_has_nothing_to_wait_for(pair: tuple[RawClient, socket.socket]) -> None:
    client, _ = pair
    with pytest.raises(ValueError, match="no reply"):
        client.call({"msgid": 9, "groupid": 1, "msg": "x"})


def test_the_server_closing_is_a_lost_connection(pair: tuple[RawClient, socket.socket]) -> None:
    client, server = pair
    server.sendall(j({"errno": 0, "msgid": 2}))
    server.close()
    assert json.loads(client.next_frame()) == {"errno": 0, "msgid": 2}
    with pytest.raises(ConnectionLost):
        client.next_frame()
