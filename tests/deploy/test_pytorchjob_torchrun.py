"""The PyTorchJob component's torchrun command, run for real: a Master and a Worker "node" on this host."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="the training extra (pip install -e .[train])")


def operator_env(spec: dict[str, Any], role: str, port: int) -> dict[str, str]:
    """What the Training Operator sets on a replica's container, for a Master and one Worker on this host."""
    rank = "0" if role == "Master" else "1"
    return {"PET_NNODES": "2", "PET_NPROC_PER_NODE": spec["nprocPerNode"], "PET_NODE_RANK": rank,
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": rank, "PYTHONUNBUFFERED": "1"}


def expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) references replaced as the kubelet does in a container's command."""
    return re.sub(r"\$\((\w+)\)", lambda found: env[found[1]], text)


@pytest.mark.slow
def test_the_pytorchjob_command_trains_across_two_nodes(kit: Any, tmp_path: Path, mnist_slice: Path) -> None:
    """The Master's and the Worker's rendered commands, run as two "nodes" on this host with the variables the
    operator sets (kubelet-style $(VAR) expansion): they rendezvous, train together, and the Master alone
    publishes the artifact."""
    spec = kit.find(kit.compose(tmp_path / "overlay", "cpu", ["pytorchjob"]), "PyTorchJob")["spec"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for role, replica in spec["pytorchReplicaSpecs"].items():
            (main,) = replica["template"]["spec"]["containers"]
            env = operator_env(spec, role, port)
            command = [expand(part, env) for part in main["command"]]
            assert command[0] == "torchrun"
            # The image's flags, then this host's folders and a tiny run (a later flag wins).
            argv = [sys.executable, "-m", "torch.distributed.run", *command[1:], *main["args"],
                    "--data-dir", str(mnist_slice), "--no-download", "--device", "cpu", "--threads", "1",
                    "--epochs", "1", "--batch-size", "100", "--eval-batch-size", "100",
                    "--val-fraction", "0.1",
                    "--out", str(tmp_path / role / "models"), "--run-dir", str(tmp_path / role / "runs")]
            procs[role] = subprocess.Popen(
                argv, cwd=kit.repo, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env={**os.environ, **env, "PYTHONPATH": str(kit.repo), "OMP_NUM_THREADS": "1",
                     "GLOO_SOCKET_IFNAME": "lo"})
        logs = {role: proc.communicate(timeout=280)[0] for role, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    for role, proc in procs.items():
        assert proc.returncode == 0, f"{role}:\n{logs[role][-3000:]}"
    assert (tmp_path / "Master" / "models" / "mnist-cnn" / "1" / "manifest.json").is_file()
    assert not (tmp_path / "Worker" / "models").exists(), "only global rank 0 publishes"
    assert "test accuracy" in logs["Master"] and "test accuracy" not in logs["Worker"]
