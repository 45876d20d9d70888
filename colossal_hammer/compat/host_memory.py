"""Give freed tensor memory back to the OS on a CPU host, where host memory is the training device's memory.

glibc's malloc serves a request from its heap unless it is at least the mmap threshold, and it raises that
threshold (up to 32 MiB) each time a larger mmapped block is freed. After the first big tensor is freed,
every weight, gradient and activation below 32 MiB comes from the heap, and the heap gives memory back only
from its top: freed tensors below a live one stay resident. bench/memory.py measured this at 0.3-0.9 GiB
per rank for a 350M Llama (ddp steady peak 7.47 -> 6.56 GiB, zero2 5.16 -> 4.56 GiB). A fixed 1 MiB
threshold puts every tensor of 1 MiB and more in its own mapping, returned to the OS when freed; the cost
is a page fault per page of each new large tensor, small beside the matmuls on those pages.

Only on glibc, only when the CPU layer is active (on a GPU host the device has its own allocator), and
never over a user's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 20


def return_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to 1 MiB for this process; True if they were set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
