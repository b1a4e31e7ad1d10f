"""The pure protocol module: framing, validation, replies. No sockets."""

from __future__ import annotations

import itertools

import pytest

from gchat.protocol import (
    MAX_DEPTH,
    MAX_ID,
    Errno,
    FrameDecoder,
    FrameTooLarge,
    Limits,
    MsgId,
    ProtocolError,
    ack,
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


def test_a_complete_frame_of_exactly_the_cap_is_a_frame() -> None:
    at_cap = b"x" * 16
    assert FrameDecoder(frame_max=16).feed(at_cap + b"\n") == [at_cap]
    assert FrameDecoder(frame_max=16).feed(b" \r" + at_cap + b"\0") == [at_cap]  # filler is not counted
    d = FrameDecoder(frame_max=16)
    assert d.feed(at_cap[:9]) == [] and d.feed(at_cap[9:]) == [] and d.feed(b"\n" + at_cap + b"\n") == [at_cap] * 2
    assert d.buffered == 0


def test_frames_before_an_oversized_one_are_kept_for_handling() -> None:
    with pytest.raises(FrameTooLarge) as e:
        FrameDecoder(frame_max=8).feed(b'{"a":1}\n{"b":2}\0' + b"z" * 9 + b"\n")
    assert e.value.frames == [b'{"a":1}', b'{"b":2}']
    assert e.value.errmsg == "frame larger than 8 bytes"
    # the same when the oversized frame is still arriving
    with pytest.raises(FrameTooLarge) as e:
        FrameDecoder(frame_max=8).feed(b'{"a":1}\n' + b"z" * 9)
    assert e.value.frames == [b'{"a":1}'] and e.value.errmsg == "frame larger than 8 bytes"
    assert FrameTooLarge(8).frames == []


def test_a_stream_may_begin_with_a_terminator() -> None:
    a, b = b'{"a":1}', b'{"b":2}'
    for first, middle, last in itertools.product((b"\0", b"\n"), repeat=3):
        d = FrameDecoder()
        assert d.feed(first + a + middle + b + last) == [a, b], (first, middle, last)
        assert d.terminator == middle
    d = FrameDecoder()
    assert d.feed(b"\n") == [] and d.buffered == 0


def test_only_terminators_and_blanks_are_filler() -> None:
    # a vertical tab or form feed is content: the peer gets errno 3 for it, not silence
    assert FrameDecoder().feed(b"\x0b\n\x0c\0") == [b"\x0b", b"\x0c"]


def test_a_partial_frame_past_the_cap_is_refused_before_it_ends() -> None:
    # a vertical tab is content (see above): it counts toward the cap
    with pytest.raises(FrameTooLarge):
        FrameDecoder(frame_max=16).feed(b"\x0b" + b"y" * 16)


def test_a_frame_of_the_cap_arriving_after_filler_in_pieces() -> None:
    d = FrameDecoder(frame_max=16)
    assert d.feed(b"  \r\n  " + b"y" * 16) == []  # filler, then a whole cap of a frame: not too large
    assert d.feed(b"\n") == [b"y" * 16]


def test_whitespace_flood_is_not_buffered() -> None:
    d = FrameDecoder(frame_max=64)
    for _ in range(100):
        d.feed(b" " * 50)
    assert d.buffered <= 64
    # and a frame after the filler is whole, at the cap or under it
    assert d.feed(b"y" * 64 + b"\n") == [b"y" * 64]


def test_a_partial_frame_after_filler_keeps_its_bytes() -> None:
    d = FrameDecoder(frame_max=8)
    assert d.feed(b" " * 6 + b'{"a":') == []
    assert d.buffered == 5
    assert d.feed(b"1}\n") == [b'{"a":1}']


def test_encode_never_contains_a_raw_terminator() -> None:
    out = encode({"msg": "a\nb\0c"}, b"\0")
    assert out.count(b"\0") == 1 and out.endswith(b"\0") and b"\n" not in out
    assert loads(out[:-1]) == {"msg": "a\nb\0c"}


def test_parse_valid_chat_keeps_all_fields_and_seq() -> None:
    req = parse_request(b'{"msgid":5,"to":2,"msg":"hi","seq":7,"extra":true}')
    assert req.msgid == MsgId.ONE_CHAT and req.seq == 7 and req["to"] == 2 and req.get("extra") is True
    assert req.get("time") is None and req.get("time", "-") == "-"


def test_ids_at_both_ends_of_the_range_are_valid() -> None:
    assert parse_request(b'{"msgid":5,"to":0,"msg":"x"}')["to"] == 0
    assert parse_request(b'{"msgid":5,"to":%d,"msg":"x"}' % MAX_ID)["to"] == MAX_ID
    with pytest.raises(ProtocolError) as e:
        parse_request(b'{"msgid":5,"to":%d,"msg":"x"}' % (MAX_ID + 1))
    assert e.value.errmsg == "field 'to' is out of range"


def test_optional_fields_sent_as_null_are_left_out() -> None:
    req = parse_request(b'{"msgid":5,"id":null,"to":2,"msg":"x","time":null}')
    assert "id" not in req.body and "time" not in req.body and req.seq is None


def test_login_with_a_token_in_place_of_the_password() -> None:
    req = parse_request(b'{"msgid":1,"id":4,"token":"t","resume":true}')
    assert req["token"] == "t" and req["resume"] is True and "password" not in req.body
    with pytest.raises(ProtocolError) as e:
        parse_request(b'{"msgid":1,"id":4,"token":"t","resume":1}')
    assert e.value.errmsg == "field 'resume' must be true or false"


def test_a_bad_seq_is_refused_before_anything_else() -> None:
    with pytest.raises(ProtocolError) as e:
        parse_request(b'{"msgid":99,"seq":"1"}')
    assert (e.value.errno, e.value.msgid, e.value.seq) == (Errno.BAD_REQUEST, 0, None)
    with pytest.raises(ProtocolError) as e:
        parse_request(b'{"msgid":true,"seq":4}')
    assert (e.value.errno, e.value.seq) == (Errno.BAD_REQUEST, 4)


@pytest.mark.parametrize("frame, errno, errmsg, msgid", [
    (b'not json', 3, "not valid JSON", 0),
    (b'[{"seq":3}]', 3, "a request must be a JSON object", 0),
    (b'{"seq":"3"}', 3, "seq must be an integer", 0),
    (b'{"msgid":"1","seq":3}', 3, "msgid missing or not an integer", 0),
    (b'{"msgid":42,"seq":3}', 4, "unknown msgid 42", 42),
    (b'{"msgid":2,"seq":3}', 4, "msgid 2 is not a request", 2),
    (b'{"msgid":5,"to":2,"seq":3}', 3, "field 'msg' is missing", 5),
    (b'{"msgid":5,"to":"2","msg":"x","seq":3}', 3, "field 'to' must be an integer", 5),
    (b'{"msgid":5,"to":-1,"msg":"x","seq":3}', 3, "field 'to' is out of range", 5),
    (b'{"msgid":5,"to":2,"msg":1,"seq":3}', 3, "field 'msg' must be a string", 5),
    (b'{"msgid":1,"id":1,"token":"t","resume":"y","seq":3}', 3, "field 'resume' must be true or false", 1),
    (b'{"msgid":7,"groupname":"' + b"g" * 51 + b'","seq":3}', 3, "field 'groupname' is longer than 50 characters", 7),
    (b'{"msgid":1,"id":1,"seq":3}', 3, "field 'password' is missing", 1),
])
def test_errors_say_what_is_wrong_and_carry_the_request(frame: bytes, errno: int, errmsg: str, msgid: int) -> None:
    """The peer sees errno, errmsg and its seq (docs/protocol.md); the log sees str(error)."""
    with pytest.raises(ProtocolError) as e:
        parse_request(frame)
    assert (e.value.errno, e.value.errmsg, e.value.msgid) == (errno, errmsg, msgid)
    assert e.value.seq == (3 if frame.startswith(b"{") and b'"seq":3' in frame else None)
    assert str(e.value) == errmsg


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
    at_limit = "x" * limits.msg_max
    assert parse_request(b'{"msgid":5,"to":1,"msg":"' + at_limit.encode() + b'"}')["msg"] == at_limit
    with pytest.raises(ProtocolError) as e:
        parse_request(b'{"msgid":5,"to":1,"msg":"' + b"x" * (limits.msg_max + 1) + b'"}')
    assert e.value.errno == Errno.BAD_REQUEST
    assert e.value.errmsg == f"field 'msg' is longer than {limits.msg_max} characters"
    # characters, not bytes: 8,000 Chinese characters are a valid message
    chinese = "聊" * limits.msg_max
    assert parse_request(('{"msgid":5,"to":1,"msg":"' + chinese + '"}').encode())["msg"] == chinese
    for field, cap, frame in [
        ("password", limits.password_max, '{"msgid":1,"id":1,"password":"%s"}'),
        ("token", limits.password_max, '{"msgid":1,"id":1,"token":"%s"}'),
        ("groupdesc", limits.desc_max, '{"msgid":7,"groupname":"g","groupdesc":"%s"}'),
        ("groupname", limits.name_max, '{"msgid":7,"groupname":"%s"}'),
        ("name", limits.name_max, '{"msgid":9,"groupid":1,"msg":"m","name":"%s"}'),
        ("time", limits.name_max, '{"msgid":5,"to":1,"msg":"m","time":"%s"}'),
    ]:
        assert parse_request((frame % ("v" * cap)).encode())[field] == "v" * cap, field
        with pytest.raises(ProtocolError) as e:
            parse_request((frame % ("v" * (cap + 1))).encode())
        assert e.value.errno == Errno.BAD_REQUEST, field
    # a name too long to register is errno 1 (part A), from the service: it passes here
    assert parse_request(b'{"msgid":3,"name":"' + b"n" * 51 + b'","password":"p"}')["name"] == "n" * 51


def test_limits_are_configurable() -> None:
    small = Limits(msg_max=3)
    assert parse_request(b'{"msgid":5,"to":1,"msg":"abc"}', small)["msg"] == "abc"
    with pytest.raises(ProtocolError):
        parse_request(b'{"msgid":5,"to":1,"msg":"abcd"}', small)


def test_error_replies_address_the_request() -> None:
    login = error_reply(ProtocolError(Errno.AUTH, "id or password error", 1))
    assert login == {"msgid": 2, "errno": 1, "errmsg": "id or password error"}
    reg = error_reply(ProtocolError(Errno.AUTH, "name is taken", 3, seq=4))
    assert reg == {"msgid": 4, "errno": 1, "errmsg": "name is taken", "seq": 4}
    chat = error_reply(ProtocolError(Errno.NOT_FOUND, "no user 9", 5, seq=1))
    assert chat == {"msgid": 11, "ack": 5, "errno": 7, "errmsg": "no user 9", "seq": 1}
    junk = error_reply(ProtocolError(Errno.BAD_REQUEST, "not valid JSON"))
    assert junk == {"msgid": 11, "ack": 0, "errno": 3, "errmsg": "not valid JSON"}
    # other requests refused are answered with ACK, whatever their msgid
    unknown = error_reply(ProtocolError(Errno.UNKNOWN_MSGID, "unknown msgid 99", 99, seq=0))
    assert unknown == {"msgid": 11, "ack": 99, "errno": 4, "errmsg": "unknown msgid 99", "seq": 0}
    out = error_reply(ProtocolError(Errno.NOT_LOGGED_IN, "log in first", 10))
    assert out == {"msgid": 11, "ack": 10, "errno": 5, "errmsg": "log in first"}


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


@pytest.mark.parametrize("char, ok", [("\x1f", False), (" ", True), ("\x7f", False), ("\x9f", False),
                                      ("\xa0", True)])
def test_valid_name_control_character_ranges(char: str, ok: bool) -> None:
    assert valid_name("a" + char + "b") is ok


def test_valid_name_length_follows_the_limits() -> None:
    assert valid_name("x" * 50) and not valid_name("x" * 51)
    assert valid_name("abc", Limits(name_max=3)) and not valid_name("abcd", Limits(name_max=3))


def test_ack_and_dumps() -> None:
    assert ack(5, 3, delivered="online") == {"msgid": 11, "ack": 5, "seq": 3, "errno": 0, "delivered": "online"}
    assert dumps({"a": "\n"}) == b'{"a":"\\n"}' and encode({"a": 1}) == b'{"a":1}\n'


def test_blanks_inside_a_frame_are_kept_and_both_terminators_split_on_either_path() -> None:
    """Ordinary traffic and a stream dense with terminators take different
    paths through the decoder: the frames are the same, blanks inside a
    frame kept, NUL and LF both ends, a vertical tab still content."""
    a, b = b'{"msg": "a b\\tc", "pad": "' + b"." * 40 + b'"}', b'{"b": 2}'
    for filler in (b"", b"\n" * 64):  # ordinary, then dense
        assert FrameDecoder().feed(filler + a + b"\0" + b + b"\n") == [a, b], filler
        assert FrameDecoder().feed(filler + a + b"\n" + b"\x0b\0") == [a, b"\x0b"], filler


def test_nesting_of_objects_alone_is_limited_too() -> None:
    inner = MAX_DEPTH
    frame = b'{"seq":3,"msgid":5,"to":1,"msg":"x","extra":' + b'{"a":' * inner + b"1" + b"}" * inner + b"}"
    with pytest.raises(ProtocolError) as e:
        parse_request(frame)
    assert (e.value.errno, e.value.msgid, e.value.seq) == (Errno.BAD_REQUEST, 5, 3)
    assert e.value.errmsg == f"nested deeper than {MAX_DEPTH} levels"


def test_a_first_request_in_pieces_still_sets_the_reply_terminator() -> None:
    d = FrameDecoder()
    assert d.feed(b'{"a":') == [] and d.feed(b'1}\0') == [b'{"a":1}']
    assert d.reply_terminator == b"\0"


def test_a_single_oversized_frame_says_the_cap() -> None:
    with pytest.raises(FrameTooLarge) as e:
        FrameDecoder(frame_max=8).feed(b"z" * 9 + b"\n")
    assert e.value.errmsg == "frame larger than 8 bytes"


# Values for each field of a chat message: valid ones at the edges, and
# each kind of wrong one (type, range, length, null, nesting).
_CHAT_VALUES: dict[str, list[object]] = {
    "to": [0, MAX_ID, MAX_ID + 1, -1, True, 2.0, "2", None, [2]],
    "groupid": [7, MAX_ID + 1, False, None, {"a": 1}],
    "msg": ["hi", "x" * 8000, "x" * 8001, "", 5, None, ["hi"]],
    "seq": [3, -4, 2**62, True, 1.5, "3", None],
    "id": [1, -1, MAX_ID + 1, False, "1", None],
    "name": ["a", "n" * 50, "n" * 51, 1, None],
    "time": ["t", "t" * 50, "t" * 51, None, []],
    "msgid": [5, 9, 5.0, True, "5", [5], {"5": 5}, None],
    "extra": [None, [[1]], {"deep": {"er": 1}}, "x"],
}
_ABSENT = object()


def _outcome(frame: bytes) -> tuple[object, ...]:
    try:
        req = parse_request(frame)
    except ProtocolError as e:
        return ("refused", e.errno, e.errmsg, e.msgid, e.seq)
    return ("accepted", req.msgid, req.body, req.seq)


def test_the_chat_fast_path_agrees_with_the_field_by_field_checks() -> None:
    """parse_request checks a valid chat message at once and sends every
    other frame through the checks of each field: for every shape of a
    chat message, the outcome (accepted body, or errno, text, msgid, seq)
    is that of the field-by-field checks."""
    from gchat.protocol import _parse_checked  # the checks alone

    both = {"msgid": 5, "id": 1, "name": "a", "to": 2, "groupid": 7, "msg": "hi", "time": "t", "seq": 3}
    # and each message with only its own fields: the fast path's usual case
    # (no field it does not check, so no look for nulls or nesting)
    own = {5: {k: v for k, v in both.items() if k != "groupid"}, 9: {k: v for k, v in both.items() if k != "to"}}
    tried = 0
    for field, values in _CHAT_VALUES.items():
        for value in [*values, _ABSENT]:
            for msgid, base in ((5, both), (9, both), (5, own[5]), (9, own[9]), (9, own[5]), (5, own[9])):
                obj = dict(base, msgid=msgid)
                if value is _ABSENT:
                    obj.pop(field, None)
                else:
                    obj[field] = value
                frame = dumps(obj)
                expected: tuple[object, ...]
                try:
                    req = _parse_checked(loads(frame), frame, Limits())
                    expected = ("accepted", req.msgid, req.body, req.seq)
                except ProtocolError as e:
                    expected = ("refused", e.errno, e.errmsg, e.msgid, e.seq)
                assert _outcome(frame) == expected, frame
                tried += 1
    assert tried > 300
