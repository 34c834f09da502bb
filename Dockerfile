# syntax=docker/dockerfile:1
# trainserve images: the HTTP service (default target) and the training command (target `train`).
#
#   docker build -t trainserve:cpu .                                  CPU-only torch, the default
#   docker build -t trainserve:cuda --build-arg VARIANT=cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker build -t trainserve-train:cpu --target train .             python -m training, writes to /models
#
# deploy/README.md lists every build argument and run-time setting.

# Pinned to the patch release; pin the digest too where your registry policy asks for it, e.g.
# --build-arg PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
# python: the base every stage shares, with the unprivileged user the service and training run as.
FROM ${PYTHON_IMAGE} AS python
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it and volume permissions are predictable.
RUN groupadd --system --gid 10001 trainserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin trainserve

# ---------------------------------------------------------------------------------------------------------
# torch: a virtual environment holding PyTorch, the one large layer; later stages add to a copy of it.
FROM python AS torch
# cpu or cuda. Only checked against the torch that gets installed, so a mismatch fails the build here.
ARG VARIANT=cpu
# Where torch comes from. The default is PyTorch's CPU-only index (about 200 MB instead of several GB of
# CUDA libraries). For VARIANT=cuda name a CUDA index (https://download.pytorch.org/whl/cu128), or leave it
# empty for PyPI, whose Linux wheels are CUDA builds.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty: the newest torch the index offers. Set it (2.7.1, 2.7.1+cpu) for a reproducible build.
ARG TORCH_VERSION=""
# Empty by default. A build that cannot reach the public indexes directly mounts its CA bundle and a folder
# of wheels into the build (buildah bud -v HOST:PATH) and names them here; pip reads them from the
# environment, and ignores them while they are empty.
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The version is the TORCH_VERSION build argument: empty takes the newest, set it to pin.
# hadolint ignore=DL3013
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch${TORCH_VERSION:+==$TORCH_VERSION}" \
 && built=$(python -c 'import torch; print("cuda" if torch.version.cuda else "cpu")') \
 && if [ "$built" != "$VARIANT" ]; then \
      echo "VARIANT=$VARIANT but the torch installed is a $built build: set TORCH_INDEX_URL to match" >&2; \
      exit 1; \
    fi

# ---------------------------------------------------------------------------------------------------------
# serve-deps / train-deps: the project's dependencies for one extra, read from pyproject.toml, so that
# changing code does not reinstall them. torch stays the build installed above.
FROM torch AS serve-deps
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
COPY pyproject.toml deploy/docker/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml serve > /tmp/build/requirements.txt \
 && python -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > /tmp/build/torch.txt \
 && pip install -r /tmp/build/requirements.txt -c /tmp/build/torch.txt \
 && rm -rf /tmp/build

FROM torch AS train-deps
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
COPY pyproject.toml deploy/docker/requirements.py /tmp/build/
# torchvision must be the build that matches torch, so it comes from torch's index, held to torch's version.
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml train > /tmp/build/requirements.txt \
 && python -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > /tmp/build/torch.txt \
 && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} -c /tmp/build/torch.txt torchvision \
 && pip install -r /tmp/build/requirements.txt -c /tmp/build/torch.txt \
 && rm -rf /tmp/build

# ---------------------------------------------------------------------------------------------------------
# train: `python -m training`. Mount the data at /data and a writable volume at /models, e.g.
#   docker run --rm -v "$PWD/data:/data:ro" -v trainserve-models:/models trainserve-train:cpu
FROM python AS train
COPY --from=train-deps /opt/venv /opt/venv
WORKDIR /app
COPY training training
COPY service service
# Owned by the training user, so fresh named volumes mounted here are writable.
RUN install -d -o 10001 -g 10001 /models /data /runs
USER 10001:10001
ENV PYTHONPATH=/app
# The folders are part of the entry point, so `docker run IMAGE --epochs 3` adds to them (a later flag wins).
ENTRYPOINT ["python", "-m", "training", "--data-dir", "/data", "--out", "/models", "--run-dir", "/runs"]

# ---------------------------------------------------------------------------------------------------------
# models: the shipped artifacts, made readable by the service's user whatever their modes in the build
# context (an export's folder is private, 0700, like the temporary folder it was renamed from).
FROM python AS models
COPY models /models
RUN chmod -R a+rX,go-w /models

# ---------------------------------------------------------------------------------------------------------
# serve (default): the launcher (model runtime + granian HTTP front end) serving every model under /models. Only the serving dependencies, the service
# package and the shipped models; mount a volume on /models to serve others.
FROM python AS serve
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="trainserve" \
      org.opencontainers.image.description="Image classifier over HTTP (Open Inference Protocol v2), ${VARIANT}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=serve-deps /opt/venv /opt/venv
WORKDIR /app
COPY service service
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.py ./
COPY --from=models /models /models
# /run/trainserve holds the run-time files: the metrics directory (the launcher empties it at start) and
# the model runtime's sockets (XDG_RUNTIME_DIR). Writable like /tmp; under a read-only root filesystem
# mount a volume there (Kubernetes: an emptyDir).
RUN install -d -m 1777 /run/trainserve
ENV PYTHONPATH=/app \
    XDG_RUNTIME_DIR=/run/trainserve \
    TRAINSERVE_MODEL_DIR=/models \
    TRAINSERVE_BIND=0.0.0.0:8000 \
    TRAINSERVE_GRPC_BIND=0.0.0.0:8001 \
    TRAINSERVE_LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/run/trainserve/metrics \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# HTTP, and the Open Inference Protocol's gRPC service (Triton's port).
EXPOSE 8000 8001
# Ready (models loaded and warmed), not merely alive: compose's depends_on waits for it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["/app/entrypoint.sh"]
