"""Image attachments in real headless Chromium, against ``keel serve all``.

The browser half is ``tests/e2e/browser/attachments.mjs`` (playwright-core driving
``/usr/bin/chromium``, as in :mod:`tests.e2e.test_browser`, whose setup this reuses).

- On the demo page alice attaches a JPEG taken "with GPS" (made here, EXIF and all); bob's
  page shows her message with the thumbnail loaded from the file service, and that
  thumbnail carries no EXIF while the original file is served back byte for byte.
- keel.js's ``upload()`` survives a PATCH lost on the network (it asks the server's
  offset and goes on), stops on its ``AbortSignal``, and a second ``upload()`` with the
  first one's URL finishes from the server's offset instead of starting over.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image

from tests.e2e.conftest import KeelProcess, embedded_env
from tests.e2e.test_browser import CHROMIUM, NODE, REPO, chat_setup, ws_base

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "tests" / "e2e" / "browser" / "attachments.mjs"
CAPTION = "From the beach 🏖"
CHUNK = 16 * 1024


def photo_with_gps(path: Path) -> bytes:
    """A 480x360 JPEG whose EXIF names a camera and a place (GPS), written to ``path``.

    Its pixels are noise, so it compresses badly: about 130 KB, several tus chunks.
    """
    image = Image.frombytes("RGB", (480, 360), os.urandom(480 * 360 * 3))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "KeelCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 36.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, exif=exif)
    path.write_bytes(out.getvalue())
    return out.getvalue()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body


def run_script(keel: KeelProcess, scenario: str, image: Path, **env: str) -> dict[str, Any]:
    """Make alice and bob's channel and tokens, run attachments.mjs's ``scenario`` with
    ``image`` and ``env``; its last JSON line, with ``_context`` for failure messages."""
    assert NODE is not None
    channel_id, tokens = chat_setup(keel)
    proc = subprocess.run(
        [NODE, str(SCRIPT)],
        cwd=REPO,
        env={
            **os.environ,
            **env,
            "KEEL_SCENARIO": scenario,
            "KEEL_DEMO_BASE": ws_base(keel),
            "KEEL_CHANNEL": channel_id,
            "KEEL_ALICE_TOKEN": tokens["alice"],
            "KEEL_BOB_TOKEN": tokens["bob"],
            "KEEL_IMAGE": str(image),
            "KEEL_OUT_DIR": str(image.parent / "browser"),
            "KEEL_CHROMIUM": str(CHROMIUM),
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (
        f"attachments.mjs printed no result (exit {proc.returncode})\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    result["_context"] = (
        f"\n--- attachments.mjs (exit {proc.returncode}) ---\n{proc.stderr[-3000:]}"
        f"\n--- result ---\n{lines[-1][:6000]}\n--- server ---\n{keel.describe()}"
    )
    return result


@pytest.fixture
def browser_keel(keel_env: dict[str, str], keel_server: Callable[..., KeelProcess]) -> KeelProcess:
    """``keel serve all`` for a browser test (skipped without Chromium or Node)."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    if NODE is None:
        pytest.skip("node is missing (apt-get install -y nodejs npm)")
    assert (REPO / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is not installed: run `npm ci` at the repository root"
    )
    return keel_server("all", embedded_env(keel_env), wait_for_stdout="Keel is running")


def test_an_image_attached_on_the_demo_page_shows_as_a_thumbnail_without_exif_on_the_other_page(
    browser_keel: KeelProcess, tmp_path: Path
) -> None:
    photo = photo_with_gps(tmp_path / "beach.jpg")
    result = run_script(browser_keel, "demo", tmp_path / "beach.jpg", KEEL_CAPTION=CAPTION)
    context = result["_context"]
    assert result["ok"], f"failed at step {result.get('step')!r}: {result.get('error')}{context}"

    # Once uploaded the page said so; after the send the attachment bar is cleared.
    assert result["aliceUploaded"]["attachment"]["status"].startswith("ready"), context
    assert result["aliceAfterSend"]["state"] == "", context

    # Both pages show alice's message: the caption and one attachment, its thumbnail
    # loaded (naturalWidth > 0: the browser fetched and decoded it from the file service).
    for who in ("alice", "bob"):
        message = result[who]
        assert (message["sender"], message["content"]) == ("alice", CAPTION), context
        [attachment] = message["attachments"]
        img = attachment["img"]
        assert img["naturalWidth"] > 0 and img["naturalHeight"] > 0, context
        assert max(img["naturalWidth"], img["naturalHeight"]) <= 256, context
        # The width/height the message announced are the image's own.
        assert (int(img["width"]), int(img["height"])) == (
            img["naturalWidth"],
            img["naturalHeight"],
        ), context
        assert img["alt"] == "beach.jpg", context
        assert result["errors"][who] == [] and result["console"][who] == [], context
    assert result["bob"]["attachments"] == result["alice"]["attachments"], context

    # The thumbnail bob's browser showed has no EXIF (no GPS); the link serves the
    # original, byte for byte (EXIF included: it is the user's file).
    bobs = result["bob"]["attachments"][0]
    thumbnail = Image.open(io.BytesIO(fetch(bobs["img"]["src"])))
    assert "exif" not in thumbnail.info and not thumbnail.getexif(), context
    assert thumbnail.size == (bobs["img"]["naturalWidth"], bobs["img"]["naturalHeight"])
    assert hashlib.sha256(fetch(bobs["href"])).digest() == hashlib.sha256(photo).digest()
    assert Path(result["screenshot"]).is_file(), context


def test_keel_js_upload_retries_a_lost_chunk_and_resumes_an_aborted_upload_from_the_server_offset(
    browser_keel: KeelProcess, tmp_path: Path
) -> None:
    photo = photo_with_gps(tmp_path / "resume.jpg")
    result = run_script(browser_keel, "resume", tmp_path / "resume.jpg", KEEL_CHUNK=str(CHUNK))
    context = result["_context"]
    assert result["ok"], f"failed at step {result.get('step')!r}: {result.get('error')}{context}"
    page, requests = result["page"], result["requests"]
    size = len(photo)
    assert page["size"] == size and size > 6 * CHUNK, context

    # The first upload: created once; the second PATCH died on the network, keel.js asked
    # the server where it stood and sent that chunk again; the abort after three chunks
    # ended it with "aborted" and the upload's URL.
    first = page["first"]
    assert first["code"] == "aborted" and first["uploadUrl"], context
    assert first["progress"] == [0, CHUNK, 2 * CHUNK, 3 * CHUNK], context
    calls = [(r["method"], r["offset"], r["failed"]) for r in requests]
    assert calls[:6] == [
        ("POST", None, False),
        ("PATCH", 0, False),
        ("PATCH", CHUNK, True),
        ("HEAD", None, False),
        ("PATCH", CHUNK, False),
        ("PATCH", 2 * CHUNK, False),
    ], context
    assert all(r["url"] == first["uploadUrl"] for r in requests[1:]), context

    # The second upload went on from the server's offset: no new creation, a HEAD, then
    # PATCHes from 3 chunks to the end; the file id is the upload URL's last segment.
    second = page["second"]
    assert calls[6] == ("HEAD", None, False), context
    patches = [offset for method, offset, _ in calls[7:]]
    assert patches == list(range(3 * CHUNK, size, CHUNK)), context
    assert {method for method, _, _ in calls[7:]} == {"PATCH"}, context
    assert second["progress"][0] == 3 * CHUNK and second["progress"][-1] == size, context
    assert second["result"]["uploadUrl"] == first["uploadUrl"], context
    assert first["uploadUrl"].endswith("/" + second["result"]["fileId"]), context

    # The file, sent as an attachment, is the photo byte for byte.
    assert page["sent"]["message_id"], context
    assert hashlib.sha256(fetch(page["downloadUrl"])).digest() == hashlib.sha256(photo).digest()
    # The one request the script cut is the page's only complaint.
    assert result["errors"]["alice"] == [], context
    assert [line for line in result["console"]["alice"] if "ERR_CONNECTION_RESET" not in line] == []
