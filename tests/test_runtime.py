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


def test_freed_memory_is_reused_then_released():
    """With the setting on, repeated forward-like work stops page-faulting its big buffers in anew."""
    import resource

    if not runtime.keep_freed_memory():
        pytest.skip("not glibc, or opted out")

    def forward() -> float:  # decoder-like: 67, 268 and 537 MB buffers, all above glibc's largest mmap threshold
        x = torch.ones(1, 64, 512, 512)
        y = torch.nn.functional.interpolate(x, scale_factor=2)
        return float(torch.cat([y, y], 1).sum())

    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        forward()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert min(faults[1:]) < 20_000, faults  # glibc's default: ~213k faults on every call
    runtime.release_freed_memory()
