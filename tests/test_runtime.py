"""crystalframes.runtime: glibc keeps freed memory, so repeated passes stop page-faulting."""

import os
import subprocess
import sys

import pytest

# A fresh process runs two untimed and two counted eval passes of the JARVIS-preset SPFrame
# model over 64 embedded MP structures and prints the minor page faults of the counted passes.
# With glibc's default policy the freed per-edge tensors go back to the kernel between layers
# and passes, and every reuse may fault them in again.
PROBE = """
import resource, torch
from crystalframes.runtime import keep_freed_memory
applied = keep_freed_memory()
from crystalframes.data import load_dataset
from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.models import build_model
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model("ecomformer:spframe_quaternion@jarvis_formation_energy").eval()
batch = collate([build_graph(c, model.graph_settings) for c in load_dataset("mp_2018_demo").crystals[:64]])
with torch.no_grad():
    for _ in range(2):
        model(batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        model(batch)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# After keep_freed_memory a 20 MB block comes from the heap (below the fixed 32 MB mmap
# threshold) and stays there when freed (trim threshold 1 GiB): the program break ends >= 20 MB
# higher. Deterministic, unlike glibc's default policy, whose dynamic thresholds make the fault
# count of the default run vary between 0 and 200,000 from one process to the next.
HEAP_PROBE = """
import ctypes, ctypes.util, torch
from crystalframes.runtime import keep_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = (ctypes.c_ssize_t,)
applied = keep_freed_memory()
before = libc.sbrk(0)
x = torch.ones(5 << 20)
del x
print(applied, libc.sbrk(0) - before)
"""


def _run(code: str, opt_out: bool = False) -> tuple[bool, int]:
    env = dict(os.environ, CRYSTALFRAMES_KEEP_FREED_MEMORY="0" if opt_out else "1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    applied, number = out.stdout.split()
    return applied == "True", int(number)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux-only")


@linux_only
def test_freed_blocks_stay_in_the_heap():
    applied, grown = _run(HEAP_PROBE)
    if not applied:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert grown >= 20 << 20, grown
    assert _run(HEAP_PROBE, opt_out=True)[0] is False  # the opt-out is honoured


@linux_only
def test_repeated_model_passes_do_not_page_fault():
    """Measured: 0-2,900 faults per two passes with the setting; 0-206,000 without it."""
    applied, faults = _run(PROBE)
    if not applied:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert faults < 10_000, faults


def test_keep_freed_memory_is_idempotent(monkeypatch):
    """The settings are applied once per process; later calls return the first answer without
    touching the C library again."""
    import ctypes

    from crystalframes import runtime

    loads = []
    real_cdll = ctypes.CDLL
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *a, **k: loads.append(a) or real_cdll(*a, **k))
    monkeypatch.setenv(runtime.OPT_OUT, "1")
    first = runtime.keep_freed_memory()
    assert runtime.keep_freed_memory() is first
    assert len(loads) == (1 if sys.platform.startswith("linux") else 0)
