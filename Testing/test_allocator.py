"""glibc allocator settings at start-up: large tensors stay in the heap instead of being mmapped and unmapped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

PROBE = """
import ctypes, json, os, sys
sys.path.insert(0, {root!r})
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
if {tune}:
    from DistillSegLib.allocator import tune_allocator
    tune_allocator()
block = libc.malloc(200 << 20)
mmapped = libc.mallinfo2().hblkhd
libc.free(ctypes.c_void_p(block))
print(json.dumps({{"mmapped": mmapped, "env": os.environ.get("MALLOC_MMAP_THRESHOLD_")}}))
"""


def probe(tune: bool) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), tune=tune)], capture_output=True,
                         text=True, env=env, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_blocks_come_from_the_heap_after_tuning():
    assert probe(tune=False)["mmapped"] >= 200 << 20  # glibc's default: a fresh mmap per large block
    tuned = probe(tune=True)
    assert tuned["mmapped"] < 200 << 20 and int(tuned["env"]) >= 200 << 20  # and child processes inherit it
