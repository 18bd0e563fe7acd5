"""The README's "Channels and messages" walk-through, run as a reader would paste it.

The shell block after ``<!-- walkthrough:channels -->`` in README.md is taken verbatim,
pointed at a fresh ``keel serve all`` (its address instead of ``127.0.0.1:50051``, its
data directory instead of ``var/``) and run with ``bash -euo pipefail``, with only
grpcurl, jq and the shell. If the README drifts from what Keel does, this fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import BIN, KeelProcess, embedded_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MARKER = "<!-- walkthrough:channels -->"


def walkthrough_block(text: str) -> str:
    """The body of the first ```sh block after the marker (exactly one marker allowed)."""
    assert text.count(MARKER) == 1, f"README.md must contain {MARKER!r} exactly once"
    after = text.split(MARKER, 1)[1]
    match = re.match(r"\s*```sh\n(.*?)\n```", after, re.DOTALL)
    assert match, f"no ```sh block right after {MARKER!r} in README.md"
    return match.group(1)


def for_server(block: str, keel: KeelProcess) -> str:
    """``block`` aimed at ``keel`` instead of ``make run``'s address and ``var/``."""
    data_dir = shlex.quote(str(keel.data_dir.resolve()))
    block = block.replace("127.0.0.1:50051", keel.addr)
    return re.sub(r"(?<![\w/.-])var/", lambda _: f"{data_dir}/", block)


def json_lines(output: str) -> list[dict[str, Any]]:
    """The one-line JSON objects in ``output`` (the ``jq -c`` output of the block)."""
    found = []
    for line in output.splitlines():
        if line.startswith("{") and line.endswith("}"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


@pytest.fixture
def keel(keel_env: dict[str, str], keel_server: Callable[..., KeelProcess]) -> KeelProcess:
    """``keel serve all`` as ``make run`` starts it (demo tenant included), on private ports."""
    env = embedded_env(keel_env, KEEL_WS_ADDR=f"127.0.0.1:{free_port()}")
    return keel_server("all", env, wait_for_stdout="Keel is running")


def test_readme_channels_walkthrough_runs(keel: KeelProcess, tmp_path: Path) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed; the README walk-through uses it (apt-get install jq)")
    script = for_server(walkthrough_block(README.read_text()), keel)
    assert "127.0.0.1:50051" not in script

    path = [str(REPO / ".venv" / "bin"), str(BIN), os.environ.get("PATH", "")]
    env = {**os.environ, "PATH": os.pathsep.join(dict.fromkeys(p for p in path if p))}
    workdir = tmp_path / "shell"
    workdir.mkdir()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, (
        f"the walk-through failed (exit {result.returncode})\n--- script ---\n{script}\n"
        f"--- stdout ---\n{output}\n--- stderr ---\n{result.stderr}\n"
        f"--- server ---\n{keel.describe()}"
    )

    # The three messages, the reaction and the reply, as the history shows them.
    for content in ("Standup at ten?", "I'll bring coffee.", "Ten it is."):
        assert content in output
    assert "reaction_counts" in output
    assert "👍" in output
    history = [line for line in json_lines(output) if "user_id" in line and "seq" in line]
    assert [m["seq"] for m in history] == ["3", "2", "1"], output
    first = history[2]
    assert first["reaction_counts"] == [{"emoji": "👍", "count": 1}]
    oldest_first = [line for line in json_lines(output) if set(line) == {"seq", "content"}]
    assert [m["seq"] for m in oldest_first] == ["1", "2", "3"], output
    sent = re.search(r"^sent (\S+) (\S+) (\S+)$", output, re.MULTILINE)
    assert sent, output
    assert history[0]["reply_to"] == sent.group(1)

    # Read state and the client token.
    assert '"unread_count": 1' in output
    assert '"last_read_seq": "2"' in output
    assert re.search(r'"token": "[\w-]+\.[\w-]+\.[\w-]+"', output), output
