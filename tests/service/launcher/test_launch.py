"""The launcher's decisions: how many runtimes on which devices, the front end's command line, and the
metrics folder it prepares and keeps clean."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.config import ConfigError, ServiceConfig
from service.launcher.launch import (
    GUNICORN_CONF,
    front_end_command,
    prepare_metrics_dir,
    runtime_devices,
    sweep_dead_processes,
)
from service.launcher.preflight import preflight


def test_runtimes_per_device():
    assert runtime_devices(ServiceConfig(device="cpu")) == ["cpu"]
    assert runtime_devices(ServiceConfig(device="cpu", runtimes=2)) == ["cpu", "cpu"]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = [f"cuda:{i}" for i in range(gpus)] if gpus else ["cpu"]
    assert runtime_devices(ServiceConfig(device="auto")) == expected
    if gpus:
        assert runtime_devices(ServiceConfig(device=f"cuda:{gpus - 1}", runtimes=3)) == [f"cuda:{gpus - 1}"]


def test_a_gpu_that_is_not_there_is_a_setting_to_fix():
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=rf"TRAINSERVE_DEVICE=cuda:{gpus} but torch sees .*: (set|choose)"):
        runtime_devices(ServiceConfig(device=f"cuda:{gpus}"))
    if not gpus:
        with pytest.raises(ConfigError, match="set TRAINSERVE_DEVICE=cpu"):
            runtime_devices(ServiceConfig(device="cuda"))


def test_grpc_front_ends_follow_the_http_workers_except_on_a_unix_socket(tmp_path):
    assert ServiceConfig(workers=3).grpc_worker_count == 3
    assert ServiceConfig(workers=3, grpc_workers=1).grpc_worker_count == 1
    assert ServiceConfig().grpc_worker_count == ServiceConfig().worker_count
    on_socket = ServiceConfig(workers=3, grpc_bind=f"unix:{tmp_path}/grpc.sock")
    assert on_socket.grpc_worker_count == 1
    models = Path(__file__).resolve().parents[3] / "models"
    with pytest.raises(ConfigError, match="only one process can serve a unix socket"):
        preflight(on_socket.replace(grpc_workers=2, model_dir=models), ["cpu"])
    preflight(on_socket.replace(model_dir=models), ["cpu"])  # one process: fine


def test_granian_serves_the_asgi_factory_with_bounded_header_reads(tmp_path):
    config = ServiceConfig(bind="127.0.0.1:9000", workers=3, threads=16, graceful_timeout_s=7,
                           loop_requests=500)
    cmd = front_end_command(config, tmp_path)
    assert cmd[:3] == [sys.executable, "-m", "granian"]
    flags = dict(itertools.pairwise(cmd))  # each flag -> the word after it
    assert flags["--interface"] == "asgi" and flags["--factory"] == "service.web.asgi:create_asgi_app"
    assert (flags["--host"], flags["--port"], flags["--workers"], flags["--backpressure"]) == \
        ("127.0.0.1", "9000", "3", "500")
    assert flags["--http1-header-read-timeout"] == "5000" and flags["--workers-kill-timeout"] == "7"
    assert "--respawn-failed-workers" in cmd
    assert Path(flags["--log-config"]).is_file()
    unix = front_end_command(ServiceConfig(bind="unix:/tmp/ts.sock"), tmp_path)
    assert unix[unix.index("--uds") + 1] == "/tmp/ts.sock"


def test_gunicorn_runs_the_same_factory_with_its_config(tmp_path):
    cmd = front_end_command(ServiceConfig(server="gunicorn"), tmp_path)
    assert cmd == [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "service.web.app:create_app()"]
    check = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--check-config",
                            "service.web.app:create_app()"], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "TRAINSERVE_RUNTIME_SOCKETS": str(tmp_path / "x")})
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_metrics_folder_is_wiped_and_dead_processes_gauges_swept(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"stale")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    assert prepare_metrics_dir(env, tmp_path) == folder and not any(folder.iterdir())
    assert prepare_metrics_dir({}, tmp_path) == tmp_path / "metrics"
    # Live gauge files of a process that has exited and of one that runs (this one).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for pid in (dead, os.getpid()):
        (folder / f"gauge_livesum_{pid}.db").write_bytes(b"")
    sweep_dead_processes(folder)
    assert sorted(p.name for p in folder.iterdir()) == [f"gauge_livesum_{os.getpid()}.db"]
