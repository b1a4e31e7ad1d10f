"""The client reader's reads (gchat.transport): after a read that emptied
the kernel's buffer it waits for readability before it reads again, instead
of a read that fails with EAGAIN. Nothing a client sends may be missed or
held back by that wait, and a connection closed under the reader must still
end its read with OSError, the error the reader treats as a lost
connection."""

from __future__ import annotations

import gevent
import pytest
from gevent import socket as gsocket

from gchat.protocol import FrameDecoder
from gchat.transport import RECV_SIZE, TcpTransport


def _pair() -> tuple[TcpTransport, gsocket.socket]:
    server, client = gsocket.socketpair()
    return TcpTransport(server, FrameDecoder(1 << 20)), client


def test_frames_sent_after_the_reader_emptied_its_buffer_all_arrive_in_order() -> None:
    transport, client = _pair()
    client.sendall(b'{"msgid":1}\0')
    assert transport.receive() == [b'{"msgid":1}']  # a short read: the next one waits first

    def later() -> None:
        for i in range(2, 6):
            gevent.sleep(0.01)
            client.sendall(b'{"msgid":%d}\0' % i)
        client.sendall(b'{"msgid":6')  # a frame in two pieces
        gevent.sleep(0.01)
        client.sendall(b"}\0")
        client.close()

    writer = gevent.spawn(later)
    got: list[bytes | object] = []
    while (frames := transport.receive()) is not None:
        got.extend(frames)
    writer.get()
    assert got == [b'{"msgid":%d}' % i for i in range(2, 7)]


def test_a_burst_larger_than_one_read_is_read_whole() -> None:
    transport, client = _pair()
    frame = b'{"msgid":5,"msg":"' + b"x" * 1000 + b'"}\n'
    count = 3 * RECV_SIZE // len(frame) + 1  # more than three full reads
    sender = gevent.spawn(lambda: (client.sendall(frame * count), client.close()))
    got = 0
    while (frames := transport.receive()) is not None:
        got += len(frames)
    sender.get()
    assert got == count


def test_a_connection_closed_while_the_reader_waits_ends_the_read_with_oserror() -> None:
    transport, client = _pair()
    client.sendall(b'{"msgid":1}\0')
    assert transport.receive() == [b'{"msgid":1}']
    gevent.spawn_later(0.01, transport.close)  # another greenlet (a kick, the node stopping)
    with pytest.raises(OSError):
        transport.receive()
    client.close()


def test_a_connection_closed_between_two_reads_ends_the_next_read_with_oserror() -> None:
    transport, client = _pair()
    client.sendall(b'{"msgid":1}\0')
    assert transport.receive() == [b'{"msgid":1}']
    transport.close()
    with pytest.raises(OSError):  # not gevent's ConcurrentObjectUseError from a wait on a closed socket
        transport.receive()
    client.close()


def test_a_wait_that_ends_with_nothing_to_read_waits_again_instead_of_failing() -> None:
    # Once its wait says readable, the reader calls the C socket's recv
    # directly; if the bytes are gone by then (a wake-up with nothing left),
    # it must fall back to gevent's recv, which waits again, and never raise
    # BlockingIOError to the connection (a lost connection, to it).
    transport, client = _pair()
    client.sendall(b'{"msgid":1}\0')
    assert transport.receive() == [b'{"msgid":1}']
    reads = transport._reads
    woken = []
    reads._wait = lambda event: woken.append(event)  # "readable" at once, with nothing there
    gevent.spawn_later(0.02, client.sendall, b'{"msgid":2}\0')
    assert transport.receive() == [b'{"msgid":2}']
    assert woken  # the direct path was taken, and fell back
    client.close()


def test_send_nowait_takes_what_the_kernel_takes_and_fails_on_a_closed_socket() -> None:
    transport, client = _pair()
    data = b"x" * 65536
    total = 0
    while (sent := transport.send_nowait(data)) > 0:  # until the buffers are full: 0, never an exception
        total += sent
    assert total > 0 and transport.send_nowait(data) == 0
    transport.close()
    with pytest.raises(OSError):
        transport.send_nowait(b"late")
    client.close()
