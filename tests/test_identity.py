"""Secrets and identity (issue 5, point 7): passwords stored only as slow
salted hashes, never logged (nor their hashes, nor a request holding one),
and every request after login acts as the session's user only."""

from __future__ import annotations

import sqlite3
import uuid

from gchat.protocol import dumps
from tests.support import Wire, unique


def secret() -> str:
    return "pw-" + uuid.uuid4().hex


def test_passwords_are_salted_hashes_and_never_logged(make_server):
    node = make_server("--log-level", "DEBUG", "--rate", "5", "--rate-burst", "10")
    pw_a, pw_b, shared = secret(), secret(), secret()
    with Wire(node.address) as a, Wire(node.address) as b:
        aid, bid = a.register(password=pw_a), b.register(password=pw_b)
        same1, same2 = a.register(password=shared), b.register(password=shared)
        a.login(aid, pw_a)
        # a wrong password, someone else's password, a malformed login holding one
        assert b.request({"msgid": 1, "id": bid, "password": pw_a})["errno"] == 1
        assert b.request({"msgid": 1, "id": "x", "password": pw_b})["errno"] == 3
        assert b.request({"msgid": 1, "id": bid, "password": pw_b + "x" * 200})["errno"] == 3
        b.login(bid, pw_b)
        assert b.request({"msgid": 1, "id": bid, "password": pw_b})["errno"] == 2
        b.send_raw(b"{not json " + pw_b.encode() + b"}\n")
        assert b.recv()["errno"] == 3
    # a flood of logins holding passwords: refused, cut off, dropped frames logged
    with Wire(node.address) as f:
        f.send_raw(b"".join(dumps({"msgid": 1, "id": aid, "password": pw_a}) + b"\n" for _ in range(100)))
        assert f.closed(timeout=10)
    node.wait_for_log("dropped")
    # a frame too large that holds a password
    with Wire(node.address) as big:
        big.send_raw(dumps({"msgid": 1, "id": aid, "password": pw_a, "pad": "x" * 70000}) + b"\n")
        assert big.recv()["errno"] == 9
    node.wait_for_log("frame over")

    db = sqlite3.connect(node.database_url.removeprefix("sqlite:///"))
    hashes = dict(db.execute("SELECT id, password FROM user"))
    db.close()
    for h in hashes.values():
        assert h.startswith("$argon2id$"), h
        assert pw_a not in h and pw_b not in h and shared not in h
    assert hashes[same1] != hashes[same2], "the same password must hash differently (salt)"

    log = "\n".join(node.lines)
    assert "DEBUG" in log  # the node did log at DEBUG
    for s in [pw_a, pw_b, shared, *hashes.values(), *(h.rsplit("$", 2)[1] for h in hashes.values())]:
        assert s not in log, f"{s!r} was logged"
    print(f"\n{len(node.lines)} log lines at DEBUG: no password, hash or salt among them; "
          f"hash format {hashes[aid].rsplit('$', 2)[0]}")


def test_every_request_acts_as_the_session_user_only(make_server):
    node = make_server()
    a, b = Wire(node.address), Wire(node.address)
    a_name = unique("a")
    aid, bid = a.register(a_name), b.register()
    a.login(aid), b.login(bid)
    group = unique("g")
    gid = b.request({"msgid": 7, "groupname": group, "seq": 1})["groupid"]
    other = unique("g")
    forged = [
        {"msgid": 5, "id": bid, "to": bid, "msg": "forged"},
        {"msgid": 6, "id": bid, "friendid": aid},
        {"msgid": 7, "id": bid, "groupname": other},
        {"msgid": 8, "id": bid, "groupid": gid},
        {"msgid": 9, "id": bid, "groupid": gid, "msg": "forged"},
        {"msgid": 10, "id": bid},
    ]
    for req in forged:
        for seq in (None, 7):  # refused whether or not the request asked for an ack
            reply = a.request(req if seq is None else {**req, "seq": seq})
            assert reply["msgid"] == 11 and reply["ack"] == req["msgid"] and reply["errno"] == 6, (req, reply)
    # login as someone else on a logged-in session
    assert a.request({"msgid": 1, "id": bid, "password": "pw"})["errno"] == 6
    # nothing reached b: the next message b gets is this one
    a.send({"msgid": 5, "to": bid, "msg": "the real one"})
    assert b.recv()["msg"] == "the real one"
    # nothing was done in b's name: the group name is free, b is still online,
    # b's friend list is empty, a is not b's friend and not in b's group
    assert a.request({"msgid": 7, "groupname": other, "seq": 2})["errno"] == 0
    assert b.request({"msgid": 5, "to": aid, "msg": "still here", "seq": 3})["delivered"] == "online"
    got = a.recv()
    assert (got["id"], got["msg"]) == (bid, "still here")
    assert a.request({"msgid": 9, "groupid": gid, "msg": "x", "seq": 4})["errno"] == 6
    with Wire(node.address) as again:
        assert again.request({"msgid": 1, "id": bid, "password": "pw"})["errno"] == 2
    b.close()
    with Wire(node.address) as b2:
        assert "friends" not in b2.login(bid)
        # delivered messages carry the sender's real id and name, whatever it claims
        a.send({"msgid": 5, "to": bid, "name": "someone else", "msg": "hi"})
        got = b2.recv()
        assert (got["id"], got["name"], got["msg"]) == (aid, a_name, "hi")
    a.close()
