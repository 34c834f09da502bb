"""Processes and devices: torchrun's environment, device names, and DDP on two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.config import ConfigError
from training.distributed import SINGLE, World, resolve_device, world_from_env

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_world_from_torchrun_environment() -> None:
    assert world_from_env({}) == SINGLE and SINGLE.is_main and not SINGLE.distributed
    world = world_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert world == World(rank=3, local_rank=1, size=4) and world.distributed and not world.is_main
    with pytest.raises(ConfigError, match="integers"):
        world_from_env({"RANK": "x"})


def test_cpu_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.cuda
@needs_cuda
def test_cuda_devices_follow_the_local_rank() -> None:
    assert resolve_device("cuda", World(rank=0, local_rank=0, size=1)) == torch.device("cuda:0")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="only"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.slow
def test_ddp_two_cpu_processes(repo_root: Path, mnist_slice: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training", "--data-dir", str(mnist_slice), "--no-download", "--device", "cpu",
           "--epochs", "2", "--batch-size", "100", "--lr", "0.05", "--val-fraction", "0.1",
           "--eval-batch-size", "100",
           "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs")]
    result = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "models" / "mnist-cnn").iterdir()] == ["1"]  # rank 0 alone exports
    assert result.stderr.count("epoch  2/2") == 1  # and logs
    (run_folder,) = (tmp_path / "runs").iterdir()
    epochs = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()][:2]
    assert [e["train_examples"] for e in epochs] == [900, 900]  # two shares of 450 make one epoch
    manifest = json.loads((tmp_path / "models" / "mnist-cnn" / "1" / "manifest.json").read_text())
    assert manifest["metrics"]["test_accuracy"] > 0.2  # chance is 0.1: the processes learned together


@pytest.mark.slow
@pytest.mark.cuda
@needs_cuda
def test_dry_run_on_cuda(repo_root: Path, mnist_slice: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    cmd = [sys.executable, "-m", "training", "--data-dir", str(mnist_slice), "--no-download", "--dry-run",
           "--device", "cuda", "--workers", "2", "--run-dir", str(tmp_path)]
    result = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    (manifest,) = tmp_path.glob("*/models/mnist-cnn/1/manifest.json")
    assert json.loads(manifest.read_text())["extra"]["device"] == "cuda:0"
