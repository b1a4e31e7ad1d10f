"""The pure protocol module: framing, validation, replies. No sockets."""

from __future__ import annotations

import pytest

from gchat.protocol import (
    MAX_DEPTH,
    Errno,
    FrameDecoder,
    FrameTooLarge,
    Limits,
    MsgId,
    ProtocolError,
    dumps,
    encode,
    error_reply,
    loads,
    parse_request,
    valid_name,
)

CHAT = b'{"msgid":5,"id":1,"name":"a","to":2,"msg":"hi","time":"t"}'


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for c in chunks:
        out += decoder.feed(c)
    return out


@pytest.mark.parametrize("term", [b"\0", b"\n"])
def test_one_frame_and_its_terminator_is_remembered(term: bytes) -> None:
    d = FrameDecoder()
    assert d.reply_terminator == b"\n"  # until a frame has been seen
    assert d.feed(CHAT + term) == [CHAT]
    assert d.terminator == term and d.reply_terminator == term


def test_coalesced_frames_mixed_terminators_all_handled_in_order() -> None:
    d = FrameDecoder()
    frames = d.feed(b'{"a":1}\0{"b":2}\n{"c":3}\0')
    assert frames == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert d.terminator == b"\0"  # the first frame's


def test_one_byte_at_a_time() -> None:
    stream = CHAT + b"\0" + b'{"msgid":10}' + b"\n"
    d = FrameDecoder()
    out = feed_all(d, [stream[i : i + 1] for i in range(len(stream))])
    assert out == [CHAT, b'{"msgid":10}']
    assert d.buffered == 0


def test_split_at_every_position() -> None:
    stream = CHAT + b"\n" + CHAT + b"\0"
    for cut in range(len(stream) + 1):
        d = FrameDecoder()
        assert feed_all(d, [stream[:cut], stream[cut:]]) == [CHAT, CHAT], cut


def test_empty_frames_and_whitespace_between_frames_are_skipped() -> None:
    d = FrameDecoder()
    assert d.feed(b"\0\0\n \r\n" + CHAT + b"\r\n\0  \n") == [CHAT]
    assert d.terminator == b"\n"


def test_frame_over_cap_is_refused_complete_or_still_arriving() -> None:
    with pytest.raises(FrameTooLarge) as e:
        FrameDecoder(frame_max=16).feed(b"x" * 17 + b"\n")
    assert e.value.errno == Errno.FRAME_TOO_LARGE
    d = FrameDecoder(frame_max=16)
    d.feed(b"y" * 16)  # at the cap, no terminator yet: still fine
    with pytest.raises(FrameTooLarge):
        d.feed(b"y")


def test_runs_of_empty_frames_between_real_ones_fed_whole_in_chunks_and_bytewise() -> None:
    # issue 11 defect 3: runs like these once cost a Python loop turn (and a
    # rescan) per terminator; the frames must come out the same every way
    stream = (b"\0" * 70_000 + CHAT + b"\r\n" * 40_000 + b'{"msgid":10}' + b" \n\0\t" * 9_000
              + CHAT + b"\0" + b"\n" * 5)
    expected = [CHAT, b'{"msgid":10}', CHAT]
    for size in (len(stream), 65536, 4096, 97):
        d = FrameDecoder()
        assert feed_all(d, [stream[i : i + size] for i in range(0, len(stream), size)]) == expected, size
        assert d.buffered == 0 and d.terminator == b"\n"


def test_whitespace_flood_is_not_buffered() -> None:
    d = FrameDecoder(frame_max=64)
    for _ in range(100):
        d.feed(b" " * 50)
    assert d.buffered <= 64


def test_encode_never_contains_a_raw_terminator() -> None:
    out = encode({"msg": "a\nb\0c"}, b"\0")
    assert out.count(b"\0") == 1 and out.endswith(b"\0") and b"\n" not in out
    assert loads(out[:-1]) == {"msg": "a\nb\0c"}


def test_parse_valid_chat_keeps_all_fields_and_seq() -> None:
    req = parse_request(b'{"msgid":5,"to":2,"msg":"hi","seq":7,"extra":true}')
    assert req.msgid == MsgId.ONE_CHAT and req.seq == 7 and req["to"] == 2 and req.get("extra") is True


@pytest.mark.parametrize(
    "frame, errno, msgid",
    [
        (b"not json", Errno.BAD_REQUEST, 0),
        (b"[1,2]", Errno.BAD_REQUEST, 0),
        (b'"str"', Errno.BAD_REQUEST, 0),
        (b'{"id":1}', Errno.BAD_REQUEST, 0),
        (b'{"msgid":"5"}', Errno.BAD_REQUEST, 0),
        (b'{"msgid":true}', Errno.BAD_REQUEST, 0),
        (b'{"msgid":99}', Errno.UNKNOWN_MSGID, 99),
        (b'{"msgid":2,"errno":0}', Errno.UNKNOWN_MSGID, 2),
        (b'{"msgid":5,"to":2}', Errno.BAD_REQUEST, 5),
        (b'{"msgid":5,"to":"2","msg":"x"}', Errno.BAD_REQUEST, 5),
        (b'{"msgid":5,"to":true,"msg":"x"}', Errno.BAD_REQUEST, 5),
        (b'{"msgid":5,"to":-1,"msg":"x"}', Errno.BAD_REQUEST, 5),
        (b'{"msgid":5,"to":99999999999,"msg":"x"}', Errno.BAD_REQUEST, 5),
        (b'{"msgid":5,"to":2,"msg":7}', Errno.BAD_REQUEST, 5),
        (b'{"msgid":1,"id":1}', Errno.BAD_REQUEST, 1),
        (b'{"msgid":3,"name":"a","password":5}', Errno.BAD_REQUEST, 3),
        (b'{"msgid":9,"groupid":1.5,"msg":"x"}', Errno.BAD_REQUEST, 9),
        (b'{"msgid":7,"groupname":["x"]}', Errno.BAD_REQUEST, 7),
    ],
)
def test_bad_requests_get_the_errno_of_the_protocol(frame: bytes, errno: Errno, msgid: int) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_request(frame)
    assert e.value.errno == errno and e.value.msgid == msgid


def test_length_limits() -> None:
    limits = Limits()
    parse_request(b'{"msgid":5,"to":1,"msg":"' + b"x" * limits.msg_max + b'"}')
    with pytest.raises(ProtocolError) as e:
        parse_request(b'{"msgid":5,"to":1,"msg":"' + b"x" * (limits.msg_max + 1) + b'"}')
    assert e.value.errno == Errno.BAD_REQUEST
    # characters, not bytes: 8,000 Chinese characters are a valid message
    parse_request(('{"msgid":5,"to":1,"msg":"' + "聊" * limits.msg_max + '"}').encode())
    with pytest.raises(ProtocolError):
        parse_request(b'{"msgid":1,"id":1,"password":"' + b"p" * 129 + b'"}')
    with pytest.raises(ProtocolError):
        parse_request(b'{"msgid":7,"groupname":"g","groupdesc":"' + b"d" * 201 + b'"}')


def test_error_replies_address_the_request() -> None:
    login = error_reply(ProtocolError(Errno.AUTH, "id or password error", 1))
    assert login == {"msgid": 2, "errno": 1, "errmsg": "id or password error"}
    reg = error_reply(ProtocolError(Errno.AUTH, "name is taken", 3, seq=4))
    assert reg == {"msgid": 4, "errno": 1, "errmsg": "name is taken", "seq": 4}
    chat = error_reply(ProtocolError(Errno.NOT_FOUND, "no user 9", 5, seq=1))
    assert chat == {"msgid": 11, "ack": 5, "errno": 7, "errmsg": "no user 9", "seq": 1}
    junk = error_reply(ProtocolError(Errno.BAD_REQUEST, "not valid JSON"))
    assert junk == {"msgid": 11, "ack": 0, "errno": 3, "errmsg": "not valid JSON"}


@pytest.mark.parametrize("name, ok", [("alice", True), ("张三", True), ("🙂", True), ("", False),
                                      ("   ", False), ("a\nb", False), ("a\0b", False), ("x" * 51, False),
                                      ("a b", True), ("e\u0301", True), ("\u2764\ufe0f", True)])
def test_valid_name(name: str, ok: bool) -> None:
    assert valid_name(name) is ok


@pytest.mark.parametrize("name", ["bob ", " bob", "bob\t", "bob\u00a0", "\u3000bob", "bob\u200b",
                                  "\u200b\u200b", "\u200d", "\ufeff", "\u2060\u200c", "\u3164",
                                  "\u2800\u2800", "\u0301", "\u00ad"])
def test_names_with_white_space_at_an_end_or_nothing_visible_are_refused(name: str) -> None:
    # issue 11 defect 5: "bob " was free on SQLite and taken on MariaDB (PAD
    # SPACE); names of zero-width characters were accepted
    assert valid_name(name) is False


def _nested(levels: int) -> bytes:
    """A chat request whose extra field makes the whole object `levels` deep."""
    inner = levels - 1
    return b'{"msgid":5,"to":1,"msg":"x","extra":' + b"[" * inner + b"]" * inner + b"}"


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 254, 255, 1000])
def test_nesting_past_the_limit_is_errno_3(levels: int) -> None:
    # issue 11 defect 2: 254 to 1,023 levels parsed, then failed to encode
    # for delivery (errno 11, internal error)
    with pytest.raises(ProtocolError) as e:
        parse_request(_nested(levels).replace(b'"msgid":5', b'"seq":3,"msgid":5'))
    assert e.value.errno == Errno.BAD_REQUEST and e.value.msgid == 5 and e.value.seq == 3


def test_whatever_parses_encodes_again() -> None:
    for frame in (_nested(MAX_DEPTH), b'{"msgid":5,"to":1,"msg":"x","e":{"a":[{"b":[1,{"c":{}}]}]}}'):
        req = parse_request(frame)
        assert loads(dumps(req.body)) == req.body
