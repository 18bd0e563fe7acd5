"""How much freed memory the C allocator keeps instead of handing it back to the kernel.

A gRPC download sends a file in messages of a chunk (1 MiB) each, and every chunk makes
new blocks of about that size in the event loop's thread — the message framed for gRPC,
gRPC's own copy of it — freed once it is sent. glibc's ``malloc`` takes blocks that large
from the top of its heap and gives the top back to the kernel (trims it) as soon as more
than about twice the largest block freed so far lies free there (its thresholds adjust
themselves): about 2 MiB, which a chunk's blocks reach or not depending on what else
sits in the heap. When they do, every chunk's blocks are fresh pages: a fault for each
4 KiB page, the page zeroed (and, on a virtual machine that reports free memory to its
host, faulted in again by the host). In the benchmark that is 0.6-0.9 CPU-seconds more
per GB downloaded, in some downloads and not in others (1.7-1.8 CPU-s per GB instead of
0.8-1.0; about 460,000 page faults per GB in the event loop's thread instead of about
1,000).

:func:`keep_freed_memory` fixes the thresholds instead: blocks smaller than
:data:`MMAP_THRESHOLD` come from the heap, and a heap keeps up to :data:`TRIM_THRESHOLD`
free at its top before it gives memory back. The cost: each of glibc's heaps (one per
thread that allocates at the time, at most eight per CPU) may hold that much memory it
does not use.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from typing import Final

log = logging.getLogger(__name__)

#: Blocks this large or larger get pages of their own (``mmap``), given back when freed.
MMAP_THRESHOLD: Final = 4 << 20
#: Free memory at the top of a heap beyond which the heap gives it back to the kernel.
TRIM_THRESHOLD: Final = 8 << 20
#: ``mallopt``'s parameters (``malloc.h``).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3


def keep_freed_memory() -> bool:
    """Set glibc's ``malloc`` thresholds to :data:`MMAP_THRESHOLD` and
    :data:`TRIM_THRESHOLD` (for the whole process); False, changing nothing, where the C
    library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done: bool = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.warning("could not set the allocator's thresholds")
    return done
