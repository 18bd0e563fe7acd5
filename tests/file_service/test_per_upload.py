"""What a process remembers of the uploads its requests moved (file_service.per_upload)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

from file_service.models import FileState, StoredFile
from file_service.per_upload import METADATA_KEPT_BYTES, RecentUploads, RunningHashes


def test_running_hashes_forget_the_least_recently_continued_upload() -> None:
    hashes = RunningHashes(limit=2)
    for name in ("f0", "f1", "f2"):
        hashes.keep("t", name, 10, hashlib.sha256(b"0123456789"))
    assert hashes.take("t", "f0", 10) is None  # forgotten: the limit is 2
    assert hashes.take("t", "f1", 9) is None  # another offset: not the bytes it hashed
    assert hashes.take("t", "f1", 10) is None  # and the mismatch took it away
    kept = hashes.take("t", "f2", 10)
    assert kept is not None and kept.hexdigest() == hashlib.sha256(b"0123456789").hexdigest()
    assert hashes.take("t", "f2", 10) is None  # taken once
    fresh = hashes.take("t", "f3", 0)  # the start of an upload: a new hash
    assert fresh is not None and fresh.hexdigest() == hashlib.sha256().hexdigest()


def upload(offset: int, *, size: int = 100, state: FileState = FileState.PENDING) -> StoredFile:
    return StoredFile(
        id="f",
        tenant_id="t",
        filename="notes.bin",
        content_type="application/octet-stream",
        size=size,
        sha256="",
        user_id="alice",
        metadata={},
        state=state,
        blob_key="t/f",
        create_time=datetime(2026, 12, 1, tzinfo=UTC),
        upload_offset=offset,
    )


def test_recent_uploads_give_an_upload_once_and_only_at_the_offset_it_was_left_at() -> None:
    recent = RecentUploads()
    recent.keep_file(upload(40))
    assert recent.take("t", "f", 30) is None  # another offset: read it
    assert recent.take("t", "f", 40) is None  # and the mismatch took it away
    recent.keep_file(upload(40))
    assert recent.take("t", "other-tenant", 40) is None
    assert recent.take("t", "f", 40) == upload(40)
    assert recent.take("t", "f", 40) is None  # taken once


def test_recent_uploads_keep_only_uploads_that_take_more_bytes() -> None:
    recent = RecentUploads()
    for done in (
        upload(100),
        upload(40, state=FileState.READY),
        upload(40, state=FileState.DELETED),
    ):
        recent.keep_file(upload(40))
        recent.keep_file(done)  # forgets the one kept before
        assert recent.take("t", "f", 40) is None
        assert recent.take("t", "f", 100) is None
    recent.keep_file(replace(upload(40), id="g"))
    recent.forget("t", "g")
    assert recent.take("t", "g", 40) is None


def test_recent_uploads_keep_no_upload_with_large_metadata() -> None:
    """What a process keeps stays small: an upload with more metadata than
    METADATA_KEPT_BYTES reads its row on its next request instead."""
    recent = RecentUploads()
    small = replace(upload(40), metadata={"note": "x" * (METADATA_KEPT_BYTES - 100)})
    large = replace(upload(40), id="g", metadata={"note": "x" * METADATA_KEPT_BYTES})
    recent.keep_file(small)
    recent.keep_file(large)
    assert recent.take("t", "f", 40) == small
    assert recent.take("t", "g", 40) is None
