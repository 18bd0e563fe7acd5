"""The demo page and keel.js in real headless Chromium, against ``keel serve all``.

The browser half is ``tests/e2e/browser/chat.mjs`` (playwright-core driving Debian's
``/usr/bin/chromium``); the chat test starts Keel, makes a group channel for alice and bob
and their client tokens through the gRPC API, runs the script with ``node`` and checks
what the two pages displayed: each other's messages, a reply and a reaction, the typing
indicator, the online list, and — after bob's browser was offline while alice sent five
messages and bob queued one — every message exactly once, in seq order, on both pages.

The bell test (``tests/e2e/browser/notifications.mjs``) opens the demo page as dana,
sends her a notification with ``NotificationService.SendNotification`` while the page is
open, and checks that the bell's count and the dropdown's list follow without a reload,
and that "Mark all read" clears them (in the inbox on the server too).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from tests.e2e.conftest import KeelProcess, Metadata, client_metadata, embedded_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "e2e" / "browser" / "chat.mjs"
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")

HELLO = "Hi Bob! 👋"
REPLY = "Hi Alice, good to see you."
QUEUED = "Sorry, train tunnel. Back soon!"
UPDATES = [f"Update {i} of 5" for i in range(1, 6)]


def ws_base(keel: KeelProcess) -> str:
    """``http://host:port`` of the bridge, from the address ``keel serve all`` prints."""
    match = re.search(r"browsers\s+ws://(\S+)/ws", keel.stdout())
    assert match, f"no WebSocket address in the banner:\n{keel.stdout()}"
    return f"http://{match.group(1)}"


def chat_setup(keel: KeelProcess) -> tuple[str, dict[str, str]]:
    """A group channel with alice and bob, and a client token for each (demo tenant)."""
    creds = json.loads((keel.data_dir / "demo-tenant.json").read_text())
    metadata = client_metadata(creds["client_id"], creds["client_secret"])
    with grpc.insecure_channel(keel.addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        for user in ("alice", "bob"):
            stub.UpsertUser(
                channels_pb2.UpsertUserRequest(
                    user=channels_pb2.User(id=user, username=user.capitalize())
                ),
                metadata=metadata,
                timeout=10,
            )
        created = stub.CreateChannel(
            channels_pb2.CreateChannelRequest(
                name="browser-demo",
                type=channels_pb2.CHANNEL_TYPE_GROUP,
                created_by="alice",
                member_ids=["bob"],
            ),
            metadata=metadata,
            timeout=10,
        )
        tokens = {
            user: stub.IssueClientToken(
                channels_pb2.IssueClientTokenRequest(user_id=user, ttl_seconds=600),
                metadata=metadata,
                timeout=10,
            ).token
            for user in ("alice", "bob")
        }
    return created.channel.id, tokens


def offline_noise(line: str) -> bool:
    """Chromium's console line for a reconnect attempt made while the browser is offline."""
    return "WebSocket connection to" in line and "ERR_INTERNET_DISCONNECTED" in line


def run_chat(base: str, channel_id: str, tokens: dict[str, str], out_dir: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "KEEL_DEMO_BASE": base,
        "KEEL_CHANNEL": channel_id,
        "KEEL_ALICE_TOKEN": tokens["alice"],
        "KEEL_BOB_TOKEN": tokens["bob"],
        "KEEL_OUT_DIR": str(out_dir),
        "KEEL_CHROMIUM": str(CHROMIUM),
    }
    assert NODE is not None
    proc = subprocess.run(
        [NODE, str(SCRIPT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (
        f"chat.mjs printed no result (exit {proc.returncode})\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    (out_dir / "result.json").write_text(lines[-1])
    result: dict[str, Any] = json.loads(lines[-1])
    result["_stderr"] = proc.stderr
    result["_exit"] = proc.returncode
    return result


def test_two_browsers_chat_through_the_demo_page(
    keel_env: dict[str, str],
    keel_server: Callable[..., KeelProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    if NODE is None:
        pytest.skip("node is missing (apt-get install -y nodejs npm)")
    assert (REPO / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is not installed: run `npm ci` at the repository root"
    )

    keel = keel_server("all", embedded_env(keel_env), wait_for_stdout="Keel is running")
    channel_id, tokens = chat_setup(keel)
    result = run_chat(ws_base(keel), channel_id, tokens, tmp_path / "browser")

    context = (
        f"\n--- chat.mjs (exit {result['_exit']}) ---\n{result['_stderr'][-3000:]}"
        f"\n--- result ---\n{json.dumps({k: v for k, v in result.items() if k[0] != '_'})[:6000]}"
        f"\n--- server ---\n{keel.describe()}"
    )
    assert result["ok"], f"failed at step {result.get('step')!r}: {result.get('error')}{context}"

    # Before the outage: each saw the other online, and alice's typing on bob's page.
    assert "bob" in result["aliceSawBobOnline"], context
    assert "alice" in result["bobSawAliceOnline"], context
    assert result["bobSawTyping"] == "alice is typing…", context
    assert result["bobReplyingTo"].startswith("alice: Hi Bob"), context
    for page in ("aliceAfterHello", "bobAfterHello"):
        shown = result[page]["messages"]
        assert [(m["sender"], m["content"]) for m in shown] == [
            ("alice", HELLO),
            ("bob", REPLY),
        ], context
        assert shown[1]["quote"] == f"↪ alice: {HELLO}", context
        assert shown[0]["reactions"] == ["👍 1"], context

    # While offline bob's page showed the outage, kept his message in the outbox, and
    # showed none of alice's updates.
    assert result["bobOffline"] in ("reconnecting", "connecting"), context
    assert result["bobOutboxWhileOffline"] == [QUEUED], context
    assert result["aliceSawBobLeave"] == ["alice"], context
    offline_view = result["bobWhileOffline"]
    assert [m["content"] for m in offline_view["messages"]] == [HELLO, REPLY], context

    # Afterwards both pages show every message exactly once, in seq order 1..8; the
    # client handed each message:created to the page once, in order.
    expected = [
        ("alice", HELLO),
        ("bob", REPLY),
        *(("alice", text) for text in UPDATES),
        ("bob", QUEUED),
    ]
    for who in ("alice", "bob"):
        view = result[who]
        assert view["state"] == "open", context
        assert [m["seq"] for m in view["messages"]] == list(range(1, 9)), context
        assert [(m["sender"], m["content"]) for m in view["messages"]] == expected, context
        assert len({m["id"] for m in view["messages"]}) == 8, context
        assert view["delivered"] == list(range(1, 9)), context
        assert view["outbox"] == [], context
        assert view["errors"] == [], context
        assert [line for line in result["console"][who] if not offline_noise(line)] == [], context
    assert "bob" in result["aliceSawBobBack"], context
    assert sorted(result["bob"]["online"]) == ["alice", "bob"], context

    screenshot = Path(result["screenshots"]["bob"])
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, context
    with capsys.disabled():
        print(
            f"\nbrowser test: bob caught up {result['bobCatchUpMs']} ms after coming back; "
            f"screenshots: {screenshot} {result['screenshots']['alice']}"
        )


# -- the notification bell --------------------------------------------------------------------

BELL_SCRIPT = REPO / "tests" / "e2e" / "browser" / "notifications.mjs"


def send_notification(keel: KeelProcess, metadata: Metadata, user_id: str, title: str) -> str:
    """A SendNotification for ``user_id``, in-app only, as a tenant's backend sends it."""
    with grpc.insecure_channel(keel.addr) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        sent = stub.SendNotification(
            notifications_pb2.SendNotificationRequest(
                user_ids=[user_id],
                title=title,
                body=f"{title}, in #browser-bell",
                category="mention",
                channels=[notifications_pb2.NOTIFICATION_CHANNEL_IN_APP],
            ),
            metadata=metadata,
            timeout=10,
        )
    return str(sent.notifications[0].id)


def unread_count(keel: KeelProcess, metadata: Metadata, user_id: str) -> int:
    with grpc.insecure_channel(keel.addr) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        page = stub.ListNotifications(
            notifications_pb2.ListNotificationsRequest(user_id=user_id, page_size=1),
            metadata=metadata,
            timeout=10,
        )
    return int(page.unread_count)


def bell_setup(keel: KeelProcess) -> tuple[Metadata, str, str]:
    """The demo tenant's credentials, a public channel of dana's, her client token."""
    creds = json.loads((keel.data_dir / "demo-tenant.json").read_text())
    metadata = client_metadata(creds["client_id"], creds["client_secret"])
    with grpc.insecure_channel(keel.addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        stub.UpsertUser(
            channels_pb2.UpsertUserRequest(user=channels_pb2.User(id="dana", username="Dana")),
            metadata=metadata,
            timeout=10,
        )
        created = stub.CreateChannel(
            channels_pb2.CreateChannelRequest(
                name="browser-bell", type=channels_pb2.CHANNEL_TYPE_PUBLIC, created_by="dana"
            ),
            metadata=metadata,
            timeout=10,
        )
        token = stub.IssueClientToken(
            channels_pb2.IssueClientTokenRequest(user_id="dana", ttl_seconds=600),
            metadata=metadata,
            timeout=10,
        ).token
    return metadata, created.channel.id, token


class Lines:
    """What a subprocess prints, line by line, read by a thread (so waits are bounded)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Once the process is gone: stop reading, close its stdout."""
        self._thread.join(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def until(self, wanted: str | None, within: float) -> bool:
        """Read up to the line ``wanted`` (True), or the end (None: up to the exit)."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                return False
            if line is None:
                return wanted is None
            self.seen.append(line)
            if line == wanted:
                return True
        return False


def test_the_demo_bell_counts_a_notification_sent_over_grpc_without_a_reload(
    keel_env: dict[str, str],
    keel_server: Callable[..., KeelProcess],
    tmp_path: Path,
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    if NODE is None:
        pytest.skip("node is missing (apt-get install -y nodejs npm)")
    keel = keel_server("all", embedded_env(keel_env), wait_for_stdout="Keel is running")
    metadata, channel_id, token = bell_setup(keel)
    first = send_notification(keel, metadata, "dana", "Ana mentioned you")
    env = {
        **os.environ,
        "KEEL_DEMO_BASE": ws_base(keel),
        "KEEL_CHANNEL": channel_id,
        "KEEL_TOKEN": token,
        "KEEL_OUT_DIR": str(tmp_path / "browser"),
        "KEEL_CHROMIUM": str(CHROMIUM),
    }
    assert NODE is not None
    stderr_path = tmp_path / "notifications.mjs.stderr"
    with stderr_path.open("w") as stderr_file:
        proc = subprocess.Popen(
            [NODE, str(BELL_SCRIPT)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
        )
        lines = Lines(proc)
        second = ""
        try:
            if lines.until("READY", within=90):
                second = send_notification(keel, metadata, "dana", "Ben replied to you")
            lines.until(None, within=60)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            lines.close()
    stderr = stderr_path.read_text()
    results = [line for line in lines.seen if line.startswith("{")]
    assert results, f"notifications.mjs printed no result\n{lines.seen}\n{stderr[-4000:]}"
    result: dict[str, Any] = json.loads(results[-1])
    context = f"\n--- result ---\n{json.dumps(result)[:6000]}\n--- stderr ---\n{stderr[-3000:]}"
    assert result["ok"], f"failed at step {result.get('step')!r}: {result.get('error')}{context}"

    # Before: the inbox as listed on connect — one unread notification.
    assert [i["id"] for i in result["before"]["items"]] == [first], context
    # Live: the count moved to 2 on the same page (no reload: its mark survived).
    assert result["live"]["pageLoad"] == result["before"]["pageLoad"] is not None, context
    # The dropdown lists both, newest first, unread.
    assert [(i["id"], i["title"], i["unread"]) for i in result["dropdown"]["items"]] == [
        (second, "Ben replied to you", True),
        (first, "Ana mentioned you", True),
    ], context
    # "Mark all read" cleared the badge, and the inbox on the server agrees.
    assert result["afterMarkAll"]["badge"] == "", context
    assert unread_count(keel, metadata, "dana") == 0
    assert result["afterMarkAll"]["errors"] == [] and result["console"] == [], context
    assert Path(result["screenshot"]).is_file(), context
