"""docs/files.md's examples, pasted in order into one terminal as a reader pastes them.

Every ```` ```sh ```` block between ``<!-- files-doc:begin -->`` and
``<!-- files-doc:end -->`` runs against a fresh ``keel serve all`` as ``make run`` starts it
(demo tenant included), in a bash at a "repository root" whose ``var/`` is the server's
data directory — the same terminals as the README's tour
(:mod:`tests.e2e.test_readme_walkthrough`). The blocks change only in the server's ports
(instead of ``make run``'s ``127.0.0.1:50051`` and ``127.0.0.1:8090``) and ``/tmp/``
(a private directory). Each block must print exactly the ``text`` block the page shows after
it, ids aside (every UUID reads ``<uuid>`` on both sides), and fail exactly where the page
shows a gRPC error.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import KeelProcess

# The tour's fixtures: the same server and terminals.
from tests.e2e.test_readme_walkthrough import (  # noqa: F401
    _CODE,
    _FENCE,
    MAKE_RUN_GRPC,
    Terminal,
    keel,
    terminals,
)

pytestmark = pytest.mark.e2e

DOC = Path(__file__).resolve().parents[2] / "docs" / "files.md"
BEGIN, END = "<!-- files-doc:begin -->", "<!-- files-doc:end -->"
MAKE_RUN_FILES = "127.0.0.1:8090"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """The ``sh`` blocks between the markers, each with the ``text`` shown after it."""
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"docs/files.md needs {BEGIN}, {END}"
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    blocks: list[tuple[str, str]] = []
    for match in _FENCE.finditer(section):
        language, body = match.group(1), match.group(2)
        if language == "sh":
            blocks.append((body, ""))
        elif language == "text" and blocks:
            code, shown = blocks[-1]
            blocks[-1] = (code, shown + body)
    assert blocks, "no ```sh block between the markers"
    return blocks


def _normalized(text: str) -> list[str]:
    lines = [line.rstrip() for line in _UUID.sub("<uuid>", text).splitlines()]
    return [line for line in lines if line and not line.startswith("@@failed")]


def test_the_file_examples_run_when_pasted_in_order(
    keel: KeelProcess,  # noqa: F811
    terminals: Callable[[str], Terminal],  # noqa: F811
    tmp_path: Path,
) -> None:
    missing = [tool for tool in ("jq", "curl", "sha256sum") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed; docs/files.md uses them")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    terminal = terminals("files terminal")
    for number, (code, shown) in enumerate(doc_blocks(DOC.read_text()), 1):
        code = code.replace(MAKE_RUN_GRPC, keel.addr).replace(
            MAKE_RUN_FILES, keel.env["KEEL_FILES_HTTP_ADDR"]
        )
        code = re.sub(r"(?<![\w.])/tmp/", f"{scratch}/", code)
        output = terminal.paste(code)
        failed = [line for line in output.splitlines() if line.startswith("@@failed")]
        codes_shown = _CODE.findall(shown)
        assert _CODE.findall(output) == codes_shown and len(failed) == len(codes_shown), (
            f"block {number} failed:\n{output}\n--- server ---\n{keel.describe()}"
        )
        assert _normalized(output) == _normalized(shown), f"block {number} printed:\n{output}"
