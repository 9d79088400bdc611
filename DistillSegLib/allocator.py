"""glibc's allocator settings, applied when a ``distillseg`` process starts.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold
(dynamic, at most 32 MiB on 64-bit Linux) with a fresh ``mmap`` and hands them back with
``munmap`` when freed, and it returns the top of the heap to the kernel above its trim
threshold (128 KiB by default). A teacher or student allocating and freeing activation
tensors of tens to hundreds of MiB at every slice or window therefore makes the kernel map,
zero and unmap the same memory again and again: LiteMedSAM on STS_019 made 15.4 M minor page
faults and spent more time in the kernel than in user code. Raising both thresholds keeps
those blocks in the process for reuse (glibc ``mallopt(3)``: ``M_MMAP_THRESHOLD``,
``M_TRIM_THRESHOLD``; the same as the ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``
environment variables, which glibc reads only when a process starts).

:func:`tune_allocator` applies them to the running process with ``mallopt`` (the command
line, the demo, training and the warm engine call it first) and puts them into the
environment so that child processes (data loaders, ``torchrun`` workers, the module's
engine) start with them. A variable already set by the user wins;
``DISTILLSEG_MALLOC_TUNING=0`` leaves glibc's defaults. Elsewhere (macOS, Windows, musl) it
does nothing. Measured in ``benchmarks/allocator.py`` (docs/engine.md, "Speed").

The price is that freed memory stays in the process: :func:`release_free_memory`
(``malloc_trim``) hands it back after the large, rare phases (teacher tuning, each teacher
round, each arm of the demo), and :func:`peak_rss_bytes` / :func:`rss_bytes` report the
process's memory for the training log (``benchmarks/memory.py`` measures whole runs).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

SWITCH_ENV = "DISTILLSEG_MALLOC_TUNING"
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
# glibc malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused; larger ones are mmapped.
DEFAULT_MMAP_THRESHOLD = 512 << 20
# Free memory at the top of the heap beyond this is returned to the kernel.
DEFAULT_TRIM_THRESHOLD = 1 << 30

_applied: dict[str, int] | None = None


def tune_allocator() -> dict[str, int]:
    """Apply the thresholds to this process (once) and export them for child processes.

    Returns the values applied (``{}`` where the C library is not glibc).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    libc = _glibc()
    if libc is None or os.environ.get(SWITCH_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return _applied
    for env, option, default in ((MMAP_ENV, M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD),
                                 (TRIM_ENV, M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)):
        try:
            value = int(os.environ.get(env, default))
        except ValueError:
            value = default
        if value >= 0 and libc.mallopt(option, value) == 1:
            os.environ.setdefault(env, str(value))
            _applied[env] = value
    return _applied


@functools.lru_cache(maxsize=None)
def _glibc():
    """glibc through ctypes, or None (another platform or C library)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    return libc


def release_free_memory() -> bool:
    """Give the heap's free memory back to the kernel (glibc ``malloc_trim(0)``).

    With the thresholds above, memory freed after a teacher round or teacher tuning stays
    in the process and its RSS keeps the high-water mark of the largest round; trimming
    at those points (not at every step: the next step would map it again) brings RSS back
    to what is in use. True where it ran and released something; a no-op elsewhere
    (macOS, Windows, musl).
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size in bytes (None where it cannot be read).

    Linux: ``VmHWM`` of ``/proc/self/status`` (up to date, unlike ``ru_maxrss``); macOS:
    ``getrusage`` (``ru_maxrss``, bytes); Windows: the peak working set (psutil).
    """
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return int(psutil.Process().memory_info().peak_wset)
        except (ImportError, AttributeError):
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int | None:
    """This process's resident set size now, in bytes (psutil; None without it)."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)
