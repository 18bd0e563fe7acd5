"""The bridge's WebSocket protocol ``keel.v1``, without any I/O.

Everything here takes text and returns values: :func:`parse_frame` turns a
client frame into a :class:`Command` (or raises :class:`FrameError` with the
error code to send back); :class:`Session` holds one connection's
subscriptions and its rate budget; the ``*_frame`` functions build server
frames; :func:`encode_text_frame` makes the bytes of one unmasked WebSocket
text frame, once, for every subscriber.
``docs/protocol.md`` is the specification; this module (with the rooms' seam in
:mod:`gateway_bridge.bridge.room`) is its implementation.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

PROTOCOL: Final = "keel.v1"


class CloseCode(enum.IntEnum):
    """Close codes the bridge uses (documented in docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # also: no pong to the keepalive ping in time
    SERVER_RESTART = 1012
    BAD_TOKEN = 4001
    TOKEN_EXPIRED = 4002
    ORIGIN_REFUSED = 4003
    AUTH_TIMEOUT = 4004
    TOO_MANY_CONNECTIONS = 4005
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4009


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` frame."""

    BAD_FRAME = "bad_frame"  # not JSON, not an object, unknown type, missing or wrong fields
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    FAILED_PRECONDITION = "failed_precondition"
    OUT_OF_RANGE = "out_of_range"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    NOT_SUBSCRIBED = "not_subscribed"
    UNAVAILABLE = "unavailable"
    NOT_CONFIGURED = "not_configured"  # this bridge has no notification service to ask
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One bad field of a frame (an ``error`` frame's ``fields``): its name and why."""

    field: str
    description: str


class FrameError(Exception):
    """A client frame the bridge refuses; ``frame_id`` is echoed when it could be read;
    ``fields`` names the bad fields when the service that refused it said which."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        frame_id: Any = None,
        fields: tuple[FieldProblem, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id
        self.fields = fields


# -- client frames -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A valid client frame: its ``type``, ``id`` (echoed by the reply) and fields."""

    type: str
    id: Any
    channel_id: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


_STR, _INT, _OPT_STR, _OPT_INT = "str", "int", "str?", "int?"
_OPT_BOOL, _OPT_INT32, _OPT_STRS, _PUSH = "bool?", "int32?", "[str]?", "push_subscription"
_OPT_FILE_IDS = "[file_id]?"

#: The most files one ``send`` may attach, and the longest id it may name.
MAX_ATTACHMENTS: Final = 20
MAX_FILE_ID: Final = 128

#: Each client frame type and its fields (``?`` = optional): ``str``, ``int`` (0 to
#: :data:`MAX_INT`), ``int32`` (0 to :data:`MAX_INT32`), ``bool``, ``[str]`` (a list of
#: strings), ``[file_id]`` (at most :data:`MAX_ATTACHMENTS` strings of at most
#: :data:`MAX_FILE_ID` characters), ``push_subscription`` (a browser's
#: ``PushSubscription.toJSON()``).
FRAME_FIELDS: Final[dict[str, dict[str, str]]] = {
    "auth": {"token": _STR},
    "subscribe": {"channel_id": _STR, "since_seq": _OPT_INT},
    "unsubscribe": {"channel_id": _STR},
    "send": {
        "channel_id": _STR,
        "content": _STR,
        "message_type": _OPT_STR,
        "reply_to": _OPT_STR,
        "client_msg_id": _OPT_STR,
        "attachment_ids": _OPT_FILE_IDS,
    },
    "edit": {"channel_id": _STR, "message_id": _STR, "content": _STR},
    "delete": {"channel_id": _STR, "message_id": _STR},
    "react": {"channel_id": _STR, "message_id": _STR, "emoji": _STR},
    "unreact": {"channel_id": _STR, "message_id": _STR, "emoji": _STR},
    "typing": {"channel_id": _STR},
    "read": {"channel_id": _STR, "seq": _INT},
    "presence": {"channel_id": _STR},
    "ping": {},
    "inbox": {"unread_only": _OPT_BOOL, "page_size": _OPT_INT32, "page_token": _OPT_STR},
    "mark_read": {"ids": _OPT_STRS, "all": _OPT_BOOL},
    "push_config": {},
    "push_subscribe": {"subscription": _PUSH},
    "push_unsubscribe": {"endpoint": _STR},
}


def parse_frame(text: str | bytes) -> Command:
    """The :class:`Command` a client frame asks for; raises :class:`FrameError` otherwise."""
    if isinstance(text, bytes):
        raise FrameError(
            ErrorCode.BAD_FRAME, "binary frames are not part of keel.v1; send JSON text"
        )
    try:
        raw = json.loads(text)
    except ValueError:
        raise FrameError(ErrorCode.BAD_FRAME, "the frame is not valid JSON") from None
    except RecursionError:
        raise FrameError(ErrorCode.BAD_FRAME, "the frame is nested too deeply") from None
    if not isinstance(raw, dict):
        raise FrameError(ErrorCode.BAD_FRAME, 'a frame is a JSON object with a "type"')
    frame_id = raw.get("id")
    if frame_id is not None and not _id_ok(frame_id):
        raise FrameError(
            ErrorCode.BAD_FRAME, '"id" must be a string of text or a whole number (64-bit)'
        )
    kind = raw.get("type")
    spec = FRAME_FIELDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise FrameError(
            ErrorCode.BAD_FRAME,
            f"unknown frame type {str(kind)[:40]!r}; expected one of {', '.join(FRAME_FIELDS)}",
            frame_id,
        )
    values: dict[str, Any] = {}
    for name, kind_of in spec.items():
        value = raw.get(name)
        if value is None:
            if not kind_of.endswith("?"):
                raise FrameError(ErrorCode.BAD_FRAME, f'{kind}: "{name}" is required', frame_id)
            continue
        problem = _field_problem(kind_of.rstrip("?"), value)
        if problem is not None:
            raise FrameError(ErrorCode.BAD_FRAME, f'{kind}: "{name}" {problem}', frame_id)
        values[name] = _push_subscription(value) if kind_of == _PUSH else value
    channel_id = values.pop("channel_id", "")
    return Command(str(kind), frame_id, channel_id, values)


#: The largest whole number a frame may carry (seqs are 64-bit signed integers).
MAX_INT: Final = 2**63 - 1
#: The largest ``page_size`` (a 32-bit field of the API).
MAX_INT32: Final = 2**31 - 1

_LONE_SURROGATE: Final = "is not valid Unicode text (a lone surrogate)"


def _field_problem(kind_of: str, value: object) -> str | None:
    """Why ``value`` is not of ``kind_of`` (a ``FRAME_FIELDS`` type without its ``?``),
    or None when it is."""
    if kind_of in ("int", "int32"):
        top = MAX_INT if kind_of == "int" else MAX_INT32
        if _is_int(value) and 0 <= value <= top:  # type: ignore[operator]
            return None
        return f"must be a whole number from 0 to {top}"
    if kind_of == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind_of == "str":
        if not isinstance(value, str):
            return "must be a string"
        return None if _is_text(value) else _LONE_SURROGATE
    if kind_of in ("[str]", "[file_id]"):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return "must be a list of strings"
        if kind_of == "[file_id]" and (
            len(value) > MAX_ATTACHMENTS or any(len(item) > MAX_FILE_ID for item in value)
        ):
            return (
                f"must be a list of at most {MAX_ATTACHMENTS} ids"
                f" of at most {MAX_FILE_ID} characters"
            )
        return None if all(_is_text(item) for item in value) else _LONE_SURROGATE
    assert kind_of == _PUSH, kind_of
    parts = _push_parts(value)
    if parts is None:
        return (
            'must be a PushSubscription\'s JSON: {"endpoint": "…", '
            '"keys": {"p256dh": "…", "auth": "…"}}'
        )
    return None if all(_is_text(part) for part in parts) else _LONE_SURROGATE


def _push_parts(value: object) -> tuple[str, str, str] | None:
    """``endpoint``, ``keys.p256dh`` and ``keys.auth`` of a ``PushSubscription.toJSON()``
    (which also has ``expirationTime``, left out), or None when one is not a string."""
    if not isinstance(value, dict) or not isinstance(value.get("keys"), dict):
        return None
    endpoint, p256dh, auth = (
        value.get("endpoint"),
        value["keys"].get("p256dh"),
        value["keys"].get("auth"),
    )
    if isinstance(endpoint, str) and isinstance(p256dh, str) and isinstance(auth, str):
        return endpoint, p256dh, auth
    return None


def _push_subscription(value: object) -> dict[str, Any]:
    """The parts of a valid ``push_subscription`` field that the bridge passes on."""
    parts = _push_parts(value)
    assert parts is not None
    endpoint, p256dh, auth = parts
    return {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: str) -> bool:
    """Whether ``value`` can be encoded as UTF-8 (JSON's ``\\ud800`` escapes can make
    lone surrogates, which no protobuf string or WebSocket text frame can carry)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _id_ok(frame_id: object) -> bool:
    if isinstance(frame_id, str):
        return _is_text(frame_id)
    return _is_int(frame_id) and -MAX_INT - 1 <= frame_id <= MAX_INT  # type: ignore[operator]


# -- server frames -------------------------------------------------------------------------


def _dump(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def ack_frame(frame_id: Any, result: dict[str, Any] | None = None) -> str:
    return _dump({"type": "ack", "id": frame_id, **({"result": result} if result else {})})


def error_frame(
    code: ErrorCode | str,
    message: str,
    frame_id: Any = None,
    *,
    channel_id: str = "",
    fields: tuple[FieldProblem, ...] = (),
) -> str:
    """An ``error`` frame; with ``channel_id`` when it ends that channel's subscription
    on the bridge's own initiative (no frame of the client's to answer); with ``fields``
    (``[{"field", "description"}]``) when the bad fields are known."""
    frame: dict[str, Any] = {"type": "error", "code": str(code), "message": message}
    if frame_id is not None:
        frame["id"] = frame_id
    if channel_id:
        frame["channel_id"] = channel_id
    if fields:
        frame["fields"] = [{"field": f.field, "description": f.description} for f in fields]
    return _dump(frame)


def refusal_frame(error: FrameError) -> str:
    """The ``error`` frame that answers a refused frame."""
    return error_frame(error.code, error.message, error.frame_id, fields=error.fields)


def welcome_frame(
    connection_id: str, user_id: str, tenant_id: str, expire_time: str = "", files_url: str = ""
) -> str:
    """The ``welcome`` frame; ``expire_time`` (RFC 3339) is when the client token expires
    (renew it before then with an ``auth`` frame, or the connection closes with 4002);
    ``files_url`` is the base URL of the file service's HTTP endpoints (tus uploads go to
    ``<files_url>/files/tus``)."""
    frame = {
        "type": "welcome",
        "protocol": PROTOCOL,
        "connection_id": connection_id,
        "user_id": user_id,
        "tenant_id": tenant_id,
    }
    if expire_time:
        frame["expire_time"] = expire_time
    if files_url:
        frame["files_url"] = files_url
    return _dump(frame)


def event_frame(event: str, channel_id: str, seq: int, data_json: str, event_id: str = "") -> str:
    """An ``event`` frame, from data already encoded as JSON (so it is encoded once)."""
    return (
        '{"type":"event","event":'
        + json.dumps(event)
        + ',"channel_id":'
        + json.dumps(channel_id)
        + ',"seq":'
        + str(int(seq))
        + ',"event_id":'
        + json.dumps(event_id)
        + ',"data":'
        + data_json
        + "}"
    )


def presence_frame(channel_id: str, users: list[str], frame_id: Any = None) -> str:
    frame: dict[str, Any] = {"type": "presence", "channel_id": channel_id, "users": users}
    if frame_id is not None:
        frame["id"] = frame_id
    return _dump(frame)


def typing_frame(channel_id: str, user_id: str) -> str:
    return _dump({"type": "typing", "channel_id": channel_id, "user_id": user_id})


def pong_frame(frame_id: Any) -> str:
    return _dump({"type": "pong", "id": frame_id})


def notification_frame(notification: dict[str, Any], unread_count: int) -> str:
    """A ``notification`` frame: a new notification of the connection's user, and how
    many unread notifications the user's inbox holds with it."""
    return _dump(
        {"type": "notification", "notification": notification, "unread_count": unread_count}
    )


def encode_text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame carrying ``payload`` (RFC 6455 §5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


# -- one connection's state ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits."""

    max_subscriptions: int = 100
    messages_per_second: float = 20.0
    burst: int = 40
    #: Frames refused for rate in a row before the connection is closed (RATE_LIMITED).
    flood_tolerance: int = 50


@dataclass(slots=True)
class Subscription:
    """One channel a connection follows. ``last_seq`` is the seq it asked to start after
    (``since_seq``, 0 without); ``live`` once its ``subscribe`` was acknowledged."""

    channel_id: str
    last_seq: int = 0
    live: bool = False
    frame_id: Any = None


class Session:
    """A connection's subscriptions and rate budget.

    What each subscription is sent, and when (the replay-then-live seam, seq
    de-duplication), is the room's business: :mod:`gateway_bridge.bridge.room`.
    """

    # One per connection: no __dict__ of its own.
    __slots__ = ("_clock", "_refilled", "_refused_in_a_row", "_tokens", "limits", "subscriptions")

    def __init__(
        self, limits: SessionLimits, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.subscriptions: dict[str, Subscription] = {}
        self._clock = clock
        self._tokens = float(limits.burst)
        self._refilled = clock()
        self._refused_in_a_row = 0

    def admit(self) -> bool:
        """Take one frame from the rate budget; False when over it (the caller then
        answers ``rate_limited``, or closes the connection once :attr:`flooding`)."""
        now = self._clock()
        rate = self.limits.messages_per_second
        self._tokens = min(float(self.limits.burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._refused_in_a_row = 0
            return True
        self._refused_in_a_row += 1
        return False

    @property
    def flooding(self) -> bool:
        return self._refused_in_a_row >= self.limits.flood_tolerance

    def start(self, command: Command) -> Subscription:
        """Begin following ``command.channel_id`` (or, if followed, take the new frame id);
        raises FrameError past the limit."""
        if command.channel_id in self.subscriptions:
            sub = self.subscriptions[command.channel_id]
            sub.frame_id = command.id
            return sub
        if len(self.subscriptions) >= self.limits.max_subscriptions:
            raise FrameError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.limits.max_subscriptions} subscriptions per connection",
                command.id,
            )
        since = command.fields.get("since_seq")
        sub = Subscription(command.channel_id, last_seq=since or 0, frame_id=command.id)
        self.subscriptions[command.channel_id] = sub
        return sub

    def stop(self, channel_id: str) -> bool:
        return self.subscriptions.pop(channel_id, None) is not None
