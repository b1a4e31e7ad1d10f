"""Dead peers (issue 5, point 4): a peer that vanished without a FIN is found
by TCP keepalive and its user goes offline; a connection that has not logged
in within the deadline is closed."""

from __future__ import annotations

import socket
import struct
import time

from tests.cluster_support import wait_until
from tests.support import Wire, user

TCP_REPAIR = 19  # linux/tcp.h: a socket in repair mode closes without a FIN or RST


def unacked(sock: socket.socket) -> int:
    """Segments this side sent that the peer has not acknowledged yet
    (struct tcp_info: 8 one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


def vanish(w: Wire) -> None:
    """Close the client's socket without telling the server: what a peer
    whose machine lost power or network looks like to the node."""
    w.sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    w.sock.close()


def test_half_open_connection_is_detected_and_user_goes_offline(make_server):
    node = make_server("--keepalive-idle", "1", "--keepalive-interval", "1", "--keepalive-count", "2")
    w, uid = user(node.address)
    # the node answered everything (the login reply was read) and has every
    # byte we sent: from now on it has nothing to send or retransmit, only
    # keepalive can tell that the peer is gone
    w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    wait_until(lambda: unacked(w.sock) == 0, 10, every=0.01, what="our last segment acknowledged")
    vanish(w)
    start = time.monotonic()
    with Wire(node.address) as again:
        # online (errno 2) until keepalive finds the peer gone, then free
        def free() -> dict | None:  # type: ignore[type-arg]
            reply = again.request({"msgid": 1, "id": uid, "password": "pw"})
            assert reply["errno"] in (0, 2), reply
            return reply if reply["errno"] == 0 else None

        wait_until(free, 20, what="the vanished user offline")
    print(f"\nkeepalive idle 1 s, interval 1 s, count 2: the vanished user was offline again after "
          f"{time.monotonic() - start:.1f} s")
    print("log:", node.wait_for_log("connection lost").split(": ", 1)[1])


def test_no_login_within_the_deadline_is_closed(make_server):
    node = make_server("--login-timeout", "1")
    idle = Wire(node.address)
    registered = Wire(node.address)
    registered.register()  # registering is not logging in
    member, _ = user(node.address)
    assert idle.closed(timeout=10)
    assert registered.closed(timeout=10)
    print("\nlog:", node.wait_for_log("no login within").split(": ", 1)[1])
    # a session that logged in is not touched by the deadline
    member.send({"msgid": 10, "seq": 1})
    assert member.recv()["errno"] == 0
    member.close()
