"""The bridge's WebSocket layer against the Autobahn test suite (docs/conformance.md).

kosoku runs the Autobahn cases as a client against ``/_conformance/echo``, a route the
bridge serves only with ``conformance_echo`` on (``KEEL_WS_CONFORMANCE_ECHO=1``): it takes
no token and no subprotocol and echoes every message, so the cases test the socket layer
keel.v1 connections run on (the same websockets server, with the bridge's settings).

Every case must end OK, NON-STRICT or INFORMATIONAL, except those in :data:`EXPECTED`,
each with the outcome it is expected to have and why that is harmless for Keel. A listed
case that ends otherwise fails too, so the table (copied into docs/conformance.md) stays
true. ``make test`` runs every case without compression and the compression cases with
small payloads; ``make conformance`` (``KEEL_CONFORMANCE=full``) runs all of 12.x and
13.x too, and writes the result tables to ``KEEL_CONFORMANCE_REPORT`` when it is set.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kosoku import FailureError, run_fuzzingclient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.http import ECHO_PATH
from tests.gateway_bridge.bridge.conftest import WAIT, Stack, running_bridge

if TYPE_CHECKING:
    from kosoku._kosoku import CaseResult

#: The bridge settings of every run.
#: - ``max_frame_bytes``: 9.1.6 and 9.2.6 send 16 MiB messages; 16 MiB is the largest
#:   ``KEEL_WS_MAX_FRAME_BYTES`` allows.
#: - ``ping_interval``: a case compares every frame it receives with the frames it
#:   expects, so a keepalive ping in the middle of a case spoils it (in 12.x/13.x the
#:   case then closes early and reports "did not finish within 480 seconds"). 3600 s, the
#:   largest ``KEEL_WS_PING_INTERVAL`` allows, is longer than any run.
ECHO_SETTINGS: dict[str, Any] = {
    "conformance_echo": True,
    "max_frame_bytes": 16 << 20,
    "ping_interval": 3600.0,
}

#: Everything but compression ("8.*" and "11.*" match no case). 301 cases.
UNCOMPRESSED = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*")
UNCOMPRESSED_COUNT = 301

#: Compression (permessage-deflate), with ``compression`` on. 12.x sends 1000 messages of
#: each payload size (16 B to 128 KiB) from five data sets; 13.x does so with each set of
#: deflate parameters. All 216 take minutes, so ``make test`` runs only the two smallest
#: sizes of every subsection (each negotiation and data set, 24 cases).
COMPRESSED_FULL = ("12.*", "13.*")
COMPRESSED_FULL_COUNT = 216
COMPRESSED_QUICK = tuple(
    [f"12.{section}.{size}" for section in range(1, 6) for size in (1, 2)]
    + [f"13.{section}.{size}" for section in range(1, 8) for size in (1, 2)]
)

FULL = os.environ.get("KEEL_CONFORMANCE") == "full"
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})


@dataclass(frozen=True, slots=True)
class Expected:
    """A case's outcome that is not a pass, and why it is harmless for Keel."""

    behavior: str
    behavior_close: str
    remote_close_code: int | None
    why: str


_TOO_MANY_FRAGMENTS = (
    "websockets reassembles a message from at most 4096 frames and closes with 1009 "
    "beyond (TooManyFragments; the limit is WEBSOCKETS_MAX_FRAGMENTS, read once when "
    "websockets is imported). It bounds the memory a message's fragments take apart from "
    "the size limit: a 16 MiB message in 1-byte fragments would be 16 million frame "
    "objects. This case sends 4 MiB in {size}-byte fragments ({frames} frames). Keel's "
    "messages are JSON of at most KEEL_WS_MAX_FRAME_BYTES (64 KiB by default), which 4096 "
    "fragments carry down to 16 bytes each, and browsers and Keel's SDKs send a message "
    "as one frame."
)

#: The cases that may end other than OK, NON-STRICT or INFORMATIONAL, with the outcome
#: they must have (docs/conformance.md lists the same).
EXPECTED: dict[str, Expected] = {
    "7.1.5": Expected(
        "FAILED",
        "WRONG CODE",
        1002,
        "A close frame between the fragments of a message: websockets answers 1002 "
        "(protocol error, 'incomplete fragmented message') where the suite wants the "
        "1000 it sent echoed. RFC 6455 says an endpoint 'typically' echoes the code, so "
        "another code is allowed; websockets documents this failure in its "
        "compliance/README.rst. The closing handshake completes; a Keel client that "
        "closes mid-message only sees 1002 instead of 1000.",
    ),
    "9.3.1": Expected(
        "FAILED", "FAILED", 1009, _TOO_MANY_FRAGMENTS.format(size=64, frames="65,536")
    ),
    "9.3.2": Expected(
        "FAILED", "FAILED", 1009, _TOO_MANY_FRAGMENTS.format(size=256, frames="16,384")
    ),
    "9.4.1": Expected(
        "FAILED", "FAILED", 1009, _TOO_MANY_FRAGMENTS.format(size=64, frames="65,536")
    ),
    "9.4.2": Expected(
        "FAILED", "FAILED", 1009, _TOO_MANY_FRAGMENTS.format(size=256, frames="16,384")
    ),
}

#: The names of the suite's sections.
SECTIONS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/Performance",
    "10": "Miscellaneous",
    "12": "Compression, payloads",
    "13": "Compression, parameters",
}
OUTCOMES = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR")


async def run_cases(bridge: Bridge, cases: Sequence[str], within: float) -> list[CaseResult]:
    """Run ``cases`` against the bridge's echo route; every result, passed or not."""
    url = f"ws://127.0.0.1:{bridge.port}{ECHO_PATH}"
    try:
        async with asyncio.timeout(within):
            return list(await run_fuzzingclient(url, list(cases), None, concurrency=4))
    except FailureError as failure:
        return list(failure.results)
    except TimeoutError:
        pytest.fail(f"the cases {cases} did not finish within {within}s")


def outcome(result: CaseResult) -> str:
    return f"{result.behavior.value} / close {result.behavior_close.value}"


def surprises(results: Sequence[CaseResult]) -> list[str]:
    """What differs from "every case passes, except the listed ones as listed"."""
    found = []
    for result in results:
        listed = EXPECTED.get(result.case_id)
        if listed is None:
            if {result.behavior.value, result.behavior_close.value} <= PASSING:
                continue
            found.append(
                f"{result.case_id} ({result.description[:80]!r}): {outcome(result)}, "
                f"remote close {result.remote_close_code}: {result.result} "
                f"{result.result_close}"
            )
        elif (
            result.behavior.value,
            result.behavior_close.value,
            result.remote_close_code,
        ) != (listed.behavior, listed.behavior_close, listed.remote_close_code):
            found.append(
                f"{result.case_id} is listed in EXPECTED as {listed.behavior} / close "
                f"{listed.behavior_close}, remote close {listed.remote_close_code}, but "
                f"ended {outcome(result)}, remote close {result.remote_close_code}: update "
                "the table here and in docs/conformance.md"
            )
    return found


def report(title: str, results: Sequence[CaseResult]) -> str:
    """The results as docs/conformance.md shows them: counts per section and outcome,
    then every case that is not OK."""
    counts: Counter[tuple[str, str]] = Counter()
    for result in results:
        counts[result.case_id.split(".")[0], result.behavior.value] += 1
    lines = [
        f"### {title}",
        "",
        "| section | " + " | ".join(OUTCOMES) + " | total |",
        "|---|" + "---:|" * (len(OUTCOMES) + 1),
    ]
    for number, name in SECTIONS.items():
        row = [counts[number, kind] for kind in OUTCOMES]
        if sum(row):
            cells = " | ".join(str(n) if n else "" for n in row)
            lines.append(f"| {number} {name} | {cells} | {sum(row)} |")
    totals = [sum(n for (_, kind), n in counts.items() if kind == k) for k in OUTCOMES]
    lines.append(
        "| **all** | " + " | ".join(f"**{n}**" for n in totals) + f" | **{len(results)}** |"
    )
    not_ok = [r for r in results if (r.behavior.value, r.behavior_close.value) != ("OK", "OK")]
    if not not_ok:
        return "\n".join([*lines, "", "Every case ended OK."]) + "\n"
    lines += ["", "| case | outcome | remote close | description |", "|---|---|---|---|"]
    for result in not_ok:
        description = re.sub(r"<[^>]+>", " ", result.description)
        description = " ".join(description.split()).replace("|", "\\|")
        lines.append(
            f"| {result.case_id} | {outcome(result)} | {result.remote_close_code} | {description} |"
        )
    return "\n".join(lines) + "\n"


def write_report(name: str, title: str, results: Sequence[CaseResult]) -> None:
    """Write the report to ``$KEEL_CONFORMANCE_REPORT/<name>.md`` when that is set."""
    folder = os.environ.get("KEEL_CONFORMANCE_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.md").write_text(report(title, results))


async def test_every_case_without_compression_passes_or_is_listed(stack: Stack) -> None:
    async with running_bridge(stack, **ECHO_SETTINGS) as bridge:
        results = await run_cases(bridge, UNCOMPRESSED, within=300)
    write_report("uncompressed", "Without compression (the default)", results)
    assert len(results) == UNCOMPRESSED_COUNT, [r.case_id for r in results]
    assert surprises(results) == []


# The suite's own 12.x/13.x code reads its test data with ``open(...).read()`` and never
# closes the file; that warning is about kosoku, not the bridge.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*autobahntestsuite/testdata/"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_every_compression_case_passes_with_compression_on(stack: Stack) -> None:
    cases, count = (
        (COMPRESSED_FULL, COMPRESSED_FULL_COUNT)
        if FULL
        else (COMPRESSED_QUICK, len(COMPRESSED_QUICK))
    )
    async with running_bridge(stack, compression=True, **ECHO_SETTINGS) as bridge:
        results = await run_cases(bridge, cases, within=1800 if FULL else 300)
    write_report("compressed", "With compression (KEEL_WS_COMPRESSION=1)", results)
    assert len(results) == count, [r.case_id for r in results]
    # Compression must be negotiated: without it every one of these is UNIMPLEMENTED.
    assert surprises(results) == []


async def test_the_echo_route_is_served_only_when_turned_on(stack: Stack) -> None:
    async with running_bridge(stack) as bridge:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{bridge.port}{ECHO_PATH}", proxy=None, open_timeout=WAIT)
        assert refused.value.response.status_code == 404
    async with running_bridge(stack, conformance_echo=True) as bridge:
        async with connect(
            f"ws://127.0.0.1:{bridge.port}{ECHO_PATH}", proxy=None, open_timeout=WAIT
        ) as echo:
            await echo.send("hello")
            async with asyncio.timeout(WAIT):
                assert await echo.recv() == "hello"
