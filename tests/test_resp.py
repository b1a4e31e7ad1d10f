"""Redis's wire format as the bus reads and writes it (gchat/cluster/resp.py):
replies of every kind, a reply cut over several reads, several replies in
one read; and the writer batches' route line (gchat/cluster/script_line.py)
that writes and reads it on a real Redis, in step after an error reply."""

from __future__ import annotations

import socket
import threading

import pytest
import redis

from gchat.cluster.redis_bus import RedisBus
from gchat.cluster.redis_keys import PREFIX
from gchat.cluster.resp import Incomplete, ReplyError, Wire, pack, parse
from gchat.config import Settings
from tests.cluster_support import RedisServer


def test_pack_writes_a_command_as_an_array_of_bulk_strings() -> None:
    assert pack(("EVALSHA", b"ab", 0)) == b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n"


def test_parse_reads_each_kind_of_reply() -> None:
    wire = (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\na\r\nb!\r\n"  # a push, its data holding CRLF
            b"*2\r\n$0\r\n\r\n$-1\r\n+PONG\r\n:42\r\n_\r\n-NOSCRIPT no script\r\n")
    at, got = 0, []
    while at < len(wire):
        reply, at = parse(wire, at)
        got.append(reply)
    assert got[:5] == [[b"message", b"ch", b"a\r\nb!"], [b"", None], b"PONG", 42, None]
    assert isinstance(got[5], ReplyError) and str(got[5]) == "NOSCRIPT no script"


def test_parse_says_how_much_a_cut_reply_needs() -> None:
    with pytest.raises(Incomplete) as cut:
        parse(b"*2\r\n$5\r\nab", 0)
    assert cut.value.need == len(b"*2\r\n$5\r\nabcde\r\n")
    with pytest.raises(redis.ConnectionError):
        parse(b"?what\r\n", 0)


def test_the_wire_returns_a_reply_cut_over_reads_once_whole_and_all_that_one_read_brought() -> None:
    a, b = socket.socketpair()
    try:
        wire = Wire(a)
        reply = pack((b"x" * 200_000, b"y"))  # parsed as an array of two bulk strings

        def write_slowly() -> None:
            for i in range(0, len(reply), 50_000):
                b.sendall(reply[i:i + 50_000])

        writer = threading.Thread(target=write_slowly)
        writer.start()
        assert wire.replies() == [[b"x" * 200_000, b"y"]]
        writer.join()
        b.sendall(b"+one\r\n:2\r\n$5\r\nth")
        assert wire.replies() == [b"one", 2]
        b.sendall(b"ree\r\n")
        assert wire.replies() == [b"three"]
        b.close()
        with pytest.raises(redis.ConnectionError):
            wire.replies()
    finally:
        a.close()
        b.close()


class _TlsLike:
    """A TLS socket's shape: data the TLS layer holds (`pending`) while the
    descriptor has nothing to wait for."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads

    def pending(self) -> int:
        return len(self._reads[0]) if self._reads else 0

    def _wait(self, _event: object) -> None:
        raise AssertionError("waited on the descriptor while the TLS layer held the reply")

    _read_event = None

    def recv(self, _n: int) -> bytes:
        return self._reads.pop(0)


def test_the_wire_does_not_wait_on_the_descriptor_of_a_tls_socket() -> None:
    # a reply in two TLS records: the second is read from the TLS layer
    wire = Wire(_TlsLike([b"*2\r\n$1\r\na\r\n", b"$1\r\nb\r\n"]))  # type: ignore[arg-type]
    assert wire.replies() == [[b"a", b"b"]]


def test_the_route_line_stays_in_step_after_an_error_reply(redis_server: RedisServer) -> None:
    r = redis_server.client()
    bus = RedisBus("a", Settings(redis_url=redis_server.url))
    try:
        line = bus._route_batch
        assert line is not None
        r.set(PREFIX + "online:5", "b")
        r.set(PREFIX + "node:b", "1")
        # nobody listens on node b's channel: user 5 is missed
        assert line([PREFIX, "a", b"7,1 {}", b"5"]) == [b"5"]
        conn = line._conn
        with pytest.raises(redis.ResponseError):
            line([PREFIX, "a", b"7,2 {}"])  # a body without its users: the script fails
        assert line([PREFIX, "a", b"7,3 {}", b"5"]) == [b"5"]
        assert line._conn is conn  # the same connection, its replies in step
    finally:
        bus.stop()
        r.close()
