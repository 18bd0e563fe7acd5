"""What one file-service process remembers of the uploads its requests moved, so the next
request of an upload in many need not work it out again.

Both memories are hints, never the truth: each entry is for one offset of one upload, is
taken (removed) by the request that continues the upload from that offset, and is kept
again only once that request's part is recorded — so a failed or racing request never
leaves one behind, and a request at another offset (a part stored by another process, an
upload sent back after a crash of the machine) finds none and does the work.

- :class:`RunningHashes`: the SHA-256 of an upload's bytes so far — its composition need
  not hash every byte again.
- :class:`RecentUploads`: the upload's file as its last request here left it — the next
  request need not read its row before its bytes. What it holds that can change (the
  state, the offset) is checked again where it matters: the blob's size under the
  writer's lock, and the conditional update that records the part, which refuses a part
  of an upload that is no longer pending at that offset or has expired.

Each keeps at most ``limit`` uploads, the least recently continued forgotten first.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Final, Generic, TypeVar

from file_service.models import FileState, StoredFile
from file_service.storage import Hash

#: How many uploads each memory of a process holds.
UPLOADS_REMEMBERED: Final = 1000
#: The largest metadata (its JSON text, bytes) of an upload :class:`RecentUploads` keeps:
#: an entry is then at most a few KiB (a tus client may send ~8 KiB of metadata, a
#: backend's CreateUploadUrl up to the message size), so 1000 of them stay within a few
#: MiB; an upload with more reads its row, as every upload did before.
METADATA_KEPT_BYTES: Final = 2048

V = TypeVar("V")


class PerUpload(Generic[V]):
    """One value per upload, for one offset of it (see the module docstring)."""

    def __init__(self, limit: int = UPLOADS_REMEMBERED) -> None:
        self._limit = limit
        self._entries: OrderedDict[tuple[str, str], tuple[int, V]] = OrderedDict()

    def take(self, tenant_id: str, file_id: str, offset: int) -> V | None:
        """The value kept for the upload at ``offset``, removed; None if there is none (an
        entry for another offset is removed too)."""
        entry = self._entries.pop((tenant_id, file_id), None)
        if entry is None or entry[0] != offset:
            return None
        return entry[1]

    def forget(self, tenant_id: str, file_id: str) -> None:
        """Drop what is kept for the upload."""
        self._entries.pop((tenant_id, file_id), None)

    def keep(self, tenant_id: str, file_id: str, offset: int, value: V) -> None:
        """Keep ``value`` for the upload at ``offset`` (replacing what was kept)."""
        self._entries[(tenant_id, file_id)] = (offset, value)
        self._entries.move_to_end((tenant_id, file_id))
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)


class RunningHashes(PerUpload[Hash]):
    """The SHA-256 of the bytes of each upload so far, for the uploads whose parts this
    process stored in order from the start — what lets a resumable upload in many
    requests skip hashing every byte again when they are composed (a part that arrives
    elsewhere just means the composition hashes)."""

    def take(self, tenant_id: str, file_id: str, offset: int) -> Hash | None:
        """The running hash of the upload through ``offset`` (a new one at 0), or None."""
        kept = super().take(tenant_id, file_id, offset)
        return hashlib.sha256() if offset == 0 else kept


class RecentUploads(PerUpload[StoredFile]):
    """Each pending upload as the last request here that moved it left it."""

    def keep_file(self, file: StoredFile) -> None:
        """Keep ``file`` if it is an upload that takes more bytes and whose metadata is
        small (:data:`METADATA_KEPT_BYTES`); else forget it."""
        if (
            file.state is FileState.PENDING
            and file.upload_offset < file.size
            and len(json.dumps(file.metadata, default=str)) <= METADATA_KEPT_BYTES
        ):
            self.keep(file.tenant_id, file.id, file.upload_offset, file)
        else:
            self.forget(file.tenant_id, file.id)
