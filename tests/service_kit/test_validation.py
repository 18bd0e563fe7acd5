"""Page tokens: what decoding accepts (only what encoding wrote, in the same scope) and how
it refuses the rest (INVALID_ARGUMENT naming page_token, never another exception)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from keel.channels.v1 import channels_pb2

from service_kit.bounds import bounds_of
from service_kit.errors import InvalidArgument
from service_kit.validation import (
    _fingerprint,
    decode_page_token,
    decode_seq_position,
    decode_time_position,
    encode_page_token,
    encode_time_position,
    page_token_scope_var,
)


@contextmanager
def scope(value: str) -> Iterator[None]:
    token = page_token_scope_var.set(value)
    try:
        yield
    finally:
        page_token_scope_var.reset(token)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def forged(position: object, query: str = "q") -> str:
    """A token holding ``position`` with the right fingerprint, as someone who read the
    source could make one."""
    return b64(json.dumps({"p": position, "q": _fingerprint(query)}).encode())


def refused(token: str, decode: object = decode_page_token) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        decode(token, query="q")  # type: ignore[operator]
    assert [v.field for v in caught.value.violations] == ["page_token"]
    return caught.value


def test_a_token_decodes_to_the_position_it_was_made_with() -> None:
    when = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    assert decode_time_position(encode_time_position(when, "k", query="q"), query="q") == (
        when,
        "k",
    )
    assert decode_seq_position(encode_page_token([42], query="q"), query="q") == 42
    assert decode_page_token("", query="q") is None


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        b64(bytes(range(256))),
        b64(b"\xff\xfe not utf-8"),
        b64(b"[]"),
        b64(b'"just a string"'),
        b64(b'{"p": [1]}'),
        b64(b"[" * 100_000 + b"]" * 100_000),
        forged("not a list"),
        forged([1.5]),
        forged([None]),
        forged([True]),
        forged([[1]]),
        forged([{"a": 1}]),
        forged([2**63]),
        b64(b'{"p": [NaN], "q": "' + _fingerprint("q").encode() + b'"}'),
        b64(b'{"p": [' + b"9" * 5000 + b'], "q": "x"}'),
    ],
)
def test_anything_but_a_token_is_refused_naming_page_token(token: str) -> None:
    refused(token)


def test_a_token_of_another_query_is_refused() -> None:
    error = refused(encode_page_token([1], query="another"))
    assert "different request" in error.message


def test_a_token_made_in_another_method_or_tenant_is_refused() -> None:
    with scope("/keel.channels.v1.ChannelService/ListUsers:tenant-a"):
        token = encode_page_token(["x", "y"], query="q")
        assert decode_page_token(token, query="q") == ["x", "y"]
    for other in (
        "/keel.channels.v1.ChannelService/ListUsers:tenant-b",
        "/keel.channels.v1.ChannelService/ListChannels:tenant-a",
        "",
    ):
        with scope(other):
            refused(token)


@pytest.mark.parametrize("position", [["when", "k"], [1, "k"], ["2026-01-01"], []])
def test_a_time_position_of_the_wrong_shape_is_refused(position: list[object]) -> None:
    refused(forged(position), decode_time_position)


@pytest.mark.parametrize("position", [["5"], [-1], [1, 2], []])
def test_a_seq_position_of_the_wrong_shape_is_refused(position: list[object]) -> None:
    refused(forged(position), decode_seq_position)


def test_the_longest_token_keel_makes_fits_the_page_token_bound() -> None:
    bound = bounds_of(channels_pb2.ListMembersRequest.DESCRIPTOR.fields_by_name["page_token"])
    with scope("/keel.channels.v1.ChannelService/ListMembers:" + "t" * 128):
        token = encode_time_position(datetime.max.replace(tzinfo=UTC), "u" * 128, query="q")
    assert len(token) <= bound.max_length
