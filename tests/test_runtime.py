"""Runtime switches: precision resolution and the CPU allocator setting."""

from __future__ import annotations

import platform

import pytest
import torch

from histosam.inference import runtime


def test_precision_resolution():
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("auto", torch.device("cpu")) == ("bf16" if runtime.cpu_has_fast_bf16()
                                                                       else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.resolve_precision("fp16", torch.device("cpu"))


def test_keep_freed_memory_opt_out_and_glibc(monkeypatch):
    runtime.keep_freed_memory.cache_clear()
    monkeypatch.setenv("HISTOSAM_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False
    runtime.keep_freed_memory.cache_clear()
    monkeypatch.delenv("HISTOSAM_KEEP_FREED_MEMORY")
    assert runtime.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
    runtime.keep_freed_memory.cache_clear()


def test_prepare_for_inference_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    model = runtime.prepare_for_inference(torch.nn.Conv2d(3, 4, 3).train(), torch.device("cpu"))
    assert not model.training and calls == [1]
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


_FAULTS_SCRIPT = """
import resource, sys, torch
from histosam.inference import runtime
print(runtime.keep_freed_memory())
faults = []
for _ in range(4):  # decoder-like: 38, 151 and 302 MB buffers, all above glibc's largest mmap threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.nn.functional.interpolate(torch.ones(1, 64, 384, 384), scale_factor=2)
    float(torch.cat([y, y], 1).sum())
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
runtime.release_freed_memory()
print(min(faults[1:]))
"""


@pytest.mark.parametrize("keep", ["1", "0"])
def test_freed_memory_is_reused(keep):
    """A fresh process (glibc's heap state matters): without the setting every forward-like call faults its
    big buffers in anew (~120k pages); with it, later calls fault none, or, depending on the heap layout of the
    run (address-space randomisation), one 144 MiB buffer (36,864 pages): at most a third."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HISTOSAM_KEEP_FREED_MEMORY=keep, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    active, min_faults = out[0] == "True", int(out[1])
    if keep == "1" and not active:
        pytest.skip("not glibc")
    assert active is (keep == "1")
    assert (min_faults < 60_000) is active, min_faults


def test_release_freed_memory_respects_the_budget(monkeypatch):
    assert runtime.resident_mb() > 0
    calls = []
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError))
    monkeypatch.setattr(runtime, "resident_mb", lambda: 100.0)
    runtime.release_freed_memory(above_mb=2048)
    assert calls == []  # under budget: nothing handed back
    runtime.release_freed_memory(above_mb=50)
    runtime.release_freed_memory()
    assert len(calls) == 2  # over budget, and unconditional
