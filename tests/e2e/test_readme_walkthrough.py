"""The README's five-minute tour, pasted block by block as a reader pastes it.

Every ```` ```sh ```` block between ``<!-- tour:begin -->`` and ``<!-- tour:end -->`` in
README.md is pasted, in order, into one bash process (the reader's "tour terminal"), the
next block only once the previous one has finished. The block right after
``<!-- tour:third-terminal -->`` goes to a second, fresh bash (the reader's third terminal,
sharing nothing with the first); it runs on while the tour goes on and is stopped at the
end with Ctrl-C (SIGINT to its process group). No block is left out.

The server is a fresh ``keel serve all`` as ``make run`` starts it (demo tenant included),
and the shells run where the reader's would, at the "repository root": a directory whose
``var/`` is the server's data directory and whose ``.venv`` is this virtualenv. The blocks
are changed in two ways only: the server's ports instead of ``make run``'s
(``127.0.0.1:50051``, ``127.0.0.1:8080``), and ``/tmp/`` replaced by a private directory.
The shells run with ``set -u -o pipefail`` (an unset variable ends the shell, so a block
that uses a variable no earlier block set fails) and report every command that fails.

Each block must print exactly the gRPC errors (``Code: …``) that the README shows after it
(before the next ``sh`` block), and no other command of it may fail. Then what the blocks
printed is checked against what the README says they print.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.conftest import free_port
from tests.e2e.conftest import KeelProcess, embedded_env, fetch_metrics, metric_samples

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BEGIN, END = "<!-- tour:begin -->", "<!-- tour:end -->"
THIRD_TERMINAL = "<!-- tour:third-terminal -->"
MAKE_RUN_GRPC, MAKE_RUN_WS = "127.0.0.1:50051", "127.0.0.1:8080"

#: The longest one pasted block may take, and the longest the third terminal may wait.
BLOCK_TIMEOUT = 30.0
WAIT_TIMEOUT = 15.0

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"^\s*Code: (\w+)$", re.MULTILINE)


@dataclass(frozen=True)
class TourBlock:
    """One ``sh`` block of the tour, what the README shows after it, and where it is pasted."""

    number: int
    code: str
    shown: str
    third_terminal: bool


def tour_blocks(text: str) -> list[TourBlock]:
    """The ``sh`` blocks between the tour's markers, in order, each with the ``text``
    blocks that follow it up to the next ``sh`` block."""
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"README.md needs {BEGIN} and {END}"
    tour = text.split(BEGIN, 1)[1].split(END, 1)[0]
    blocks: list[TourBlock] = []
    shown: list[str] = []
    for match in _FENCE.finditer(tour):
        language, body = match.group(1), match.group(2)
        if language != "sh":
            shown.append(body)
            continue
        if blocks:
            blocks[-1] = _with_shown(blocks[-1], shown)
        shown = []
        third = tour[: match.start()].rstrip().endswith(THIRD_TERMINAL)
        blocks.append(TourBlock(len(blocks) + 1, body, "", third))
    assert blocks, "no ```sh block in the tour"
    blocks[-1] = _with_shown(blocks[-1], shown)
    assert sum(b.third_terminal for b in blocks) == tour.count(THIRD_TERMINAL) == 1
    return blocks


def _with_shown(block: TourBlock, shown: list[str]) -> TourBlock:
    return TourBlock(block.number, block.code, "\n".join(shown), block.third_terminal)


def for_server(code: str, keel: KeelProcess, scratch: Path) -> str:
    """``code`` aimed at ``keel`` instead of ``make run``'s ports, ``/tmp/`` at ``scratch``."""
    code = code.replace(MAKE_RUN_GRPC, keel.addr).replace(MAKE_RUN_WS, keel.env["KEEL_WS_ADDR"])
    return re.sub(r"(?<![\w.])/tmp/", f"{scratch}/", code)


class Terminal:
    """A bash fed on its standard input as a reader pastes into a terminal.

    Standard error goes where standard output goes, as on a screen. Every command that
    fails prints a ``@@failed`` line (an ERR trap)."""

    def __init__(self, name: str, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), daemon=True
        )
        self._reader.start()
        self.transcript: list[str] = []
        self._write("set -u -o pipefail\ntrap 'echo \"@@failed ($?): $BASH_COMMAND\"' ERR\n")

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _write(self, text: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(text)
        self._process.stdin.flush()

    def paste(self, code: str) -> str:
        """Paste ``code``; wait (bounded) until it has run; return what it printed."""
        done = f"@@pasted {secrets.token_hex(8)}@@"
        self.transcript.append(f"$ {code}")
        self._write(f"{code}\nprintf '\\n%s\\n' '{done}'\n")
        output = self._read_until(lambda line: line == done, BLOCK_TIMEOUT)
        return "\n".join(output[:-1] if output and output[-1] == "" else output)

    def start(self, code: str) -> None:
        """Paste ``code`` without waiting for it (a command that runs until Ctrl-C)."""
        self.transcript.append(f"$ {code}")
        self._write(f"{code}\n")

    def output_so_far(self) -> str:
        """What the terminal printed since the last read, without waiting."""
        found: list[str] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)
                break
            found.append(line)
        self.transcript.extend(found)
        return "\n".join(found)

    def interrupt(self) -> str:
        """Ctrl-C: SIGINT to the terminal's processes; return what they printed until exit."""
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGINT)
        assert self._process.stdin is not None
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        return "\n".join(self._read_until(lambda line: False, WAIT_TIMEOUT, until_exit=True))

    def close(self) -> None:
        """Kill what still runs in the terminal and close its pipes."""
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=WAIT_TIMEOUT)
        self._reader.join(timeout=WAIT_TIMEOUT)
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass

    def _read_until(
        self, stop: Callable[[str], bool], timeout: float, *, until_exit: bool = False
    ) -> list[str]:
        deadline = time.monotonic() + timeout
        found: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if until_exit:
                    break
                self.transcript.extend(found)
                pytest.fail(f"the {self.name} did not finish within {timeout}s")
            if line is None:
                self._lines.put(None)
                if until_exit:
                    break
                self.transcript.extend(found)
                pytest.fail(f"the {self.name}'s shell exited (exit code {self._process.wait()})")
            if stop(line):
                break
            found.append(line)
        self.transcript.extend(found)
        return found


@pytest.fixture
def keel(keel_env: dict[str, str], keel_server: Callable[..., KeelProcess]) -> KeelProcess:
    """``keel serve all`` as ``make run`` starts it (demo tenant included), on private ports."""
    env = embedded_env(keel_env, KEEL_WS_ADDR=f"127.0.0.1:{free_port()}")
    return keel_server("all", env, wait_for_stdout="Keel is running")


@pytest.fixture
def terminals(keel: KeelProcess) -> Iterator[Callable[[str], Terminal]]:
    """A factory of terminals at the reader's repository root: ``var/`` is ``keel``'s data
    directory and ``.venv`` this virtualenv; the environment is the test run's without Keel's
    settings, as in a fresh terminal."""
    root = keel.data_dir.parent
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("KEEL_") or key in ("DATABASE_URL", "REDIS_URL"))
    }
    opened: list[Terminal] = []

    def open_terminal(name: str) -> Terminal:
        opened.append(Terminal(name, root, env))
        return opened[-1]

    yield open_terminal
    for terminal in opened:
        terminal.close()


def wait_for_event_stream(keel: KeelProcess, terminal: Terminal) -> None:
    """Wait (bounded) until the server has a ``SubscribeEvents`` stream open."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        samples = metric_samples(fetch_metrics(keel.metrics_url), "keel_event_streams")
        if any(value >= 1 for _, value in samples):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"the {terminal.name}'s SubscribeEvents never opened:\n"
                f"{terminal.output_so_far()}\n{keel.describe()}"
            )
        time.sleep(0.1)


def test_the_tour_runs_when_pasted_in_order(
    keel: KeelProcess, terminals: Callable[[str], Terminal], tmp_path: Path
) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed; the README's tour uses it (apt-get install jq)")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    blocks = tour_blocks(README.read_text())
    tour, third = terminals("tour terminal"), terminals("third terminal")
    printed: dict[int, str] = {}

    def transcript() -> str:
        return (
            "--- tour terminal ---\n"
            + "\n".join(tour.transcript)
            + "\n--- third terminal ---\n"
            + "\n".join(third.transcript)
            + f"\n--- server ---\n{keel.describe()}"
        )

    for block in blocks:
        code = for_server(block.code, keel, scratch)
        assert MAKE_RUN_GRPC not in code and MAKE_RUN_WS not in code
        if block.third_terminal:
            third.start(code)
            wait_for_event_stream(keel, third)
            continue
        output = printed[block.number] = tour.paste(code)
        codes_printed, codes_shown = _CODE.findall(output), _CODE.findall(block.shown)
        failed = [line for line in output.splitlines() if line.startswith("@@failed")]
        assert codes_printed == codes_shown and len(failed) == len(codes_shown), (
            f"block {block.number} printed the errors {codes_printed} and had {len(failed)}"
            f" failed commands; the README shows the errors {codes_shown}\n{transcript()}"
        )

    deadline = time.monotonic() + WAIT_TIMEOUT
    events = ""
    while "Coffee is here." not in events and time.monotonic() < deadline:
        events += third.output_so_far() + "\n"
        time.sleep(0.1)
    events += third.interrupt()
    check_what_the_tour_printed(printed, events, keel, transcript)


def check_what_the_tour_printed(
    printed: dict[int, str],
    events: str,
    keel: KeelProcess,
    transcript: Callable[[], str],
) -> None:
    """What the README says the blocks print, checked against what they printed."""
    everything = "\n".join(printed.values())

    def block_printing(text: str) -> str:
        found = [out for out in printed.values() if text in out]
        assert found, f"no block printed {text!r}\n{transcript()}"
        return found[0]

    # Reflection and health: every service, the file service included, is serving.
    listing = block_printing("keel.tenants.v1.TenantService\n")
    for service in (
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "keel.notifications.v1.NotificationService",
        "keel.files.v1.FileService",
    ):
        assert service in listing
    assert "is a method" in listing
    health = block_printing('"status": "SERVING"')
    assert health.count('"status": "SERVING"') == 2 and "NOT_SERVING" not in health

    # Files: stored over gRPC, fetched whole and by range from a signed URL; a PUT to an
    # upload URL.
    stored = block_printing('"filename":"agenda.txt"')
    assert '"content_type":"text/plain","size_bytes":"30","state":"FILE_STATE_READY"' in stored
    assert stored.endswith("\nAgenda: coffee, then standup.\nAgenda")
    assert '{"filename":"minutes.txt","size":15,"state":"ready"}' in everything
    attached = '"content":"Today\'s agenda","files":[{"filename":"agenda.txt","size_bytes":"30"'
    assert attached + ',"url":true}]}' in everything

    # Tenants: the demo tenant checks out; forum is refused writes, sees an empty list.
    assert '"name": "demo"' in everything
    assert "lacks the permission scope 'chat:write'" in everything
    assert '"channels": [' in everything and '"next_page_token": ""' in everything
    assert '{"requests_per_second":20,"burst":100}' in everything
    assert '"name":"twitter-clone"' in everything

    # The channel, its messages, the reaction and the reply, as the history shows them.
    for content in ("Standup at ten?", "I'll bring coffee.", "Ten it is."):
        assert content in everything
    history = [line for line in json_lines(everything) if {"user_id", "seq"} <= set(line)]
    assert [m["seq"] for m in history] == ["3", "2", "1"], transcript()
    assert history[2]["reaction_counts"] == [{"emoji": "👍", "count": 1}]
    oldest_first = [line for line in json_lines(everything) if set(line) == {"seq", "content"}]
    assert [m["seq"] for m in oldest_first][:3] == ["1", "2", "3"], transcript()
    sent = re.search(r"^sent (\S+) (\S+) (\S+)$", everything, re.MULTILINE)
    assert sent, transcript()
    assert history[0]["reply_to"] == sent.group(1)
    assert '"unread_count": 1' in everything
    assert '"last_read_seq": "2"' in everything
    assert re.search(r'"token": "[\w-]+\.[\w-]+\.[\w-]+"', everything), transcript()

    # The notification: sent in-app to bob, in his inbox, unread.
    assert '"title":"Alice mentioned you"' in everything, transcript()
    assert '{"titles":["Alice mentioned you"],"unread_count":1}' in everything, transcript()

    # The browser step: both addresses open the demo page; the tokens open the socket.
    ws_addr = keel.env["KEEL_WS_ADDR"]
    for user in ("bob", "alice"):
        url = re.search(rf"^{user}: +(http://\S+)$", everything, re.MULTILINE)
        assert url, transcript()
        assert url.group(1).startswith(f"http://{ws_addr}/demo?token=")
        with urllib.request.urlopen(url.group(1), timeout=5) as page:
            assert page.status == 200 and b"keel.js" in page.read()
        token = re.search(r"token=([\w.-]+)&channel=", url.group(1))
        assert token
        with connect(
            f"ws://{ws_addr}/ws?token={token.group(1)}", subprotocols=[Subprotocol("keel.v1")]
        ) as ws:
            welcome = json.loads(ws.recv(timeout=5))
            ws.send(json.dumps({"type": "inbox", "id": "bell"}))
            inbox = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome" and welcome["user_id"] == user
        # What the demo page's bell shows: bob has the tour's notification, alice none.
        assert inbox["type"] == "ack" and inbox["id"] == "bell", inbox
        assert inbox["result"]["unread_count"] == (1 if user == "bob" else 0), inbox

    # The third terminal got the message sent from the tour's terminal, with its cursor.
    streamed = [item for item in json_objects(events) if item.get("event") == "message:created"]
    assert streamed, f"the third terminal printed no message:created event\n{transcript()}"
    assert streamed[-1]["data"]["message"]["content"] == "Coffee is here.", transcript()
    assert streamed[-1]["cursor"], transcript()


def json_lines(output: str) -> list[dict[str, Any]]:
    """The one-line JSON objects in ``output`` (what ``jq -c`` printed)."""
    found = []
    for line in output.splitlines():
        if line.startswith("{") and line.endswith("}"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def json_objects(output: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl printed one after another (indented, several lines each)."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while (start := output.find("{", position)) != -1:
        try:
            item, position = decoder.raw_decode(output, start)
        except ValueError:
            position = start + 1
            continue
        found.append(item)
    return found
