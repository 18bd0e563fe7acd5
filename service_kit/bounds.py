"""Size bounds of request fields: declared in the protos, compiled once per message type,
checked before any handler runs.

Every string, bytes, repeated and map field of a Keel request message (and of the Keel
messages nested in one), and every field holding a message Keel does not define that can
grow without limit (``google.protobuf.Struct``, ``FieldMask``), declares its bounds with
the option ``(keel.api.v1.bounds)`` of ``protos/keel/api/v1/field_bounds.proto``.
:func:`missing_bounds` names the fields that do not (a test keeps that list empty, apart
from the fields :data:`UNBOUNDED` exempts with a reason). :class:`RequestBounds` compiles
the checks of one message type from its descriptor and reports each violation as a
:class:`FieldViolation` with the field's path (``attachment_ids[3]``, ``tenant.metadata``).

Beyond the declared bounds, every string, Struct, Timestamp and Duration of a request is
held to rules no proto can lift: no string holds U+0000 (PostgreSQL cannot store it); a
Struct holds no NaN or Infinity (JSON cannot carry them) and nests at most
:data:`MAX_JSON_DEPTH` levels; Timestamps and Durations lie within the ranges their
definitions allow (nothing outside them becomes a Python ``datetime``).

Invariants: compiling reads descriptors only; checking only reads the message, and costs a
few attribute reads per field of a request that is within bounds (SendMessage is on the
hot path); a field never yields more than one violation about its own size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from keel.api.v1 import field_bounds_pb2

from service_kit.errors import FieldViolation, InvalidArgument

#: How deep a google.protobuf.Struct (or Value, ListValue) may nest.
MAX_JSON_DEPTH: Final = 32
#: How many violations one refusal reports (the trailer that carries them is small).
MAX_REPORTED: Final = 10

#: Request fields without a bound, each with the reason it needs none. Keep it short.
UNBOUNDED: Final[Mapping[str, str]] = {}

_JSON_TYPES: Final = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
_SIZED_TYPES: Final = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
_TIMESTAMP: Final = "google.protobuf.Timestamp"
_DURATION: Final = "google.protobuf.Duration"
# The ranges google/protobuf/timestamp.proto and duration.proto define.
_MIN_TIMESTAMP, _MAX_TIMESTAMP = -62_135_596_800, 253_402_300_799
_MAX_DURATION = 315_576_000_000

_BOUNDS_OPTION: Any = field_bounds_pb2.bounds
_NUL: Final = "contains the NUL character (U+0000), which Keel cannot store"

#: Checks one field of ``message``: (message, path prefix, violations found so far).
Check = Callable[[Any, str, list[FieldViolation]], None]
#: Checks one value (a map value, a repeated element, a set message field) at ``path``.
ValueCheck = Callable[[Any, str, list[FieldViolation]], None]


def bounds_of(field: FieldDescriptor) -> field_bounds_pb2.FieldBounds:
    """The field's declared bounds (all zero, meaning none, when it declares none)."""
    bounds: field_bounds_pb2.FieldBounds = field.GetOptions().Extensions[_BOUNDS_OPTION]
    return bounds


class RequestBounds:
    """The compiled checks of one request message type (see the module docstring)."""

    __slots__ = ("_checks", "_checks_but_bytes", "_light_below", "full_name")

    def __init__(self, descriptor: Descriptor) -> None:
        self.full_name = descriptor.full_name
        self._checks = _compile(descriptor, _Compiled(bytes_sizes=True))
        # Reading a bytes field copies it (a 1 MiB upload chunk, say). A bytes value of n
        # bytes takes at least n + 1 (its tag) + the varint of n bytes of the encoding, so
        # when the encoded request is shorter than that for n = the smallest bound + 1, no
        # bytes field in it can be over its bound, and these checks go without them.
        self._checks_but_bytes = _compile(descriptor, _Compiled(bytes_sizes=False))
        floor = _smallest_bytes_bound(descriptor, set())
        self._light_below = (
            math.inf if floor == math.inf else floor + 2 + _varint_size(int(floor) + 1)
        )

    def violations(
        self, message: Message, *, encoded_size: int | None = None
    ) -> list[FieldViolation]:
        """Every violation of ``message``, in field order; empty when it is within bounds.
        ``encoded_size``: the length of the bytes ``message`` was parsed from, if known."""
        found: list[FieldViolation] = []
        light = encoded_size is not None and encoded_size < self._light_below
        for check in self._checks_but_bytes if light else self._checks:
            check(message, "", found)
        return found


def refusal(violations: list[FieldViolation]) -> InvalidArgument:
    """The INVALID_ARGUMENT error reporting ``violations`` (at most :data:`MAX_REPORTED`)."""
    shown = violations[:MAX_REPORTED]
    summary = "; ".join(f"{v.field}: {v.description}" for v in shown)
    if len(violations) > len(shown):
        summary += f"; and {len(violations) - len(shown)} more"
    return InvalidArgument(f"invalid request: {summary}", shown)


# -- what must be declared ------------------------------------------------------------------


def missing_bounds(descriptor: Descriptor) -> list[str]:
    """``"<field full name>: needs max_items"`` for every field of ``descriptor`` (and of the
    Keel messages nested in it) whose size has no declared bound."""
    missing: list[str] = []
    _collect_missing(descriptor, missing, set())
    return missing


def _collect_missing(descriptor: Descriptor, missing: list[str], seen: set[str]) -> None:
    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.full_name in UNBOUNDED:
            continue
        bounds = bounds_of(field)
        needs = _needs(field, bounds)
        missing += [f"{field.full_name}: needs {need}" for need in needs]
        for nested in _nested_keel_messages(field):
            _collect_missing(nested, missing, seen)


def _needs(field: FieldDescriptor, bounds: field_bounds_pb2.FieldBounds) -> list[str]:
    """The options ``field`` must declare and does not."""
    needs = []
    elements = [field]
    entry = _map_entry(field)
    if entry is not None:
        elements = [entry.fields_by_name["key"], entry.fields_by_name["value"]]
    if field.is_repeated and not bounds.max_items:  # a map is a repeated field too
        needs.append("max_items")
    for element in elements:
        need = _element_needs(element, bounds)
        if need and need not in needs:
            needs.append(need)
    return needs


def _element_needs(field: FieldDescriptor, bounds: field_bounds_pb2.FieldBounds) -> str | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return None if bounds.max_length or bounds.max_bytes else "max_length or max_bytes"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return None if bounds.max_bytes else "max_bytes"
    message = field.message_type
    if message is not None and not _is_keel(message) and _can_grow(message, set()):
        return None if bounds.max_bytes else "max_bytes"
    return None


def _nested_keel_messages(field: FieldDescriptor) -> list[Descriptor]:
    entry = _map_entry(field)
    message = field.message_type if entry is None else entry.fields_by_name["value"].message_type
    return [message] if message is not None and _is_keel(message) else []


def _is_keel(descriptor: Descriptor) -> bool:
    return str(descriptor.file.package).startswith("keel.")


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    """The entry type of a map field (its ``key`` and ``value``); None for other fields."""
    message = field.message_type
    return message if message is not None and message.GetOptions().map_entry else None


def _can_grow(descriptor: Descriptor, seen: set[str]) -> bool:
    """Whether a message of this type can be of any size (holds a string, bytes or list)."""
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.is_repeated or field.type in _SIZED_TYPES:
            return True
        if field.message_type is not None and _can_grow(field.message_type, seen):
            return True
    return False


# -- compiling the checks -------------------------------------------------------------------


class _Compiled(dict[str, list[Check]]):
    """The checks compiled so far, by message type; without ``bytes_sizes`` the size checks
    of bytes fields are left out."""

    def __init__(self, *, bytes_sizes: bool) -> None:
        super().__init__()
        self.bytes_sizes = bytes_sizes


def _smallest_bytes_bound(descriptor: Descriptor, seen: set[str]) -> float:
    """The smallest ``max_bytes`` of a bytes field in ``descriptor`` or the Keel messages it
    holds (infinity when there is none)."""
    if descriptor.full_name in seen:
        return math.inf
    seen.add(descriptor.full_name)
    smallest = math.inf
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_BYTES and bounds_of(field).max_bytes:
            smallest = min(smallest, bounds_of(field).max_bytes)
        elif field.message_type is not None and _is_keel(field.message_type):
            smallest = min(smallest, _smallest_bytes_bound(field.message_type, seen))
    return smallest


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _compile(descriptor: Descriptor, compiled: _Compiled) -> list[Check]:
    """The checks of ``descriptor``'s fields; ``compiled`` shares them between types (and
    holds a type's list before it is filled, so a recursive type refers to itself)."""
    if descriptor.full_name in compiled:
        return compiled[descriptor.full_name]
    checks: list[Check] = []
    compiled[descriptor.full_name] = checks
    for field in descriptor.fields:
        check = _field_check(field, compiled)
        if check is not None:
            checks.append(check)
    return checks


def _field_check(field: FieldDescriptor, compiled: _Compiled) -> Check | None:
    bounds = bounds_of(field)
    name = field.name
    entry = _map_entry(field)
    if entry is not None:
        key = _value_check(entry.fields_by_name["key"], bounds, compiled)
        value = _value_check(entry.fields_by_name["value"], bounds, compiled)
        return _map_check(name, bounds.max_items, key, value)
    element = _value_check(field, bounds, compiled)
    if field.is_repeated:
        return _list_check(name, bounds.max_items, element)
    if element is None:
        return None
    if field.message_type is not None:
        return _set_message_check(name, element)
    if field.type == FieldDescriptor.TYPE_STRING:
        return _string_check(name, bounds.max_length, bounds.max_bytes)
    return _scalar_check(name, element)


def _value_check(
    field: FieldDescriptor,
    bounds: field_bounds_pb2.FieldBounds,
    compiled: _Compiled,
) -> ValueCheck | None:
    """The check of one value of ``field`` (an element, for a repeated field), or None."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return _text_check(bounds.max_length, bounds.max_bytes)
    if field.type == FieldDescriptor.TYPE_BYTES:
        if not (bounds.max_bytes and compiled.bytes_sizes):
            return None
        return _size_check(bounds.max_bytes, len, "bytes")
    message = field.message_type
    if message is None:
        return None
    if message.full_name in _JSON_TYPES:
        return _json_check(bounds.max_bytes)
    if message.full_name == _TIMESTAMP:
        return _check_timestamp
    if message.full_name == _DURATION:
        return _check_duration
    if _is_keel(message):
        return _nested_check(_compile(message, compiled))
    if bounds.max_bytes:
        return _size_check(bounds.max_bytes, _encoded_size, "bytes encoded")
    return None


def _scalar_check(name: str, check: ValueCheck) -> Check:
    def scalar(message: Any, prefix: str, found: list[FieldViolation]) -> None:
        value = getattr(message, name)
        if value:
            check(value, prefix + name, found)

    return scalar


def _string_check(name: str, max_length: int, max_bytes: int) -> Check:
    # The hot path's fields: one attribute read, one length and one NUL scan when in bounds.
    quick = min(max_length or math.inf, max_bytes // 4 if max_bytes else math.inf)

    def string(message: Any, prefix: str, found: list[FieldViolation]) -> None:
        value = getattr(message, name)
        if value and (len(value) > quick or "\0" in value):
            problem = text_problem(value, max_length=max_length, max_bytes=max_bytes)
            if problem is not None:
                found.append(FieldViolation(prefix + name, problem))

    return string


def _set_message_check(name: str, check: ValueCheck) -> Check:
    def set_message(message: Any, prefix: str, found: list[FieldViolation]) -> None:
        if message.HasField(name):
            check(getattr(message, name), prefix + name, found)

    return set_message


def _list_check(name: str, max_items: int, element: ValueCheck | None) -> Check:
    def elements(message: Any, prefix: str, found: list[FieldViolation]) -> None:
        values = getattr(message, name)
        if not values:
            return
        count = len(values)
        path = prefix + name
        if max_items and count > max_items:
            found.append(FieldViolation(path, f"has {count} items; the limit is {max_items}"))
            count = max_items
        if element is not None:
            for i in range(count):
                element(values[i], f"{path}[{i}]", found)

    return elements


def _map_check(
    name: str, max_items: int, key: ValueCheck | None, value: ValueCheck | None
) -> Check:
    def entries(message: Any, prefix: str, found: list[FieldViolation]) -> None:
        values = getattr(message, name)
        if not values:
            return
        path = prefix + name
        if max_items and len(values) > max_items:
            found.append(
                FieldViolation(path, f"has {len(values)} entries; the limit is {max_items}")
            )
            return
        for k in values:
            where = f"{path}[{json.dumps(_shorten(k)) if isinstance(k, str) else k}]"
            if key is not None:
                key(k, where, found)
            if value is not None:
                value(values[k], where, found)

    return entries


def _nested_check(checks: list[Check]) -> ValueCheck:
    def nested(value: Any, path: str, found: list[FieldViolation]) -> None:
        prefix = path + "."
        for check in checks:
            check(value, prefix, found)

    return nested


def _text_check(max_length: int, max_bytes: int) -> ValueCheck:
    def text(value: str, path: str, found: list[FieldViolation]) -> None:
        problem = text_problem(value, max_length=max_length, max_bytes=max_bytes)
        if problem is not None:
            found.append(FieldViolation(path, problem))

    return text


def text_problem(value: str, *, max_length: int = 0, max_bytes: int = 0) -> str | None:
    """Why ``value`` may not stand in a request (too long, NUL inside), or None."""
    length = len(value)
    if max_length and length > max_length:
        return f"is {length} characters long; the limit is {max_length}"
    # A character takes at most 4 bytes in UTF-8: shorter strings need no encoding.
    if max_bytes and length * 4 > max_bytes:
        size = len(value.encode())
        if size > max_bytes:
            return f"is {size} bytes in UTF-8; the limit is {max_bytes}"
    if "\0" in value:
        return _NUL
    return None


def _size_check(max_bytes: int, size_of: Callable[[Any], int], unit: str) -> ValueCheck:
    def size(value: Any, path: str, found: list[FieldViolation]) -> None:
        measured = size_of(value)
        if measured > max_bytes:
            found.append(FieldViolation(path, f"is {measured} {unit}; the limit is {max_bytes}"))

    return size


def _encoded_size(message: Message) -> int:
    return message.ByteSize()


def _json_check(max_bytes: int) -> ValueCheck:
    def json_value(value: Message, path: str, found: list[FieldViolation]) -> None:
        if max_bytes:
            size = value.ByteSize()
            if size > max_bytes:
                found.append(
                    FieldViolation(path, f"is {size} bytes encoded; the limit is {max_bytes}")
                )
                return
        problem = json_problem(value)
        if problem is not None:
            found.append(FieldViolation(path, problem))

    return json_value


def json_problem(value: Message) -> str | None:
    """Why a Struct, Value or ListValue cannot become JSON (NaN, Infinity, NUL, too deep),
    naming where inside it (``a.b[2]``); None when it can."""
    # Iterative, so that no nesting the parser accepted can exhaust Python's stack here.
    pending: list[tuple[Any, str, int]] = [(value, "", 1)]
    while pending:
        item, where, depth = pending.pop()
        kind = item.DESCRIPTOR.full_name
        if kind == "google.protobuf.Value":
            which = item.WhichOneof("kind")
            if which == "number_value" and not math.isfinite(item.number_value):
                return f"holds {item.number_value} at {_at(where)}, which JSON cannot carry"
            if which == "string_value" and "\0" in item.string_value:
                return f"{_NUL} (at {_at(where)})"
            if which in ("struct_value", "list_value"):
                pending.append((getattr(item, which), where, depth))
            continue
        if depth > MAX_JSON_DEPTH:
            return f"is nested more than {MAX_JSON_DEPTH} levels deep"
        if kind == "google.protobuf.Struct":
            for key, inner in item.fields.items():
                if "\0" in key:
                    return f"{_NUL} (in a key at {_at(where)})"
                pending.append((inner, f"{where}.{key}" if where else key, depth + 1))
        else:  # ListValue
            for i, inner in enumerate(item.values):
                pending.append((inner, f"{where}[{i}]", depth + 1))
    return None


def _at(where: str) -> str:
    return repr(_shorten(where)) if where else "the top"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _check_timestamp(value: Any, path: str, found: list[FieldViolation]) -> None:
    if not (_MIN_TIMESTAMP <= value.seconds <= _MAX_TIMESTAMP and 0 <= value.nanos < 10**9):
        found.append(
            FieldViolation(path, "is not a valid time: years 1 to 9999, nanos from 0 to 999999999")
        )


def _check_duration(value: Any, path: str, found: list[FieldViolation]) -> None:
    seconds, nanos = value.seconds, value.nanos
    if not (
        -_MAX_DURATION <= seconds <= _MAX_DURATION
        and -(10**9) < nanos < 10**9
        and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
    ):
        found.append(
            FieldViolation(
                path, "is not a valid duration: at most 10000 years, nanos of the seconds' sign"
            )
        )
