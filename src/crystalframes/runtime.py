"""Process-wide settings for fast CPU runs.

PyTorch's CPU tensors come straight from the C library's ``malloc``. A forward pass of these
models allocates and frees dozens of tensors of 1-40 MB (per-edge features of a batch), and
glibc's default policy returns freed memory at the top of the heap to the operating system as
soon as more than twice the largest recently freed block lies free ("trimming"). The next pass
then gets fresh pages, and every page is zero-filled by the kernel on first touch. How often
depends on glibc's dynamic thresholds and varies from process to process: on the 2-core
development VM, inference of the JARVIS-preset eComFormer over 256 MP structures took 47 to 1,176
page faults per structure and up to 24% of its time in the kernel; with the settings below, none
(``python3 benchmarks/ecomformer_speed.py --threads 1`` with and without ``--default-malloc``).
(``jemalloc`` or ``tcmalloc`` via ``LD_PRELOAD`` do the same job where they are installed.)

:func:`keep_freed_memory` is called by the ``crystalframes`` command, the trainer and the
benchmarks; library users may call it themselves. The cost: the process's resident memory stays
near its peak instead of shrinking between passes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed memory at the top of the heap
TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps
MMAP_THRESHOLD = 32 << 20  # glibc's maximum: larger blocks still get their own mapping
OPT_OUT = "CRYSTALFRAMES_KEEP_FREED_MEMORY"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (see the module docstring).

    Returns True when the settings are in effect; False off Linux/glibc, or when the environment
    variable ``CRYSTALFRAMES_KEEP_FREED_MEMORY=0`` opts out. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; fixing the mmap threshold also stops glibc from adjusting
    # the trim threshold dynamically.
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    _applied = ok
    return ok
