# trainserve: every target creates the virtual environment first if it is missing, with the extras it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where datasets live. On a machine with no network, put the MNIST files in $(DATA_DIR)/mnist/.
# A checkout with ../shared/datasets beside it (the team's machines and CI) uses that copy.
DATA_DIR ?= $(if $(wildcard ../shared/datasets/mnist),../shared/datasets,data)
ARGS ?=
# Where torch comes from. Empty: PyPI, whose Linux torch is a CUDA build (several GB of NVIDIA libraries).
# `make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu` installs the CPU-only build instead.
TORCH_INDEX_URL ?=

.PHONY: setup train test lint serve soak chaos hot-reload bench bench-classic bench-torchserve bench-peers bench-grpc clean

# What training and serving need, and all `make setup` installs (the extras are described in pyproject.toml).
SETUP_EXTRAS := train,tensorboard,serve

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(if $(TORCH_INDEX_URL),$(PY) -m pip install --quiet torch torchvision --index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e '.[$(SETUP_EXTRAS)]'
	touch $@

# The tools a kind of target adds to set-up's, installed by its first run (again when pyproject.toml changes):
# .installed-test for make test, -lint for make lint, -bench for the load scripts. Set-up's extras are named
# again so that pip resolves the additions together with what is installed.
EXTRAS_test := test,e2e
EXTRAS_lint := lint
EXTRAS_bench := bench
$(VENV)/.installed-%: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[$(SETUP_EXTRAS),$(EXTRAS_$*)]'
	touch $@

train: setup
	$(PY) -m training --data-dir $(DATA_DIR) $(ARGS)

test: $(VENV)/.installed-test
	TRAINSERVE_DATA_DIR=$(DATA_DIR) $(PY) -m pytest $(ARGS)

# The shipped model on http://127.0.0.1:8000: the model runtime and the granian front end
# (TRAINSERVE_SERVER=gunicorn for gunicorn); every TRAINSERVE_* setting applies.
serve: setup
	$(PY) -m service

# trainserve (granian, and gunicorn beside it), TorchServe (scripts/torchserve_peer.py) and mosec
# (scripts/mosec_peer.py) on the same TorchScript file, and the naive Flask app, measured with wrk (apt-get
# install wrk), the PNG rounds of every server alternating; 3 rounds of 4 s per payload and concurrency,
# medians; results in bench-results/ (docs/benchmarks.md). Installs the `peers` extra; TorchServe needs a
# Java 11+ runtime (apt-get install default-jre-headless). ARGS='--rounds 5 --duration 8' for longer runs,
# MODEL_DIR=... for other artifacts. The service also runs once per model format (FORMATS, the
# TRAINSERVE_MODEL_FORMAT of each; FORMATS= for none), every payload against each.
MODEL_DIR ?= models
PEERS := --naive --gunicorn --torchserve --mosec
FORMATS ?= torchscript,exported,aoti
bench: $(VENV)/.installed-bench
	$(PY) -m pip install --quiet -e '.[$(SETUP_EXTRAS),bench,peers]'
	$(PY) scripts/bench_serve.py --start $(PEERS) --formats "$(FORMATS)" --model-dir $(MODEL_DIR) $(ARGS)

# The same benchmark on the pytorch/examples MNIST net (--arch classic, 11x the shipped model's cost per
# image): trained once into bench-results/classic/ (about 4 minutes on 2 cores), then served from there;
# results in bench-results/serve-classic.json.
CLASSIC := bench-results/classic
bench-classic: $(VENV)/.installed-bench
	ls $(CLASSIC)/models/*/*/manifest.json >/dev/null 2>&1 || $(PY) -m training --data-dir $(DATA_DIR) --arch classic --optimizer adam \
		--lr 1e-3 --out $(CLASSIC)/models --run-dir $(CLASSIC)/runs
	$(PY) -m pip install --quiet -e '.[$(SETUP_EXTRAS),bench,peers]'
	$(PY) scripts/bench_serve.py --start $(PEERS) --formats "$(FORMATS)" --model-dir $(CLASSIC)/models \
		--out bench-results/serve-classic.json $(ARGS)

# Only single PNGs, every server: the quick side-by-side (bench-results/serve-peers.json).
bench-peers: $(VENV)/.installed-bench
	$(PY) -m pip install --quiet -e '.[$(SETUP_EXTRAS),bench,peers]'
	$(PY) scripts/bench_serve.py --start $(PEERS) --payloads png --model-dir $(MODEL_DIR) \
		--out bench-results/serve-peers.json $(ARGS)
bench-torchserve: bench-peers

# gRPC beside HTTP on the same service: the gRPC issue's targets (bench-results/grpc.json).
bench-grpc: $(VENV)/.installed-bench
	$(PY) scripts/bench_grpc.py --model-dir $(MODEL_DIR) $(ARGS)

# A bounded soak (not in CI): capacity, then twice the concurrency the service holds for SOAK_SECONDS, with
# status counts, p50/p99 and every process's RSS at start and end (docs/operations.md; needs wrk).
# ARGS='--kill runtime' or '--kill worker' kills one process half-way. Results in bench-results/soak.json.
SOAK_SECONDS ?= 600
soak: $(VENV)/.installed-bench
	TRAINSERVE_DATA_DIR=$(DATA_DIR) $(PY) scripts/soak.py --seconds $(SOAK_SECONDS) $(ARGS)

# Chaos (not in CI): mixed valid traffic for CHAOS_SECONDS while HTTP workers and model runtimes are killed
# at random and good, broken and truncated versions are published into a copy of models/ and removed; prints
# every status, requests lost, the time to ready after each kill and every process's RSS at start and end
# (docs/operations.md#chaos). ARGS='--recovery 10' only kills the idle runtime. Results in bench-results/.
CHAOS_SECONDS ?= 600
chaos: $(VENV)/.installed-bench
	$(PY) scripts/chaos.py --seconds $(CHAOS_SECONDS) $(ARGS)

# Hot reload under traffic: the service on a copy of models/, wrk at 100 requests/s, a real training run
# publishing version 2; prints when it was served, every status and version wrk got (docs/serving.md).
hot-reload: $(VENV)/.installed-bench
	$(PY) scripts/hot_reload.py --data-dir $(DATA_DIR) $(ARGS)

lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache .mypy_cache build *.egg-info
