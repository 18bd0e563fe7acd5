"""keel.js against a real bridge, under Node's own WebSocket (no browser needed for
behaviour that has nothing to draw): token renewal over the open socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.http import STATIC
from tests.gateway_bridge.bridge.test_revocation import token_with_ttl
from tests.gateway_bridge.conftest import Tenant

NODE = shutil.which("node")
SCRIPT = Path(__file__).with_name("keeljs") / "renew.mjs"


async def run_node(script: Path, env: dict[str, str], within: float = 30.0) -> dict[str, object]:
    if NODE is None:
        pytest.fail("node is missing (apt-get install -y nodejs npm)")
    proc = await asyncio.create_subprocess_exec(
        NODE,
        "--experimental-websocket",
        "--no-warnings",
        str(script),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        pytest.fail(f"{script.name} did not finish within {within}s")
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{err.decode()}"
    result: dict[str, object] = json.loads(lines[-1])
    return result


async def test_keel_js_renews_its_token_before_it_expires(bridge: Bridge, tenant: Tenant) -> None:
    channel = await tenant.public()
    short = await token_with_ttl(tenant, "alice", 2)
    long = await token_with_ttl(tenant, "alice", 600)
    result = await run_node(
        SCRIPT,
        {
            "KEEL_JS": str(STATIC / "keel.js"),
            "KEEL_URL": f"ws://127.0.0.1:{bridge.port}/ws",
            "KEEL_CHANNEL": channel,
            "KEEL_TOKENS": json.dumps([short, long]),
            "KEEL_WAIT_MS": "3500",  # past the first token's expiry
        },
    )
    assert result["errors"] == [], result
    assert result["states"] == [["connecting", 0], ["open", 0]], result  # never reconnected
    assert result["asked"] == 2, result  # the first token, then its renewal
    sent = result["sent"]
    assert isinstance(sent, dict) and sent["seq"] == 1, result
