"""The allocator setting: forward passes stop faulting in fresh pages for activations; env settings win."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from service.contract.allocator import keep_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")

# Batch-64 passes of the default net in a fresh process (the setting is process-wide): page faults per pass.
PASSES = """
import json, resource, sys, torch
from service.contract.allocator import keep_freed_memory
from training.nets import build_net
torch.set_num_threads(1)
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
net = build_net("cnn", (1, 28, 28), 10).eval().to(memory_format=torch.channels_last)
x = torch.rand(64, 1, 28, 28).to(memory_format=torch.channels_last)
with torch.inference_mode():
    for _ in range(20):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        net(x)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _passes(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PASSES, mode], capture_output=True, text=True, timeout=120,
                          check=True)
    return json.loads(done.stdout)


def test_forward_passes_reuse_freed_memory_instead_of_faulting_in_fresh_pages() -> None:
    default, kept = _passes("default"), _passes("keep")
    assert default["faults"] >= 20  # glibc's defaults: the activations' pages come back from the kernel
    assert kept["kept"] is True
    assert kept["faults"] <= 5


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_an_operators_malloc_settings_are_left_alone(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    value = "glibc.malloc.trim_threshold=1048576" if variable == "GLIBC_TUNABLES" else "1048576"
    monkeypatch.setenv(variable, value)
    assert keep_freed_memory() is False
