"""Webhook rules (``gateway/events/webhooks.py``), the body the dispatcher sends
(``dispatcher.py``), and the receivers' helper (``keel.webhooks``).

Event filters, URL checks, where a webhook may point (literal addresses and
``localhost`` with the real resolver, names with a scripted one; the address rule
itself is tested in ``tests/service_kit/test_outbound.py``), the retry schedule
with its jitter and ``Retry-After``, and Standard Webhooks signatures checked
against fixed vectors computed independently with ``hmac``/``base64``. The
dispatcher tests run a real dispatcher on a private database (SQLite and
PostgreSQL) against a receiver on 127.0.0.1: every attempt of a delivery sends the
same body, and a destination the guard refuses fails the attempt, recorded and
retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from keel.webhooks import WebhookVerificationError, new_secret, sign, verify
from prometheus_client import REGISTRY
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge.gateway.events.dispatcher import Dispatcher, DispatchSettings, body_of
from gateway_bridge.gateway.events.store import DELIVERY_JOB, SqlEventStore
from gateway_bridge.gateway.events.store.rows import delivery_row
from gateway_bridge.gateway.events.webhooks import (
    MAX_CHANNEL_FILTERS,
    MAX_FILTERS,
    MAX_URL,
    Attempt,
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookState,
    check_destination,
    check_filters,
    check_url,
    matches,
    next_attempt,
    parse_retry_after,
)
from gateway_bridge.vocabulary import EVENT_NAMES
from service_kit.clock import rfc3339
from service_kit.config import load_settings
from service_kit.db import as_utc, create_engine, migrate
from service_kit.errors import FailedPrecondition
from service_kit.schema import deliveries, jobs
from service_kit.validation import Violations
from tests.gateway_bridge.gateway.events.test_service import private_database
from tests.service_kit.test_outbound import PUBLIC as PUBLIC_ADDRESS
from tests.service_kit.test_outbound import ScriptedResolver

CHANNEL_A = "8c1f3b9e-0d2a-4e6f-a7b5-3c9d1e2f4a60"
CHANNEL_B = "0b6e2f7a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def violated(check: object, *args: object) -> list[str]:
    """The fields a check function records violations for."""
    v = Violations()
    check(v, *args)  # type: ignore[operator]
    return [item.field for item in v.items]


# -- matching events --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "event", "expected"),
    [
        (["message:created"], "message:created", True),
        (["message:*"], "message:created", True),
        (["message:*"], "message:deleted", True),
        (["*"], "user:left", True),
        (["*"], "ping", True),
        (["message:*"], "user:joined", False),
        (["message:created"], "message:updated", False),
        (["user:joined", "user:left"], "user:left", True),
        (["user:joined", "user:left"], "channel:created", False),
        (["message"], "message:created", False),
        (["message:"], "message:created", False),
        (["messages:*"], "message:created", False),
        (["Message:created"], "message:created", False),
        ([], "message:created", False),
    ],
)
def test_matches_exact_names_area_patterns_and_star(
    patterns: list[str], event: str, expected: bool
) -> None:
    assert matches(patterns, event) is expected


def test_a_webhook_wants_events_its_event_and_channel_filters_select() -> None:
    hook = Webhook(
        id="3d65600f-2b14-4148-9e3c-3fa975bd68cb",
        tenant_id="t",
        url="https://hooks.example.com/keel",
        events=("message:*",),
        channel_ids=(CHANNEL_A,),
        description="",
        state=WebhookState.ACTIVE,
        disabled_reason="",
        consecutive_failures=0,
        created_at=NOW,
        updated_at=NOW,
    )
    assert hook.wants("message:created", CHANNEL_A)
    assert not hook.wants("message:created", CHANNEL_B)
    assert not hook.wants("user:joined", CHANNEL_A)
    every_channel = Webhook(**{**_fields(hook), "channel_ids": ()})
    assert every_channel.wants("message:deleted", CHANNEL_B)


def _fields(hook: Webhook) -> dict[str, object]:
    return {name: getattr(hook, name) for name in Webhook.__slots__}


# -- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "events",
    [
        ["message:created"],
        ["message:*", "user:joined", "user:left"],
        ["*"],
        sorted(EVENT_NAMES),
        ["channel:*", "reaction:*", "user:*"],
    ],
)
def test_check_filters_accepts_known_names_and_patterns(events: list[str]) -> None:
    assert violated(check_filters, events, [CHANNEL_A, CHANNEL_B]) == []
    assert violated(check_filters, events, []) == []


def test_check_filters_names_each_bad_pattern() -> None:
    events = ["message:created", "message:sent", "nope:*", "message:", "", "ping", "user:joined"]
    assert violated(check_filters, events, []) == [
        "events[1]",
        "events[2]",
        "events[3]",
        "events[4]",
        "events[5]",
    ]


def test_check_filters_describes_the_known_events() -> None:
    v = Violations()
    check_filters(v, ["message:sent"], [])
    (item,) = v.items
    assert "'message:sent' is not an event" in item.description
    assert "message:created" in item.description


def test_an_empty_event_filter_is_refused() -> None:
    assert violated(check_filters, [], []) == ["events"]


def test_check_filters_limits_patterns_and_channels() -> None:
    assert violated(check_filters, ["*"] * MAX_FILTERS, []) == []
    assert violated(check_filters, ["*"] * (MAX_FILTERS + 1), []) == ["events"]
    assert violated(check_filters, ["*"], [CHANNEL_A] * MAX_CHANNEL_FILTERS) == []
    assert violated(check_filters, ["*"], [CHANNEL_A] * (MAX_CHANNEL_FILTERS + 1)) == [
        "channel_ids"
    ]


def test_check_filters_names_each_bad_channel_id() -> None:
    channels = [CHANNEL_A, "general", "", CHANNEL_B.upper() + "x"]
    assert violated(check_filters, ["*"], channels) == [
        "channel_ids[1]",
        "channel_ids[2]",
        "channel_ids[3]",
    ]


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/keel",
        "http://hooks.example.com:8080/keel?tenant=1#frag",
        "https://93.184.215.14/keel",
        "http://[2001:db8::1]:9000/",
        "http://127.0.0.1:1/hook",
    ],
)
def test_check_url_accepts_absolute_http_urls(url: str) -> None:
    assert violated(check_url, url) == []


@pytest.mark.parametrize(
    ("url", "description"),
    [
        ("", "is required"),
        ("ftp://x", "must start with http:// or https://"),
        ("not a url", "must start with http:// or https://"),
        ("not a url", "needs a host"),
        ("//hooks.example.com/keel", "must start with http:// or https://"),
        ("https:///keel", "needs a host"),
        ("http://user:pw@example.com", "must not carry credentials"),
        ("http://user@example.com", "must not carry credentials"),
        ("http://example.com:99999/", "has an invalid port"),
        ("http://example.com:port/", "has an invalid port"),
        ("https://example.com/" + "a" * MAX_URL, f"at most {MAX_URL} characters"),
    ],
)
def test_check_url_refuses_what_is_not_an_http_endpoint(url: str, description: str) -> None:
    v = Violations()
    check_url(v, url)
    assert {i.field for i in v.items} == {"url"}
    assert description in [i.description for i in v.items]


# -- where a webhook may point ----------------------------------------------------------------

HINT = "set KEEL_WEBHOOK_ALLOW_PRIVATE=1 to allow private destinations"
MAPPED_LOOPBACK = str(ipaddress.ip_address("::ffff:127.0.0.1"))  # how this Python writes it


@pytest.mark.parametrize(
    ("url", "host", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1", "a loopback address"),
        ("https://10.0.0.1/hook", "10.0.0.1", "a private address"),
        ("http://192.168.1.20/hook", "192.168.1.20", "a private address"),
        ("http://172.16.5.4/hook", "172.16.5.4", "a private address"),
        ("http://100.64.0.1/hook", "100.64.0.1", "a shared address (carrier-grade NAT)"),
        ("http://192.0.0.8/hook", "192.0.0.8", "an IETF protocol assignment address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
            "the cloud metadata service's link-local address",
        ),
        ("http://[::1]:8080/hook", "::1", "a loopback address"),
        ("http://[fd00::1]/hook", "fd00::1", "a private (unique local) address"),
        ("http://[fe80::1]/hook", "fe80::1", "a link-local address"),
        (
            "http://[::ffff:127.0.0.1]/hook",
            MAPPED_LOOPBACK,
            "an IPv4-mapped address embedding 127.0.0.1, a loopback address",
        ),
        ("http://0.0.0.0/hook", "0.0.0.0", "a 'this network' address"),
        ("http://224.0.0.1/hook", "224.0.0.1", "a multicast address"),
    ],
)
async def test_check_destination_refuses_literal_addresses_inside_the_network(
    url: str, host: str, kind: str
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        await check_destination(url, allow_private=False)
    message = caught.value.message
    assert message.startswith(f"url: {host!r} resolves to {host}, {kind}")
    assert message.endswith(HINT)
    await check_destination(url, allow_private=True)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.5", "a private address"),
        ("fd00:ec2::254", "the cloud metadata service's private address"),
        ("2002:a00:5::1", "a 6to4 address embedding 10.0.0.5, a private address"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffa", "a Teredo address embedding 10.0.0.5"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 address embedding 169.254.169.254"),
        ("64:ff9b:1::a00:5", "a local-use NAT64 address embedding 10.0.0.5"),
    ],
)
async def test_check_destination_refuses_a_name_by_what_it_resolves_to(
    address: str, kind: str
) -> None:
    answers = ScriptedResolver([[PUBLIC_ADDRESS, address]])
    with pytest.raises(FailedPrecondition) as caught:
        await check_destination(
            "https://hooks.example.com/keel", allow_private=False, resolver=answers
        )
    message = caught.value.message
    assert message.startswith(
        f"url: 'hooks.example.com' resolves to {ipaddress.ip_address(address)}, {kind}"
    )
    assert message.endswith(HINT)
    await check_destination("https://hooks.example.com/keel", allow_private=True, resolver=answers)
    assert answers.lookups == ["hooks.example.com"] * 2


async def test_check_destination_refuses_localhost_by_what_it_resolves_to() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        await check_destination("http://localhost:8080/hook", allow_private=False)
    message = caught.value.message
    assert message.startswith("url: 'localhost' resolves to ")
    assert "a loopback address" in message
    await check_destination("http://localhost:8080/hook", allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.215.14/keel",
        "http://8.8.8.8:8080/",
        "https://[2606:4700::1111]/",
        "https://[::ffff:8.8.8.8]/",
        "https://[64:ff9b::808:808]/",
    ],
)
async def test_check_destination_allows_public_addresses(url: str) -> None:
    await check_destination(url, allow_private=False)


async def test_check_destination_refuses_a_host_that_does_not_resolve() -> None:
    for allow_private in (False, True):
        with pytest.raises(FailedPrecondition) as caught:
            await check_destination("https://keel-test.invalid/hook", allow_private=allow_private)
        assert caught.value.message.startswith("url: cannot resolve 'keel-test.invalid'")


# -- retries ----------------------------------------------------------------------------------


def test_next_attempt_follows_the_schedule_with_twenty_percent_jitter() -> None:
    schedule = (10.0, 20.0, 40.0)
    for attempts_made, delay in enumerate(schedule, start=1):
        delays = [
            (next_attempt(schedule, attempts_made, NOW, None) or NOW) - NOW for _ in range(2000)
        ]
        seconds = [d.total_seconds() for d in delays]
        assert all(0.8 * delay <= s <= 1.2 * delay for s in seconds), (min(seconds), max(seconds))
        # Jitter, not a constant: the draws spread over the band.
        assert min(seconds) < 0.85 * delay
        assert max(seconds) > 1.15 * delay


def test_next_attempt_jitter_bounds_are_exactly_plus_minus_twenty_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for edge in (0.8, 1.2):
        monkeypatch.setattr(random, "uniform", lambda low, high, edge=edge: (low, high)[edge > 1])
        assert next_attempt((10.0,), 1, NOW, None) == NOW + timedelta(seconds=10 * edge)


def test_next_attempt_gives_up_when_the_schedule_is_used_up() -> None:
    schedule = (1.0, 2.0)
    assert next_attempt(schedule, 2, NOW, None) is not None
    assert next_attempt(schedule, 3, NOW, None) is None
    assert next_attempt(schedule, 3, NOW, 1.0) is None
    assert next_attempt((), 1, NOW, None) is None


def test_a_longer_retry_after_wins_over_the_schedule() -> None:
    assert next_attempt((0.2,), 1, NOW, 30.0) == NOW + timedelta(seconds=30)
    assert next_attempt((0.2, 0.2), 2, NOW, 1.0) == NOW + timedelta(seconds=1)


def test_a_shorter_retry_after_does_not_shorten_the_schedule() -> None:
    for _ in range(200):
        when = next_attempt((10.0,), 1, NOW, 0.5)
        assert when is not None
        assert 8.0 <= (when - NOW).total_seconds() <= 12.0


def test_retry_after_is_capped_at_a_day() -> None:
    assert next_attempt((1.0,), 1, NOW, 10 * 86_400.0) == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-1", None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after_reads_delta_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


# -- signatures (keel.webhooks) ---------------------------------------------------------------

# The Standard Webhooks specification's own example.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# A Keel-shaped delivery, with non-ASCII content (the body is signed as UTF-8 bytes).
SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 0..31
OTHER_SECRET = "whsec_hzjF+MeZ+ds/7yX6hMR1D0CcZHoFsoZtMM4YeL430m0="
MSG_ID = "5f0c2d43-7a3e-4d5b-9c61-2b8f6a1e9d07"
TIMESTAMP = 1709294400
BODY = (
    '{"event":"message:created","event_id":"5f0c2d43-7a3e-4d5b-9c61-2b8f6a1e9d07",'
    '"channel_id":"8c1f3b9e-0d2a-4e6f-a7b5-3c9d1e2f4a60","seq":7,'
    '"data":{"message":{"content":"héllo 👋"}},"timestamp":"2024-03-01T12:00:00.123456Z"}'
).encode()
SIGNATURE = "v1,rtQV+rwfLtG2Sxt08GcpiDJ4i/7bQBr/Zb7YGaZ6hyg="
OTHER_SIGNATURE = "v1,qCln6WY7JDLRNEPULDaB4rmk8RKMFK+MYw9zHbIpo2k="


def independent_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature, computed here from the specification."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(signature: str, *, msg_id: str = MSG_ID, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_the_fixed_vectors_are_the_specification_s_hmac() -> None:
    assert independent_signature(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert independent_signature(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    assert independent_signature(OTHER_SECRET, MSG_ID, TIMESTAMP, BODY) == OTHER_SIGNATURE


def test_sign_produces_the_fixed_vectors() -> None:
    assert sign([SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert sign([SECRET], MSG_ID, TIMESTAMP, BODY) == SIGNATURE


def test_sign_with_two_secrets_gives_two_space_separated_signatures() -> None:
    assert sign([SECRET, OTHER_SECRET], MSG_ID, TIMESTAMP, BODY) == (
        f"{SIGNATURE} {OTHER_SIGNATURE}"
    )
    assert sign([], MSG_ID, TIMESTAMP, BODY) == ""


def test_verify_accepts_the_fixed_vectors_and_returns_the_payload() -> None:
    payload = verify(SECRET, headers(SIGNATURE), BODY, now=TIMESTAMP)
    assert payload == json.loads(BODY)
    assert payload["data"]["message"]["content"] == "héllo 👋"
    spec = verify(
        SPEC_SECRET,
        headers(SPEC_SIGNATURE, msg_id=SPEC_ID, timestamp=SPEC_TIMESTAMP),
        SPEC_BODY,
        now=SPEC_TIMESTAMP,
    )
    assert spec == {"test": 2432232314}


def test_sign_then_verify_round_trips_with_a_new_secret() -> None:
    secret = new_secret()
    timestamp = int(datetime.now(UTC).timestamp())
    body = json.dumps({"event": "ping", "data": {"n": 1}}).encode()
    signature = sign([secret], "evt-1", timestamp, body)
    assert verify(secret, headers(signature, msg_id="evt-1", timestamp=timestamp), body) == {
        "event": "ping",
        "data": {"n": 1},
    }
    # The body may be passed as text, as frameworks often hand it over.
    assert verify(
        secret, headers(signature, msg_id="evt-1", timestamp=timestamp), body.decode()
    ) == {"event": "ping", "data": {"n": 1}}


def test_new_secrets_are_whsec_and_32_random_bytes() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b'"seq":7', b'"seq":8'),
        BODY + b" ",
        BODY.replace("héllo".encode(), b"hello"),
        b"",
    ],
)
def test_verify_refuses_a_tampered_body(body: bytes) -> None:
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(SECRET, headers(SIGNATURE), body, now=TIMESTAMP)


def test_verify_refuses_the_wrong_secret() -> None:
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(OTHER_SECRET, headers(SIGNATURE), BODY, now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(new_secret(), headers(SIGNATURE), BODY, now=TIMESTAMP)


def test_verify_refuses_a_signature_for_another_id_or_timestamp() -> None:
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers(SIGNATURE, msg_id=MSG_ID[:-1] + "8"), BODY, now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers(SIGNATURE, timestamp=TIMESTAMP + 1), BODY, now=TIMESTAMP)


def test_verify_allows_the_tolerance_and_no_more() -> None:
    for now in (TIMESTAMP - 300, TIMESTAMP + 300):
        verify(SECRET, headers(SIGNATURE), BODY, now=now)
    with pytest.raises(WebhookVerificationError, match="too old or too new"):
        verify(SECRET, headers(SIGNATURE), BODY, now=TIMESTAMP + 301)  # an old request
    with pytest.raises(WebhookVerificationError, match="too old or too new"):
        verify(SECRET, headers(SIGNATURE), BODY, now=TIMESTAMP - 301)  # from the future
    verify(SECRET, headers(SIGNATURE), BODY, tolerance=3600, now=TIMESTAMP + 3000)
    with pytest.raises(WebhookVerificationError, match="too old or too new"):
        verify(SECRET, headers(SIGNATURE), BODY, tolerance=10, now=TIMESTAMP + 11)


def test_verify_checks_the_timestamp_against_the_clock_by_default() -> None:
    # The fixed vector was signed in 2024: far outside the default tolerance today.
    with pytest.raises(WebhookVerificationError, match="too old or too new"):
        verify(SECRET, headers(SIGNATURE), BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_names_a_missing_header(missing: str) -> None:
    incomplete = {k: v for k, v in headers(SIGNATURE).items() if k != missing}
    with pytest.raises(WebhookVerificationError, match=f"missing header {missing}"):
        verify(SECRET, incomplete, BODY, now=TIMESTAMP)


def test_verify_refuses_a_timestamp_that_is_not_a_number() -> None:
    bad = headers(SIGNATURE) | {"webhook-timestamp": "2024-03-01T12:00:00Z"}
    with pytest.raises(WebhookVerificationError, match="not a number"):
        verify(SECRET, bad, BODY, now=TIMESTAMP)


def test_during_a_rotation_either_secret_verifies_the_two_signatures() -> None:
    both = sign([OTHER_SECRET, SECRET], MSG_ID, TIMESTAMP, BODY)
    assert both == f"{OTHER_SIGNATURE} {SIGNATURE}"
    for secret in (SECRET, OTHER_SECRET):
        assert verify(secret, headers(both), BODY, now=TIMESTAMP)["seq"] == 7
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers(both), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    [
        f"v1,bm90IGEgc2lnbmF0dXJl {SIGNATURE}",
        f"v2,abc {SIGNATURE}",
        f"v1a,{SIGNATURE[3:]} {SIGNATURE}",
        f"  {SIGNATURE}  ",
    ],
)
def test_verify_finds_the_matching_signature_among_others(signature: str) -> None:
    verify(SECRET, headers(signature), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        SIGNATURE[3:],  # no version
        "v2," + SIGNATURE[3:],  # an unknown version
        "v1a," + SIGNATURE[3:],
        "v1," + SIGNATURE[3:].lower(),
        "v1," + SIGNATURE[3:-2],
    ],
)
def test_verify_refuses_signatures_that_are_not_v1_of_this_body(signature: str) -> None:
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers(signature), BODY, now=TIMESTAMP)


def test_header_names_are_case_insensitive() -> None:
    for transform in (str.title, str.upper, str.lower):
        mixed = {transform(k): v for k, v in headers(SIGNATURE).items()}
        assert verify(SECRET, mixed, BODY, now=TIMESTAMP)["event"] == "message:created"


def test_a_secret_without_its_prefix_works_and_a_malformed_one_is_refused() -> None:
    verify(SECRET.removeprefix("whsec_"), headers(SIGNATURE), BODY, now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError, match="whsec_"):
        verify("whsec_not base64!", headers(SIGNATURE), BODY, now=TIMESTAMP)


# -- delivering: the body of every attempt (dispatcher.py) ------------------------------------

EVENT_TIME = "2024-03-01T12:00:00.123456Z"


def test_the_body_is_the_payload_with_the_event_s_time_never_the_attempt_s() -> None:
    payload = {"event": "ping", "event_id": MSG_ID, "channel_id": "", "seq": 0, "data": {"t": "é"}}
    queued = datetime(2024, 3, 1, 12, 0, 5, tzinfo=UTC)
    assert (
        body_of(payload, queued)
        == (
            '{"event":"ping","event_id":"5f0c2d43-7a3e-4d5b-9c61-2b8f6a1e9d07","channel_id":"",'
            '"seq":0,"data":{"t":"é"},"timestamp":"2024-03-01T12:00:05Z"}'
        ).encode()
    )
    # A payload that carries its event's time keeps it.
    stamped = body_of({**payload, "timestamp": EVENT_TIME}, queued)
    assert json.loads(stamped)["timestamp"] == EVENT_TIME
    assert payload.get("timestamp") is None  # the stored payload is not changed


class Endpoint:
    """A webhook receiver on 127.0.0.1 (port 0): records each request, answers ``statuses``
    in order (then 200)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Endpoint]:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
            yield self
        finally:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def event_store(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[SqlEventStore, AsyncEngine]]:
    """An event store on a database of its own (no other dispatcher works on it), and its
    engine."""
    async with private_database(database_url, tmp_path) as url:
        engine = create_engine(load_settings({"DATABASE_URL": url}).database_url)
        try:
            await migrate(engine)
            yield SqlEventStore(engine), engine
        finally:
            await engine.dispose()


async def queue_ping(
    store: SqlEventStore, url: str, secret: str, data: dict[str, object]
) -> tuple[str, Delivery]:
    """A new tenant's new webhook to ``url`` with one ``ping`` delivery queued; the tenant's
    id and that delivery."""
    tenant_id = f"tenant-{uuid.uuid4().hex[:8]}"
    hook = await store.create_webhook(
        tenant_id, url=url, events_filter=["*"], channel_ids=[], description="", secret=secret
    )
    payload = {"event": "ping", "event_id": MSG_ID, "channel_id": "", "seq": 0, "data": data}
    return tenant_id, await store.add_delivery(tenant_id, hook.id, payload)


async def settled_delivery(
    store: SqlEventStore,
    engine: AsyncEngine,
    settings: DispatchSettings,
    tenant_id: str,
    queued: Delivery,
) -> Delivery:
    """Run a dispatcher until the queued delivery is settled (at most 10 s); it, again."""
    dispatcher = Dispatcher(store, engine, settings)
    dispatcher.start()
    try:
        async with asyncio.timeout(10):
            while True:
                (delivery,) = await store.list_deliveries(
                    tenant_id, queued.webhook_id, status=None, limit=10, after=None
                )
                if delivery.status is not DeliveryStatus.PENDING:
                    return delivery
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"delivery {queued.id} was not settled within 10 s")
    finally:
        await dispatcher.close()


def attempts_counted() -> dict[str, float]:
    """``keel_webhook_attempts_total`` by outcome, as ``/metrics`` shows it now."""
    return {
        outcome: REGISTRY.get_sample_value("keel_webhook_attempts_total", {"outcome": outcome})
        or 0.0
        for outcome in ("delivered", "failed", "given_up")
    }


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {outcome: n - before[outcome] for outcome, n in attempts_counted().items()}


async def test_every_attempt_of_a_delivery_sends_the_same_body_signed_afresh(
    database_url: str, tmp_path: Path
) -> None:
    secret = new_secret()
    async with (
        event_store(database_url, tmp_path) as (store, engine),
        Endpoint(500, 503).serving() as end,
    ):
        tenant_id, queued = await queue_ping(store, end.url, secret, {"t": "👋"})
        settings = DispatchSettings(retry_schedule=(0.05, 0.05), allow_private=True, interval=0.05)
        before = attempts_counted()
        delivery = await settled_delivery(store, engine, settings, tenant_id, queued)

    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert [a.status_code for a in delivery.attempts] == [500, 503, 200]
    assert counted_since(before) == {"delivered": 1, "failed": 2, "given_up": 0}
    bodies = {body for _, body in end.requests}
    assert len(end.requests) == 3 and len(bodies) == 1
    for request_headers, body in end.requests:
        payload = verify(secret, request_headers, body)  # each attempt's own signature
        assert payload["timestamp"] == rfc3339(queued.created_at)
        assert payload["data"] == {"t": "👋"}
        assert request_headers["webhook-id"] == MSG_ID


async def test_a_refused_destination_fails_the_attempt_with_why_and_is_retried(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        event_store(database_url, tmp_path) as (store, engine),
        Endpoint().serving() as end,
    ):
        tenant_id, queued = await queue_ping(store, end.url, SECRET, {})
        settings = DispatchSettings(retry_schedule=(0.05,), allow_private=False, interval=0.05)
        before = attempts_counted()
        delivery = await settled_delivery(store, engine, settings, tenant_id, queued)

    assert end.requests == []
    assert delivery.status is DeliveryStatus.FAILED
    assert counted_since(before) == {"delivered": 0, "failed": 1, "given_up": 1}
    assert [(a.status_code, a.error) for a in delivery.attempts] == [
        (0, f"'127.0.0.1' resolves to 127.0.0.1, a loopback address; {HINT}")
    ] * 2


async def test_a_delivery_due_while_its_webhook_is_paused_waits_and_goes_once_resumed(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        event_store(database_url, tmp_path) as (store, engine),
        Endpoint().serving() as end,
    ):
        tenant_id, queued = await queue_ping(store, end.url, SECRET, {"n": 1})
        await store.update_webhook(tenant_id, queued.webhook_id, {"state": "paused"})
        settings = DispatchSettings(retry_schedule=(0.05,), allow_private=True, interval=0.05)
        dispatcher = Dispatcher(store, engine, settings)
        dispatcher.start()
        try:
            # Its job comes due, finds the webhook paused and ends: the delivery waits
            # without one, and is still shown (and listed) as pending.
            await wait_for(lambda: job_states(engine, queued.id), ["succeeded"], "the parking")
            (waiting,) = await store.list_deliveries(
                tenant_id, queued.webhook_id, status=DeliveryStatus.PENDING, limit=10, after=None
            )
            assert (waiting.id, waiting.status, waiting.attempt_count) == (
                queued.id,
                DeliveryStatus.PENDING,
                0,
            )
            assert end.requests == []

            await store.update_webhook(tenant_id, queued.webhook_id, {"state": "active"})
            dispatcher.wake()
            await wait_for(lambda: settled_count(store, tenant_id, queued), 1, "the delivery")
        finally:
            await dispatcher.close()
        assert await job_states(engine, queued.id) == ["succeeded", "succeeded"]
        (delivery,) = await store.list_deliveries(
            tenant_id, queued.webhook_id, status=None, limit=10, after=None
        )

    assert (delivery.status, delivery.attempt_count) == (DeliveryStatus.SUCCEEDED, 1)
    assert len(end.requests) == 1
    assert json.loads(end.requests[0][1])["data"] == {"n": 1}


async def job_states(engine: AsyncEngine, delivery_id: str) -> list[str]:
    """The states of the delivery's jobs, oldest first."""
    query = (
        select(jobs.c.state)
        .where(
            jobs.c.kind == DELIVERY_JOB, jobs.c.payload["delivery_id"].as_string() == delivery_id
        )
        .order_by(jobs.c.created_at)
    )
    async with engine.connect() as conn:
        return [row.state for row in (await conn.execute(query)).all()]


async def settled_count(store: SqlEventStore, tenant_id: str, queued: Delivery) -> int:
    found = await store.list_deliveries(
        tenant_id, queued.webhook_id, status=DeliveryStatus.SUCCEEDED, limit=10, after=None
    )
    return len(found)


async def wait_for(read: Callable[[], Awaitable[object]], wanted: object, what: str) -> None:
    """Wait (at most 10 s) until ``read()`` gives ``wanted``."""
    try:
        async with asyncio.timeout(10):
            while True:
                if await read() == wanted:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within 10 s (last: {await read()!r})")


async def test_the_upgrade_to_delivery_jobs_gives_every_pending_delivery_a_job(
    database_url: str, tmp_path: Path
) -> None:
    # A database as the previous version left it: deliveries pending (one due later, as
    # a previous gateway's lease leaves it) and one settled, none with a job.
    async with private_database(database_url, tmp_path) as url:
        engine = create_engine(load_settings({"DATABASE_URL": url}).database_url)
        try:
            await migrate(engine, revision="0006")
            store = SqlEventStore(engine)
            hook = await store.create_webhook(
                "tenant-old",
                url="http://127.0.0.1:9/hook",
                events_filter=["*"],
                channel_ids=[],
                description="",
                secret=SECRET,
            )
            now = datetime.now(UTC).replace(microsecond=0)
            payload = {"event": "ping", "event_id": MSG_ID, "channel_id": "", "seq": 0, "data": {}}
            rows = [delivery_row(hook, payload, now) for _ in range(3)]
            rows[1]["next_attempt_at"] = now + timedelta(seconds=45)
            rows[2]["status"] = DeliveryStatus.SUCCEEDED.value
            async with engine.begin() as conn:
                await conn.execute(insert(deliveries), rows)

            await migrate(engine)

            query = select(jobs.c.payload, jobs.c.run_after, jobs.c.tenant_id, jobs.c.state).where(
                jobs.c.kind == DELIVERY_JOB
            )
            async with engine.connect() as conn:
                found = (await conn.execute(query)).all()
        finally:
            await engine.dispose()
    assert sorted(
        (row.payload["delivery_id"], as_utc(row.run_after), row.tenant_id, row.state)
        for row in found
    ) == sorted((row["id"], row["next_attempt_at"], "tenant-old", "queued") for row in rows[:2])


async def test_an_attempt_recorded_late_by_a_claim_that_lost_its_job_is_not_kept(
    database_url: str, tmp_path: Path
) -> None:
    # Two claims saw the delivery at the same attempt count (the first gateway's lease
    # ran out while it still posted, and another took the job). The first to record wins;
    # the other's record is refused, so no attempt is counted or stored twice.
    async with event_store(database_url, tmp_path) as (store, _):
        tenant_id, queued = await queue_ping(store, "http://127.0.0.1:9/hook", SECRET, {})
        first, late = await store.take(queued.id), await store.take(queued.id)
        assert first is not None and late is not None
        now = datetime.now(UTC)
        retry = now + timedelta(minutes=1)
        outcome = {"succeeded": False, "next_attempt_at": retry, "disable_after_failures": 10}
        assert await store.record_attempt(first, Attempt(now, 503, 5, "busy"), **outcome)
        assert not await store.record_attempt(late, Attempt(now, 502, 7, "late"), **outcome)
        delivery = await store.get_delivery(tenant_id, queued.id)
    assert delivery.attempt_count == 1
    assert [(a.status_code, a.error) for a in delivery.attempts] == [(503, "busy")]
