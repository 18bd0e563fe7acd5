"""The keel.v1 protocol core, without sockets: frames in, values and exact bytes out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.protocol import (
    FRAME_FIELDS,
    Command,
    ErrorCode,
    FrameError,
    Session,
    SessionLimits,
    parse_frame,
)

CHANNEL = "0b6f3c1e-2a4d-4c8e-9f10-1234567890ab"
MESSAGE = "7d1e2f3a-4b5c-4d6e-8f90-abcdef012345"

#: One valid frame of every client type, with every optional field set.
VALID: dict[str, dict[str, Any]] = {
    "auth": {"token": "a.b.c"},
    "subscribe": {"channel_id": CHANNEL, "since_seq": 4},
    "unsubscribe": {"channel_id": CHANNEL},
    "send": {
        "channel_id": CHANNEL,
        "content": "hello",
        "message_type": "text",
        "reply_to": MESSAGE,
        "client_msg_id": "c-1",
        "attachment_ids": [MESSAGE],
    },
    "edit": {"channel_id": CHANNEL, "message_id": MESSAGE, "content": "hello again"},
    "delete": {"channel_id": CHANNEL, "message_id": MESSAGE},
    "react": {"channel_id": CHANNEL, "message_id": MESSAGE, "emoji": "👍"},
    "unreact": {"channel_id": CHANNEL, "message_id": MESSAGE, "emoji": "👍"},
    "typing": {"channel_id": CHANNEL},
    "read": {"channel_id": CHANNEL, "seq": 7},
    "presence": {"channel_id": CHANNEL},
    "ping": {},
    "inbox": {"unread_only": True, "page_size": 20, "page_token": "next"},
    "mark_read": {"ids": [MESSAGE], "all": False},
    "push_config": {},
    "push_subscribe": {
        "subscription": {
            "endpoint": "https://push.example/abc",
            "keys": {"p256dh": "BNcR", "auth": "tBHI"},
        }
    },
    "push_unsubscribe": {"endpoint": "https://push.example/abc"},
}


def frame(kind: str, frame_id: Any = "f1", **fields: Any) -> str:
    return json.dumps({"type": kind, "id": frame_id, **fields})


def refused(text: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse_frame(text)
    return caught.value


# -- parse_frame ---------------------------------------------------------------------------


def test_every_frame_type_has_a_valid_example() -> None:
    assert set(VALID) == set(FRAME_FIELDS)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_valid_frame_becomes_its_command(kind: str) -> None:
    fields = dict(VALID[kind])
    command = parse_frame(frame(kind, "f1", **fields))
    channel_id = fields.pop("channel_id", "")
    assert command == Command(kind, "f1", channel_id, fields)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_optional_fields_may_be_left_out(kind: str) -> None:
    required = {
        name: value
        for name, value in VALID[kind].items()
        if not FRAME_FIELDS[kind][name].endswith("?")
    }
    command = parse_frame(frame(kind, 9, **required))
    required.pop("channel_id", None)
    assert command.id == 9 and command.fields == required


def test_an_id_is_optional_and_may_be_a_string_or_a_number() -> None:
    assert parse_frame('{"type":"ping"}').id is None
    assert parse_frame('{"type":"ping","id":"x"}').id == "x"
    assert parse_frame('{"type":"ping","id":12}').id == 12


@pytest.mark.parametrize("bad_id", [[1], {"a": 1}, 1.5])
def test_an_id_of_another_type_is_refused(bad_id: object) -> None:
    error = refused(json.dumps({"type": "ping", "id": bad_id}))
    assert error.code is ErrorCode.BAD_FRAME and error.frame_id is None


def test_unknown_fields_are_ignored() -> None:
    command = parse_frame(frame("typing", channel_id=CHANNEL, extra=1))
    assert command == Command("typing", "f1", CHANNEL, {})


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (kind, name)
        for kind, spec in sorted(FRAME_FIELDS.items())
        for name, type_name in spec.items()
        if not type_name.endswith("?")
    ],
)
def test_a_missing_required_field_is_a_bad_frame_naming_it(kind: str, name: str) -> None:
    fields = {k: v for k, v in VALID[kind].items() if k != name}
    error = refused(frame(kind, "f7", **fields))
    assert error.code is ErrorCode.BAD_FRAME
    assert error.frame_id == "f7"
    assert f'"{name}" is required' in error.message


def test_a_push_subscription_keeps_only_what_the_bridge_passes_on() -> None:
    browser = {
        "endpoint": "https://push.example/abc",
        "expirationTime": None,
        "keys": {"p256dh": "BNcR", "auth": "tBHI", "extra": "x"},
    }
    command = parse_frame(frame("push_subscribe", subscription=browser))
    assert command.fields == {
        "subscription": {
            "endpoint": "https://push.example/abc",
            "keys": {"p256dh": "BNcR", "auth": "tBHI"},
        }
    }


def test_lone_surrogates_in_lists_and_subscriptions_are_bad_frames() -> None:
    error = refused('{"type":"mark_read","ids":["a","\\udc00"]}')
    assert error.code is ErrorCode.BAD_FRAME and "lone surrogate" in error.message
    error = refused(
        '{"type":"push_subscribe","subscription":'
        '{"endpoint":"\\ud800","keys":{"p256dh":"a","auth":"b"}}}'
    )
    assert error.code is ErrorCode.BAD_FRAME and "lone surrogate" in error.message


def test_null_counts_as_missing() -> None:
    error = refused(frame("send", "f1", channel_id=CHANNEL, content=None))
    assert error.code is ErrorCode.BAD_FRAME and '"content" is required' in error.message
    command = parse_frame(frame("subscribe", "f1", channel_id=CHANNEL, since_seq=None))
    assert command.fields == {}


@pytest.mark.parametrize(
    ("kind", "name", "wrong"),
    [
        ("auth", "token", 12),
        ("subscribe", "channel_id", 5),
        ("subscribe", "since_seq", "3"),
        ("subscribe", "since_seq", 1.5),
        ("subscribe", "since_seq", -1),
        ("subscribe", "since_seq", True),
        ("send", "content", ["hi"]),
        ("send", "message_type", 1),
        ("send", "reply_to", {}),
        ("send", "client_msg_id", 3),
        ("send", "attachment_ids", MESSAGE),
        ("send", "attachment_ids", [MESSAGE] * 21),
        ("send", "attachment_ids", ["f" * 129]),
        ("edit", "message_id", 1),
        ("delete", "message_id", False),
        ("react", "emoji", 1),
        ("unreact", "emoji", []),
        ("typing", "channel_id", True),
        ("read", "seq", "7"),
        ("read", "seq", -2),
        ("presence", "channel_id", 0),
        ("inbox", "unread_only", 1),
        ("inbox", "unread_only", "true"),
        ("inbox", "page_size", 2**31),
        ("inbox", "page_size", -1),
        ("inbox", "page_token", 5),
        ("mark_read", "ids", "n-1"),
        ("mark_read", "ids", ["n-1", 2]),
        ("mark_read", "all", "yes"),
        ("push_subscribe", "subscription", "https://push.example/abc"),
        ("push_subscribe", "subscription", {"endpoint": "https://push.example/abc"}),
        ("push_subscribe", "subscription", {"endpoint": 1, "keys": {"p256dh": "a", "auth": "b"}}),
        ("push_subscribe", "subscription", {"endpoint": "e", "keys": {"p256dh": "a"}}),
        ("push_unsubscribe", "endpoint", ["e"]),
    ],
)
def test_a_field_of_the_wrong_type_is_a_bad_frame(kind: str, name: str, wrong: object) -> None:
    fields = {**VALID[kind], name: wrong}
    error = refused(frame(kind, "f3", **fields))
    assert error.code is ErrorCode.BAD_FRAME and error.frame_id == "f3"
    assert f'"{name}" must be' in error.message


@pytest.mark.parametrize("kind", ["shout", "", "PING", 3, None, ["ping"]])
def test_an_unknown_type_is_a_bad_frame_that_keeps_the_id(kind: object) -> None:
    error = refused(json.dumps({"type": kind, "id": "u1"}))
    assert error.code is ErrorCode.BAD_FRAME and error.frame_id == "u1"
    assert "unknown frame type" in error.message and "subscribe" in error.message


def test_a_missing_type_is_a_bad_frame() -> None:
    error = refused('{"id": "x"}')
    assert error.code is ErrorCode.BAD_FRAME and error.frame_id == "x"


def test_an_overlong_unknown_type_is_cut_in_the_message() -> None:
    error = refused(json.dumps({"type": "x" * 1000}))
    assert len(error.message) < 300


@pytest.mark.parametrize("text", ["", "{", "not json", '{"type": "ping",}', "\x00"])
def test_text_that_is_not_json_is_a_bad_frame(text: str) -> None:
    error = refused(text)
    assert error.code is ErrorCode.BAD_FRAME and error.frame_id is None
    assert "not valid JSON" in error.message


@pytest.mark.parametrize("text", ["[]", '["ping"]', '"ping"', "3", "null", "true"])
def test_json_that_is_not_an_object_is_a_bad_frame(text: str) -> None:
    error = refused(text)
    assert error.code is ErrorCode.BAD_FRAME and error.frame_id is None
    assert "JSON object" in error.message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (frame("read", channel_id=CHANNEL, seq=2**64), "from 0 to 9223372036854775807"),
        (frame("subscribe", channel_id=CHANNEL, since_seq=2**63), "from 0 to"),
        ('{"type":"read","channel_id":"x","seq":NaN}', "whole number"),
        ('{"type":"send","channel_id":"\\ud800","content":"x"}', "lone surrogate"),
        ('{"type":"send","channel_id":"a","content":"\\udc00x"}', "lone surrogate"),
        ('{"type":"ping","id":"\\ud83d"}', '"id" must be'),
        ('{"type":"ping","id":true}', '"id" must be'),
        ('{"type":"ping","id":1e999}', '"id" must be'),
        ('{"type":"ping","id":' + str(2**64) + "}", '"id" must be'),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"type":"ping","x":' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
    ids=[
        "seq-2**64",
        "since_seq-2**63",
        "NaN",
        "surrogate-field",
        "surrogate-content",
        "surrogate-id",
        "bool-id",
        "infinite-id",
        "huge-id",
        "deep-array",
        "deep-unknown-field",
    ],
)
def test_out_of_range_numbers_lone_surrogates_and_deep_nesting_are_bad_frames(
    text: str, says: str
) -> None:
    error = refused(text)
    assert error.code is ErrorCode.BAD_FRAME and says in error.message, error.message


#: Text of any kind, lone surrogates included (JSON's \\ud800 escapes make them).
_text = st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Zs", "Cc", "Cs"]))
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
#: Whole numbers at and past the edges of what a frame may carry.
_numbers = st.integers(min_value=-(2**65), max_value=2**65) | st.sampled_from(
    [0, 2**63 - 1, 2**63, 2**64, -1]
)


#: Values mostly of each field type (strings are the rest).
_TYPED: dict[str, st.SearchStrategy[Any]] = {
    "int": _numbers,
    "int32": _numbers | st.sampled_from([2**31 - 1, 2**31]),
    "bool": st.booleans(),
    "[str]": st.lists(_text, max_size=3),
    "[file_id]": st.lists(_text, max_size=22),
    "push_subscription": st.fixed_dictionaries(
        {"endpoint": _text, "keys": st.fixed_dictionaries({"p256dh": _text, "auth": _text})},
        optional={"expirationTime": _json},
    ),
}


def _encodable(value: object) -> None:
    """Fail unless ``value`` (and what it holds) can be put in a protobuf message."""
    if isinstance(value, str):
        value.encode()
    elif value is None or isinstance(value, bool):
        pass
    elif isinstance(value, int):
        assert -(2**63) <= value < 2**63
    elif isinstance(value, list):
        for item in value:
            _encodable(item)
    else:
        assert isinstance(value, dict), value
        for item in value.values():
            _encodable(item)


@st.composite
def _frames(draw: st.DrawFn) -> str:
    """Frames shaped like keel.v1's — a known type with its fields mostly of the right
    kind, at and past their edges (lone surrogates, 64-bit overflow), or an unknown type
    with any fields; any id — or any text at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_text)
    kind = draw(st.sampled_from(sorted(FRAME_FIELDS)) | st.text(max_size=8))
    raw: dict[str, Any] = {"type": kind}
    for name, spec in FRAME_FIELDS.get(kind, {}).items():
        if draw(st.integers(0, 5)):  # mostly present, mostly of its kind
            typed = _TYPED.get(spec.rstrip("?"), _text | st.just(CHANNEL))
            raw[name] = draw(typed if draw(st.integers(0, 4)) else _json)
    raw |= draw(st.dictionaries(st.text(max_size=6), _json, max_size=3))
    if draw(st.booleans()):
        raw["id"] = draw(_text | _numbers | _json)
    return json.dumps(raw, ensure_ascii=draw(st.booleans()))


@settings(max_examples=600, deadline=None)
@given(_frames())
def test_any_frame_becomes_a_command_or_a_bad_frame_never_another_error(text: str) -> None:
    """What the bridge hands on from a frame can always be encoded: protobuf strings and
    WebSocket text need valid UTF-8, seqs fit in 64 bits."""
    try:
        command = parse_frame(text)
    except FrameError as error:
        assert error.code in set(ErrorCode)
        p.error_frame(error.code, error.message, error.frame_id).encode()  # can be sent back
        return
    assert command.type in FRAME_FIELDS
    for value in [command.channel_id, *command.fields.values(), command.id]:
        _encodable(value)


def test_binary_frames_are_refused_even_when_they_hold_json() -> None:
    error = refused(b'{"type":"ping","id":1}')
    assert error.code is ErrorCode.BAD_FRAME and "binary" in error.message


def test_error_codes_are_the_documented_strings() -> None:
    assert {code.value for code in ErrorCode} == {
        "bad_frame",
        "invalid_argument",
        "not_found",
        "permission_denied",
        "failed_precondition",
        "out_of_range",
        "rate_limited",
        "too_many_subscriptions",
        "not_subscribed",
        "unavailable",
        "not_configured",
        "internal",
    }


def test_close_codes_are_the_documented_numbers() -> None:
    assert {code.name: int(code) for code in p.CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "SERVER_RESTART": 1012,
        "BAD_TOKEN": 4001,
        "TOKEN_EXPIRED": 4002,
        "ORIGIN_REFUSED": 4003,
        "AUTH_TIMEOUT": 4004,
        "TOO_MANY_CONNECTIONS": 4005,
        "SLOW_CONSUMER": 4008,
        "RATE_LIMITED": 4009,
    }


# -- server frames -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_encode_text_frame_is_byte_for_byte_what_websockets_sends(length: int) -> None:
    payload = bytes((i * 7) % 256 for i in range(length))
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert p.encode_text_frame(payload) == expected


def test_encode_text_frame_headers() -> None:
    assert p.encode_text_frame(b"") == b"\x81\x00"
    assert p.encode_text_frame(b"a" * 125)[:2] == b"\x81\x7d"
    assert p.encode_text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert p.encode_text_frame(b"a" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("event", "channel_id", "seq", "data", "event_id"),
    [
        ("message:created", CHANNEL, 3, {"message": {"content": "hi", "seq": 3}}, "e-1"),
        ("presence:online", CHANNEL, 0, {"user_id": "bob"}, ""),
        ('we"ird\\name', "ch\n</script>", 0, {}, "id\u2028x"),
        ("reaction:added", CHANNEL, 2**40, {"emoji": "👍", "n": [1, 2.5, None, True]}, "e"),
    ],
)
def test_event_frame_is_valid_json_with_exactly_the_fields(
    event: str, channel_id: str, seq: int, data: dict[str, Any], event_id: str
) -> None:
    data_json = json.dumps(data, ensure_ascii=False)
    text = p.event_frame(event, channel_id, seq, data_json, event_id)
    assert json.loads(text) == {
        "type": "event",
        "event": event,
        "channel_id": channel_id,
        "seq": seq,
        "event_id": event_id,
        "data": data,
    }


def test_event_frame_keeps_the_data_bytes_as_given() -> None:
    data_json = '{"b":1,  "a":"x"}'
    assert p.event_frame("x", CHANNEL, 1, data_json).endswith(',"data":' + data_json + "}")


def test_reply_frames() -> None:
    assert json.loads(p.ack_frame("a1")) == {"type": "ack", "id": "a1"}
    assert json.loads(p.ack_frame(2, {"seq": 3})) == {"type": "ack", "id": 2, "result": {"seq": 3}}
    assert json.loads(p.error_frame(ErrorCode.NOT_FOUND, "gone", "e1")) == {
        "type": "error",
        "code": "not_found",
        "message": "gone",
        "id": "e1",
    }
    assert "id" not in json.loads(p.error_frame(ErrorCode.BAD_FRAME, "bad"))
    assert json.loads(p.welcome_frame("c1", "alice", "t1")) == {
        "type": "welcome",
        "protocol": "keel.v1",
        "connection_id": "c1",
        "user_id": "alice",
        "tenant_id": "t1",
    }
    welcome = p.welcome_frame("c1", "alice", "t1", "2026-11-30T10:00:00Z", "http://f.example")
    assert json.loads(welcome) == {
        "type": "welcome",
        "protocol": "keel.v1",
        "connection_id": "c1",
        "user_id": "alice",
        "tenant_id": "t1",
        "expire_time": "2026-11-30T10:00:00Z",
        "files_url": "http://f.example",
    }
    assert json.loads(p.presence_frame(CHANNEL, ["a", "b"], "p1")) == {
        "type": "presence",
        "channel_id": CHANNEL,
        "users": ["a", "b"],
        "id": "p1",
    }
    assert json.loads(p.typing_frame(CHANNEL, "bob")) == {
        "type": "typing",
        "channel_id": CHANNEL,
        "user_id": "bob",
    }
    assert json.loads(p.pong_frame(5)) == {"type": "pong", "id": 5}
    assert (
        p.ack_frame("ü", {"content": "héllo"})
        == '{"type":"ack","id":"ü","result":{"content":"héllo"}}'
    )


# -- Session: the rate budget --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admit_spends_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    session = Session(SessionLimits(messages_per_second=2.0, burst=3), clock=clock)
    assert [session.admit() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.25  # half a token
    assert not session.admit()
    clock.now += 0.25  # one token
    assert session.admit() and not session.admit()
    clock.now += 100  # never more than the burst
    assert [session.admit() for _ in range(4)] == [True, True, True, False]


def test_flooding_after_enough_refusals_in_a_row() -> None:
    clock = Clock()
    limits = SessionLimits(messages_per_second=1.0, burst=1, flood_tolerance=3)
    session = Session(limits, clock=clock)
    assert session.admit()
    assert not session.admit() and not session.admit()
    assert not session.flooding
    clock.now += 1.0
    assert session.admit()  # an admitted frame resets the count
    assert not session.admit() and not session.admit()
    assert not session.flooding
    assert not session.admit()
    assert session.flooding


# -- Session: subscriptions ----------------------------------------------------------------


def subscribe(session: Session, channel_id: str, since_seq: int | None = None, frame_id: Any = 1):
    fields = {} if since_seq is None else {"since_seq": since_seq}
    return session.start(Command("subscribe", frame_id, channel_id, fields))


def test_max_subscriptions() -> None:
    session = Session(SessionLimits(max_subscriptions=2))
    subscribe(session, "a")
    subscribe(session, "b")
    again = subscribe(session, "a", frame_id="again")  # not a new one
    assert again.frame_id == "again" and len(session.subscriptions) == 2
    with pytest.raises(FrameError) as caught:
        subscribe(session, "c", frame_id="c1")
    assert caught.value.code is ErrorCode.TOO_MANY_SUBSCRIPTIONS
    assert caught.value.frame_id == "c1" and "at most 2" in caught.value.message
    assert session.stop("a") and not session.stop("a")
    subscribe(session, "c")
    assert set(session.subscriptions) == {"b", "c"}


def test_a_subscription_starts_at_since_seq_and_not_live() -> None:
    session = Session(SessionLimits())
    sub = subscribe(session, CHANNEL, since_seq=5, frame_id="s")
    assert (sub.channel_id, sub.last_seq, sub.live, sub.frame_id) == (CHANNEL, 5, False, "s")
    assert subscribe(session, "other").last_seq == 0
