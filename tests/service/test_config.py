"""Settings from the environment: defaults, parsing, and clear failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import ConfigError, ServiceConfig, _cpu_count


def test_defaults_match_the_documented_contract():
    config = ServiceConfig.from_env({})
    assert config.model_dir == Path("models") and config.device == "auto" and config.bind == "127.0.0.1:8000"
    assert config.worker_count >= 1 and config.torch_thread_count >= 1
    assert config.prometheus_multiproc_dir is None


def test_every_variable_is_read():
    env = {"TRAINSERVE_MODEL_DIR": "/srv/models", "TRAINSERVE_DEVICE": "cuda:1", "TRAINSERVE_HALF": "1",
           "TRAINSERVE_BIND": "0.0.0.0:9000", "TRAINSERVE_WORKERS": "3", "TRAINSERVE_THREADS": "4",
           "TRAINSERVE_TORCH_THREADS": "2", "TRAINSERVE_MAX_BATCH_SIZE": "32",
           "TRAINSERVE_MAX_BATCH_DELAY_MS": "1.5", "TRAINSERVE_MAX_QUEUE": "10",
           "TRAINSERVE_REQUEST_TIMEOUT_S": "2.5", "TRAINSERVE_MAX_REQUEST_BYTES": "2048",
           "TRAINSERVE_LOG_FORMAT": "JSON", "TRAINSERVE_LOG_LEVEL": "debug",
           "TRAINSERVE_GRACEFUL_TIMEOUT_S": "5", "PROMETHEUS_MULTIPROC_DIR": "/tmp/prom"}
    config = ServiceConfig.from_env(env)
    assert (config.model_dir, config.device, config.half, config.bind) == (
        Path("/srv/models"), "cuda:1", True, "0.0.0.0:9000")
    assert (config.worker_count, config.threads, config.torch_thread_count) == (3, 4, 2)
    assert (config.max_batch_size, config.max_batch_delay_ms, config.max_queue) == (32, 1.5, 10)
    assert (config.request_timeout_s, config.max_request_bytes, config.graceful_timeout_s) == (2.5, 2048, 5.0)
    assert (config.log_format, config.log_level, config.prometheus_multiproc_dir) == ("json", "debug",
                                                                                      Path("/tmp/prom"))


@pytest.mark.parametrize("name, value, expected", [
    ("TRAINSERVE_DEVICE", "gpu", "auto, cpu, cuda or cuda:N"),
    ("TRAINSERVE_WORKERS", "two", "integer"),
    ("TRAINSERVE_MAX_BATCH_SIZE", "0", ">= 1"),
    ("TRAINSERVE_MAX_BATCH_DELAY_MS", "-1", ">= 0"),
    ("TRAINSERVE_REQUEST_TIMEOUT_S", "0", "> 0"),
    ("TRAINSERVE_HALF", "maybe", "0 or 1"),
    ("TRAINSERVE_LOG_FORMAT", "xml", "text or json"),
    ("TRAINSERVE_BIND", "8000", "HOST:PORT"),
    ("TRAINSERVE_MODEL_FORMAT", "onnx", "auto, torchscript, exported or aoti"),
])
def test_a_bad_value_fails_with_a_message_naming_it(name, value, expected):
    with pytest.raises(ConfigError) as exc:
        ServiceConfig.from_env({name: value})
    assert expected in str(exc.value)
    assert name.removeprefix("TRAINSERVE_").lower() in str(exc.value).lower()


def test_replace_validates_too():
    with pytest.raises(ConfigError):
        ServiceConfig().replace(threads=0)


def test_cpu_count_honours_a_cgroup_v2_cpu_limit(tmp_path: Path) -> None:
    # A pod limited to 1.5 CPUs on a big node gets 2 workers, not one per node core.
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cpu_count(tmp_path) == min(2, len(os.sched_getaffinity(0)))


def test_cpu_count_honours_a_cgroup_v1_quota_and_ignores_no_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert _cpu_count(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cpu_count(tmp_path) == len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cpu_count(tmp_path) == len(os.sched_getaffinity(0))
