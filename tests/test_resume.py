"""The resume token (docs/protocol.md section C): asked for at login, accepted
in place of the password on reconnect, revoked by log-out, invisible to a
client that does not ask for it."""

from __future__ import annotations

import time
from typing import Any

from tests.support import Wire, unique


def login_when_gone(w: Wire, req: dict[str, Any]) -> dict[str, Any]:
    """The previous connection's close may not have reached the node yet
    (errno 2 until it has): try again for a moment."""
    deadline = time.monotonic() + 5
    while True:
        reply = w.request(req)
        if reply["errno"] != 2 or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def test_a_token_logs_in_again_after_a_disconnect_and_log_out_revokes_it(server):
    with Wire(server.address) as w:
        uid = w.register(unique())
        plain = w.login(uid)
        assert "token" not in plain  # part A clients never see one
        w.request({"msgid": 10, "seq": 1})
    with Wire(server.address) as w:
        first = login_when_gone(w, {"msgid": 1, "id": uid, "password": "pw", "resume": True})
        assert first["errno"] == 0 and first["token_ttl"] > 0
        token = first["token"]
    with Wire(server.address) as w:  # disconnected without log-out: the token holds
        again = login_when_gone(w, {"msgid": 1, "id": uid, "token": token})
        assert again["errno"] == 0 and again["id"] == uid and "token" not in again
        assert w.request({"msgid": 10, "seq": 2})["errno"] == 0
        # revoked by the log-out
        assert w.request({"msgid": 1, "id": uid, "token": token}) == {
            "msgid": 2, "errno": 1, "errmsg": "id or password error"}


def test_wrong_token_and_rotation(server):
    with Wire(server.address) as w:
        uid = w.register(unique())
        t1 = w.request({"msgid": 1, "id": uid, "password": "pw", "resume": True})["token"]
    with Wire(server.address) as w:
        assert w.request({"msgid": 1, "id": uid, "token": t1 + "x"})["errno"] == 1
        other = w.register(unique())
        assert w.request({"msgid": 1, "id": other, "token": t1})["errno"] == 1  # another user's
        # a resumed login that asks again gets a new token; the old one is gone
        t2 = login_when_gone(w, {"msgid": 1, "id": uid, "token": t1, "resume": True})["token"]
        assert t2 != t1
    with Wire(server.address) as w:
        assert w.request({"msgid": 1, "id": uid, "token": t1})["errno"] == 1
        assert login_when_gone(w, {"msgid": 1, "id": uid, "token": t2})["errno"] == 0


def test_login_needs_a_password_or_a_token(server):
    with Wire(server.address) as w:
        assert w.request({"msgid": 1, "id": 1})["errno"] == 3
        assert w.request({"msgid": 1, "id": 1, "token": "t", "resume": "yes"})["errno"] == 3


def test_an_expired_token_is_refused_and_the_password_still_works(make_server):
    node = make_server("--resume-ttl", "1")
    with Wire(node.address) as w:
        uid = w.register(unique())
        issued = w.request({"msgid": 1, "id": uid, "password": "pw", "resume": True})
        received = time.time()  # the token was issued before this, so it expires by received + 1
        assert issued["errno"] == 0 and issued["token_ttl"] == 1
    while time.time() <= received + 1:  # the condition is the clock itself
        time.sleep(0.05)
    with Wire(node.address) as w:
        assert login_when_gone(w, {"msgid": 1, "id": uid, "token": issued["token"]}) == {
            "msgid": 2, "errno": 1, "errmsg": "id or password error"}
        assert w.request({"msgid": 1, "id": uid, "password": "pw"})["errno"] == 0
