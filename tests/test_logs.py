"""Logs an operator can feed to a collector (issue 14, item 2): one JSON
object per line, audit lines for register, login (and why one failed),
log-out and admin actions; never a password, a token or a chat message; a
storm of failed logins summarised, not one line each."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest

from gchat import audit, config
from gchat.logs import JsonFormatter
from tests.cluster_support import wait_until
from tests.support import Wire, unique


def audit_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [obj for obj in map(json.loads, lines) if obj["logger"] == "gchat.audit"]


def test_json_lines_audit_and_no_secret(make_server: Any) -> None:
    node = make_server("--log-format", "json", "--login-failures-logged", "3", "--login-failures-window", "2",
                       # the storm is about what is logged: no throttle (gchat/throttle.py) in its way
                       "--login-free", "1000", "--login-free-per-address", "1000", "--login-free-per-account", "1000")
    password = f"pw-{uuid.uuid4().hex}"
    chat_text = f"chat-{uuid.uuid4().hex}"
    name = unique()
    with Wire(node.address) as a, Wire(node.address) as b:
        aid = a.register(name, password)
        bid = b.register(None, password)
        b.login(bid, password)
        token = a.request({"msgid": 1, "id": aid, "password": password, "resume": True})["token"]
        a.send({"msgid": 5, "to": bid, "msg": chat_text})
        assert b.recv()["msg"] == chat_text
        a.close()  # a disconnect keeps the token (a log-out would revoke it)
        with Wire(node.address) as again:
            assert wait_until(lambda: again.request({"msgid": 1, "id": aid, "token": token})["errno"] == 0)
            assert again.request({"msgid": 10, "seq": 1})["errno"] == 0
        storm = 20
        with Wire(node.address) as guesser:
            for i in range(storm):
                guess = f"{password}-guess{i}"
                assert guesser.request({"msgid": 1, "id": bid, "password": guess})["errno"] == 1
            summary = node.wait_for_log("login.failed.summary", timeout=15)

    objects = [json.loads(line) for line in node.lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "msg"} <= o.keys() for o in objects)
    events = audit_lines(node.lines)
    register = [e for e in events if e["event"] == "register"]
    assert {(e["user"], e["ip"]) for e in register} == {(aid, "127.0.0.1"), (bid, "127.0.0.1")}
    assert [e["name"] for e in register if e["user"] == aid] == [name]
    logins = [(e["user"], e["method"]) for e in events if e["event"] == "login"]
    assert logins == [(bid, "password"), (aid, "password"), (aid, "resume token")]
    assert [e["user"] for e in events if e["event"] == "logout"] == [aid]
    assert all(e["level"] == "INFO" for e in events)

    # (the token login may have been retried while the node still had a online: "online elsewhere")
    failed = [e for e in events if e["event"] == "login.failed" and e["user"] == bid]
    summaries = [e for e in events if e["event"] == "login.failed.summary"]
    assert failed and all(e["reason"] == "wrong password" for e in failed)
    assert len(failed) + sum(s["count"] for s in summaries) == storm  # every failure told, once
    assert len(failed) < storm, summary  # but not one line each
    assert all(s["reasons"] == {"wrong password": s["count"]} and s["addresses"] == 1 for s in summaries)

    everything = "\n".join(node.lines)
    for secret in (password, token, chat_text, "guess"):
        assert secret not in everything, secret


def test_failed_logins_summarised_per_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    guard = audit.FailedLogins(logged=2, window=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="gchat.audit"):
        for i in range(500):
            guard.failed("wrong password" if i % 2 else "no such user", f"10.0.0.{i % 7}", user=i)
        assert len(caplog.records) == 2  # the rest wait for the summary
        now[0] = 61.0
        guard.failed("wrong password", "10.0.0.1", user=1)  # a new window: the summary first
    fields = [r.audit for r in caplog.records]  # type: ignore[attr-defined]
    assert [f["event"] for f in fields] == ["login.failed"] * 2 + ["login.failed.summary", "login.failed"]
    assert fields[2]["count"] == 498 and fields[2]["addresses"] == 7
    assert fields[2]["reasons"] == {"wrong password": 249, "no such user": 249}


def test_admin_action_helper_and_secrets_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gchat.audit"):
        audit.admin_action("kick", operator="root", user=42, reason="spam")
    (record,) = caplog.records
    assert record.getMessage() == "admin.kick operator=root user=42 reason=spam"
    line = json.loads(JsonFormatter().format(record))
    assert (line["event"], line["operator"], line["user"], line["level"]) == ("admin.kick", "root", 42, "INFO")
    with pytest.raises(ValueError):
        audit.admin_action("passwd", user=42, password="new secret")
    with pytest.raises(ValueError):
        audit.event("login", user=1, token="abc")


def test_log_format_is_checked() -> None:
    with pytest.raises(ValueError, match="log_format"):
        config.from_sources(None, {"GCHAT_LOG_FORMAT": "xml"})
