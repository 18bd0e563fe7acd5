"""The README's "Running it distributed", pasted into one terminal per process.

The ```` ```sh ```` blocks of that section are pasted in order, as a reader pastes them:
a block that starts with ``. var/cluster.env`` opens a new terminal (every other block goes
on in the terminal before it); a block that runs ``keel serve`` is left running there
until Ctrl-C at the end, every other block must finish. The terminals are fresh shells
(no Keel settings in their environment) at a "repository root" whose ``.venv`` is this
virtualenv, and the blocks are changed in three ways only: a database of the test's own
instead of ``keel`` (on the test's PostgreSQL), the test's Redis, and free ports instead of
the README's. Before the last block (the check) every process must be ready; then what
``keel migrate`` and the check printed is compared with what the README shows.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import PG_ADMIN_URL, REDIS_URL, free_port
from tests.e2e.test_readme_walkthrough import _FENCE, README, WAIT_TIMEOUT, Terminal

pytestmark = pytest.mark.e2e

SECTION, NEXT_SECTION = "## Running it distributed", "\n## "
README_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/keel"
README_REDIS_URL = "redis://127.0.0.1:6379/0"


def cluster_blocks(text: str) -> list[tuple[str, str]]:
    """The section's ``sh`` blocks, each with the ``text`` blocks shown after it."""
    section = text.split(SECTION, 1)[1].split(NEXT_SECTION, 1)[0]
    blocks: list[tuple[str, str]] = []
    for match in _FENCE.finditer(section):
        if match.group(1) == "sh":
            blocks.append((match.group(2), ""))
        elif blocks:
            code, shown = blocks[-1]
            blocks[-1] = (code, shown + match.group(2))
    return blocks


@pytest.fixture
async def new_database_url() -> AsyncIterator[str]:
    """A PostgreSQL URL naming a database that does not exist yet (``keel migrate`` makes
    it); the database is dropped afterwards."""
    name = f"keel_readme_{uuid.uuid4().hex[:8]}"
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[Callable[[str], Terminal]]:
    """A factory of fresh terminals at a repository root whose ``.venv`` is this one."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("KEEL_") or key in ("DATABASE_URL", "REDIS_URL"))
    }
    opened: list[Terminal] = []

    def open_terminal(name: str) -> Terminal:
        opened.append(Terminal(name, tmp_path, env))
        return opened[-1]

    yield open_terminal
    for terminal in reversed(opened):
        terminal.interrupt()
        terminal.close()


def wait_until_ready(terminal: Terminal, code: str, seen: list[str]) -> None:
    """Wait (bounded) until the ``keel serve`` that ``code`` started is ready: ``serving``
    logged, or for a bridge, ``/healthz`` answering 200 (its gateway stream is up)."""
    ws = re.search(r"KEEL_WS_ADDR=(\S+)", code)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while time.monotonic() < deadline:
        seen.append(terminal.output_so_far())
        if "@@failed" in seen[-1]:
            break
        if ws is None and '"message": "serving"' in "\n".join(seen):
            return
        if ws is not None and _healthz(ws.group(1)) == 200:
            return
        time.sleep(0.2)
    output = "\n".join(line for line in seen if line)
    pytest.fail(f"the {terminal.name} did not get ready within {WAIT_TIMEOUT}s:\n{output}")


def _healthz(addr: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{addr}/healthz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_running_it_distributed_works_when_pasted(
    new_database_url: str, terminals: Callable[[str], Terminal]
) -> None:
    missing = [tool for tool in ("jq", "curl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed; the README's check uses them")
    blocks = cluster_blocks(README.read_text())
    ports = {
        port: str(free_port())
        for code, _ in blocks
        for port in re.findall(r"127\.0\.0\.1:(\d+)", code)
        if port not in ("5432", "6379")
    }
    assert ports, "no 127.0.0.1:PORT in the section"

    def for_test(code: str) -> str:
        code = code.replace(README_DATABASE_URL, new_database_url).replace(
            README_REDIS_URL, REDIS_URL
        )
        return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.get(m[1], m[1])}", code)

    terminal: Terminal | None = None
    serving: list[tuple[Terminal, str]] = []
    printed: list[tuple[str, str]] = []
    for number, (code, shown) in enumerate(blocks, 1):
        if terminal is None or code.startswith(". var/cluster.env"):
            terminal = terminals(f"terminal {number}")
        if "keel serve " in code:
            terminal.start(for_test(code))
            serving.append((terminal, for_test(code)))
            continue
        if number == len(blocks):  # the check, once everything runs
            for process_terminal, process_code in serving:
                wait_until_ready(process_terminal, process_code, [])
        output = terminal.paste(for_test(code))
        assert "@@failed" not in output, f"block {number} failed:\n{output}"
        printed.append((output, shown))

    (migrate, migrate_shown), (check, check_shown) = printed[0], printed[-1]
    name = new_database_url.rsplit("/", 1)[1]
    assert migrate.splitlines()[0] == f'created the database "{name}"', migrate
    applied = [line for line in migrate_shown.splitlines() if line.startswith("applied ")]
    assert [line for line in migrate.splitlines() if line.startswith("applied ")] == applied
    assert migrate.splitlines()[-1].startswith("database schema is up to date at ")
    logs = "\n".join(f"--- {t.name} ---\n{t.output_so_far()}" for t, _ in serving)
    assert check.splitlines() == check_shown.splitlines(), f"{check}\n{logs}"
