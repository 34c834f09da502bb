"""Serve a trainserve artifact with TorchServe, to measure trainserve against it side by side.

    pip install torchserve torch-model-archiver   # and Java 11+: apt-get install default-jre-headless
    python scripts/torchserve_peer.py --model-dir models --port 8080 &
    python scripts/bench_serve.py --start --naive --payloads png \
        --peer torchserve=http://127.0.0.1:8080/predictions/mnist-cnn
    kill %1

It packs the newest version of the model (its model.pt, manifest and scripts/torchserve_handler.py) into a
model archive in a temporary folder and runs TorchServe in the foreground on 127.0.0.1 with the issue's
setup: dynamic batching (``--batch-size`` 32, ``--max-batch-delay-ms`` 5), ``--workers`` 2 (one per core)
with one torch thread each, token authorisation off, logging at WARN (no line per request), no metrics
collection. The handler decodes each image as the naive app does; POST a PNG to /predictions/<model>.
Stop it with Ctrl-C or SIGTERM: TorchServe is stopped with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.contract.manifest import artifact_dirs  # noqa: E402

LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR"><PatternLayout pattern="%d %p %c: %m%n"/></Console>
  </Appenders>
  <Loggers><Root level="warn"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
"""


def _tool(name: str) -> str:
    """A command from this Python's environment (run without activating it) or from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found: pip install torchserve torch-model-archiver, and a Java 11+ runtime "
                 "(apt-get install default-jre-headless)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"), help="(default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name (default: the first one)")
    parser.add_argument("--port", type=int, default=8080,
                        help="inference port; management and metrics use the next two (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="(default: one per core)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--max-batch-delay-ms", type=int, default=5, help="(default: %(default)s)")
    args = parser.parse_args()
    torchserve, archiver, _ = (_tool(name) for name in ("torchserve", "torch-model-archiver", "java"))

    folders = [d for d in artifact_dirs(args.model_dir) if args.model in (None, d.parent.name)]
    if not folders:
        sys.exit(f"no artifact{f' of {args.model}' if args.model else ''} under {args.model_dir}")
    folder = folders[-1]
    name = folder.parent.name
    with tempfile.TemporaryDirectory(prefix="torchserve-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        subprocess.run([archiver, "--model-name", name, "--version", folder.name,
                        "--serialized-file", str(folder / "model.pt"),
                        "--handler", str(REPO / "scripts" / "torchserve_handler.py"),
                        "--extra-files", str(folder / "manifest.json"), "--export-path", str(store)],
                       check=True)
        (Path(tmp) / "log4j2.xml").write_text(LOG4J)
        models = {name: {folder.name: {"defaultVersion": True, "marName": f"{name}.mar",
                                       "minWorkers": args.workers, "maxWorkers": args.workers,
                                       "batchSize": args.batch_size, "maxBatchDelay": args.max_batch_delay_ms,
                                       "responseTimeout": 120}}}
        config = Path(tmp) / "config.properties"
        config.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{args.port}",
            f"management_address=http://127.0.0.1:{args.port + 1}",
            f"metrics_address=http://127.0.0.1:{args.port + 2}",
            f"model_store={store}",
            "load_models=all",
            f"models={json.dumps(models)}",
            "disable_token_authorization=true",
            "enable_model_api=false",
            "disable_system_metrics=true",
            "async_logging=true",
            f"vmargs=-Dlog4j.configurationFile=file://{Path(tmp) / 'log4j2.xml'}",
        ]) + "\n")
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        server = subprocess.Popen([torchserve, "--start", "--foreground", "--ncs", "--ts-config",
                                   str(config), "--model-store", str(store)], env=env, cwd=tmp)

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        print(f"TorchServe: POST images to http://127.0.0.1:{args.port}/predictions/{name}", flush=True)
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            subprocess.run([torchserve, "--stop"], env=env, cwd=tmp, check=False)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
