"""The allocator's thresholds (:mod:`file_service.allocator`): with them, the blocks each
chunk of a download makes in the event loop's thread reuse the pages the chunk before
freed instead of faulting in fresh ones."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

#: In a process of its own (the thresholds are the whole process's): the blocks a
#: download makes for each chunk, alive together, then freed; the page faults of 100
#: chunks after two to warm up.
_CHUNKS = """
import resource, sys
from file_service import wire
from file_service.allocator import keep_freed_memory
from file_service.storage.local import LOCAL_CHUNK_SIZE

if sys.argv[1] == "keep":
    assert keep_freed_memory()

def send(count: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for index in range(count):
        chunk = bytes([index % 256]) * LOCAL_CHUNK_SIZE  # what a read yields
        message = wire.serialize_download_response(chunk)  # framed for gRPC
        sent = bytearray(message)  # gRPC's copy
        assert len(sent) > LOCAL_CHUNK_SIZE
        del chunk, message, sent
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

send(2)
print(send(100))
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHUNKS, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="thresholds of glibc's malloc")
def test_each_chunk_reuses_the_pages_the_previous_one_freed() -> None:
    # Without the thresholds glibc gives the heap's top back after every chunk here: about
    # 740 faults a chunk (its three blocks of a MiB, 256 pages each).
    assert _faults("keep") < 100
