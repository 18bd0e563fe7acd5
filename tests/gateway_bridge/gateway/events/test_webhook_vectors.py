"""Shared webhook signature vectors (tests/webhooks/vectors.json), checked three ways.

- independently here, with ``hmac``/``base64`` from the Standard Webhooks scheme;
- by ``keel.webhooks.sign`` / ``verify`` (what Keel signs with and Python receivers use);
- by the npm package ``standardwebhooks`` (what docs/webhooks.md gives Node receivers),
  through ``node tests/webhooks/verify-vectors.mjs``.

The Node script finds the package in the repository's ``node_modules`` (``npm ci``) or
in the directory ``KEEL_STANDARDWEBHOOKS_DIR`` names. Without either, the Node-backed
tests skip (``make test`` runs ``npm ci`` first, so there they always run); with the
package installed, a missing ``node`` fails them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
from typing import Any

import pytest
from keel.webhooks import WebhookVerificationError, sign, verify

from tests.conftest import ROOT

VECTORS_PATH = ROOT / "tests" / "webhooks" / "vectors.json"
SCRIPT = ROOT / "tests" / "webhooks" / "verify-vectors.mjs"
NODE_MODULES = ROOT / "node_modules"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = VECTORS["cases"]
NAMES = [case["name"] for case in CASES]


def headers_of(case: dict[str, Any]) -> dict[str, str]:
    """The request headers a case describes (see the vectors' description)."""
    values = {
        "webhook-id": case["msg_id"],
        "webhook-timestamp": str(case["timestamp"]),
        "webhook-signature": case["signature"],
    }
    style = case.get("header_case")
    headers = {}
    for name, value in values.items():
        if name == case.get("omit_header"):
            continue
        if style == "upper":
            name = name.upper()
        elif style == "title":
            name = name.title()
        headers[name] = value
    return headers


def hmac_signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body.encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_the_vectors_cover_both_outcomes_and_every_header() -> None:
    assert len(set(NAMES)) == len(NAMES), "case names must be unique"
    assert {c["valid"] for c in CASES} == {True, False}
    assert {c.get("omit_header") for c in CASES} >= {
        None,
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
    assert VECTORS["tolerance_seconds"] == 300
    assert sum(1 for c in CASES if c.get("signs")) >= 3


@pytest.mark.parametrize("case", [c for c in CASES if c.get("signs")], ids=lambda c: c["name"])
def test_signing_vectors_are_the_hmac_of_id_timestamp_and_body(case: dict[str, Any]) -> None:
    args = (case["msg_id"], case["timestamp"], case["body"])
    assert hmac_signature(case["secret"], *args) == case["signature"]
    assert (
        sign([case["secret"]], case["msg_id"], case["timestamp"], case["body"].encode())
        == (case["signature"])
    )


@pytest.mark.parametrize("case", CASES, ids=NAMES)
def test_keel_webhooks_verify_agrees_with_every_vector(case: dict[str, Any]) -> None:
    body = case["body"].encode()
    if case["valid"]:
        payload = verify(case["secret"], headers_of(case), body, now=case["now"])
        assert payload == json.loads(case["body"])
    else:
        with pytest.raises(WebhookVerificationError):
            verify(case["secret"], headers_of(case), body, now=case["now"])


@pytest.fixture(scope="module")
def node_results() -> dict[str, Any]:
    """What ``verify-vectors.mjs`` printed, with the npm package standardwebhooks.

    Skips when the repository's node_modules lacks the package (and
    ``KEEL_STANDARDWEBHOOKS_DIR`` names no other place); fails when the package is
    there but ``node`` is not, or the script cannot load it from a named place."""
    named = os.environ.get("KEEL_STANDARDWEBHOOKS_DIR")
    if not named and not (NODE_MODULES / "standardwebhooks" / "package.json").is_file():
        pytest.skip("node_modules/standardwebhooks is missing: run `npm ci` (make test does)")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Node side of the webhook vectors cannot run")
    env = dict(os.environ, KEEL_STANDARDWEBHOOKS_DIR=named or str(NODE_MODULES))
    finished = subprocess.run(
        [node, str(SCRIPT), str(VECTORS_PATH)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if finished.returncode == 3:
        pytest.fail(
            "the npm package standardwebhooks is not installed: run `npm ci` (it is a"
            " devDependency in package.json) or point KEEL_STANDARDWEBHOOKS_DIR at a"
            f" node_modules holding it\n{finished.stderr}"
        )
    assert finished.returncode == 0, finished.stderr
    printed: dict[str, Any] = json.loads(finished.stdout)
    return printed


def test_the_node_script_checked_every_vector(node_results: dict[str, Any]) -> None:
    assert node_results["library"] == "standardwebhooks"
    assert node_results["version"]
    assert [r["name"] for r in node_results["results"]] == NAMES


@pytest.mark.parametrize("case", CASES, ids=NAMES)
def test_standardwebhooks_in_node_agrees_with_every_vector(
    node_results: dict[str, Any], case: dict[str, Any]
) -> None:
    result = next(r for r in node_results["results"] if r["name"] == case["name"])
    assert result["valid"] is case["valid"], result.get("error")
    if not case["valid"]:
        assert result["error"].startswith("WebhookVerificationError")
    if case.get("signs"):
        assert result["signed"] == case["signature"]


def test_the_node_script_carries_the_documented_snippet() -> None:
    """The comment block a Node receiver copies is the one docs/webhooks.md shows."""
    docs = (ROOT / "docs" / "webhooks.md").read_text(encoding="utf-8")
    start = docs.index("### Verifying in Node")
    snippet = docs[docs.index("```js\n", start) + len("```js\n") : docs.index("```\n", start + 1)]
    script = SCRIPT.read_text(encoding="utf-8")
    commented = "\n".join(
        line.removeprefix("//   ").removeprefix("//")
        for line in script.splitlines()
        if line.startswith("//")
    )
    for line in snippet.strip().splitlines():
        assert line.rstrip() in commented, line
