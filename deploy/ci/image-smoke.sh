#!/usr/bin/env bash
# Build the serving image without a Docker daemon and prove that it serves:
#   1. debootstrap a minimal Debian bookworm with Python 3.11 and tag it with the Dockerfile's base name
#      (no image registry is reachable, so the base is made here, from the machine's own Debian mirror);
#   2. buildah bud --isolation chroot --pull=never, passing pip the host's CA bundle and wheel folder;
#   3. run the image with podman (runc) on 127.0.0.1, read-only root like Kubernetes, wait for /readyz and
#      the image's HEALTHCHECK, send real predictions, scrape /metrics; then remove everything it made.
#
# Usage: deploy/ci/image-smoke.sh        (as root; installs buildah, podman, debootstrap, runc if missing)
# Environment: SMOKE_WORK (scratch folder and container storage; default a fresh one under /var/tmp),
# SMOKE_KEEP=1 (keep SMOKE_WORK, its base image and the built image, for a faster rerun or a look inside),
# TRAINSERVE_DATA_DIR (holds mnist/; default ../shared/datasets).
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS

log() { printf '[image-smoke %4ss] %s\n' "$((SECONDS - started))" "$*"; }
die() { printf '[image-smoke] error: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------------------
need=()
for tool in buildah:buildah podman:podman debootstrap:debootstrap runc:runc; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if ((${#need[@]})); then
    [[ $EUID -eq 0 ]] || die "missing ${need[*]}; run as root or install them"
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
        netavark aardvark-dns fuse-overlayfs >/dev/null
fi
[[ $EUID -eq 0 ]] || die "debootstrap and the chroot build need root"

# --- private container storage and configuration -------------------------------------------------------
work=${SMOKE_WORK:-$(mktemp -d /var/tmp/trainserve-smoke.XXXXXX)}
mkdir -p "$work"
export CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
EOF

image=localhost/trainserve:smoke
container=trainserve-smoke-$$
cleanup() {
    local rc=$?
    podman rm --force --time 5 "$container" >/dev/null 2>&1 || true
    if [[ ${SMOKE_KEEP:-0} != 1 ]]; then
        buildah rm --all >/dev/null 2>&1 || true
        podman system reset --force >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
    log "done (exit $rc)"
}
trap cleanup EXIT

# --- 1. base image ---------------------------------------------------------------------------------------
base=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile | head -n1)
base=${base%%@*}  # a local image has no registry digest: tag the name, build with the name
[[ -n $base ]] || die "no 'ARG PYTHON_IMAGE=' default in the Dockerfile"

if podman image exists "$base"; then
    log "base image $base already in $work"
else
    # The mirror this machine's apt uses: no host name is written here.
    mirror=$(python3 deploy/ci/debian_mirror.py --suite bookworm) || die "no Debian bookworm mirror in apt's sources"
    log "debootstrap bookworm from $mirror"
    rootfs=$work/rootfs
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    log "importing it as $base"
    tar -C "$rootfs" -c . | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        - "$base" >/dev/null
    rm -rf "$rootfs"
fi

# --- 2. build --------------------------------------------------------------------------------------------
# The host's CA bundle and local wheel folder reach pip through build arguments (empty by default in the
# Dockerfile) and read-only bind mounts that exist only while the build runs.
# Each from pip's environment variable, else pip's configuration (make test has created .venv by now).
pip_setting() {
    local from_env=$1 key=$2
    if [[ -n ${!from_env:-} ]]; then printf '%s\n' "${!from_env}"; return; fi
    [[ -x .venv/bin/python ]] && .venv/bin/python -m pip config get "global.$key" 2>/dev/null | awk '{print $1}'
}
ca_bundle=$(pip_setting PIP_CERT cert || true)
ca_bundle=${ca_bundle:-/etc/ssl/certs/ca-certificates.crt}
wheels=$(pip_setting PIP_FIND_LINKS find-links || true)
build_args=(--build-arg "PIP_CERT=/run/build/ca.crt")
mounts=(-v "$ca_bundle:/run/build/ca.crt:ro")
if [[ -n $wheels && -d $wheels ]]; then
    mounts+=(-v "$wheels:/run/build/wheels:ro")
    build_args+=(--build-arg "PIP_FIND_LINKS=/run/build/wheels")
    # A CPU-only torch wheel in the folder is used as is: no PyTorch index needed.
    torch_wheel=$(find "$wheels" -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' | sort -V | tail -n1)
    if [[ -n $torch_wheel ]]; then
        torch_version=$(basename "$torch_wheel" | cut -d- -f2)
        build_args+=(--build-arg "TORCH_INDEX_URL=" --build-arg "TORCH_VERSION=$torch_version")
        log "torch $torch_version from $wheels"
    fi
fi
log "buildah bud $image"
buildah bud --isolation chroot --pull=never --format docker --layers \
    "${mounts[@]}" "${build_args[@]}" -t "$image" . >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log"; die "image build failed (log above)"; }
log "built: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec) $image"

# --- 3. run and check ------------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# As Kubernetes runs it: read-only root, writable memory only for /tmp and the metrics folder (as emptyDirs),
# no capabilities. Published on the loopback address only.
# The HEALTHCHECK is run on demand below: its timer would need systemd, which podman complains about
# on stderr (kept in podman-run.log).
podman run --detach --name "$container" --publish "127.0.0.1:$port:8000" \
    --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=64m --tmpfs /run/trainserve:rw,size=64m \
    --cap-drop ALL --security-opt no-new-privileges --health-interval disable \
    -e TRAINSERVE_WORKERS=2 -e TRAINSERVE_TORCH_THREADS=1 \
    "$image" >/dev/null 2>"$work/podman-run.log" \
    || { cat "$work/podman-run.log" >&2; die "podman run failed"; }
log "container $container on 127.0.0.1:$port"

deadline=$((SECONDS + 180))
until curl -fsS --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    if [[ $(podman inspect --format '{{.State.Running}}' "$container") != true ]] || ((SECONDS > deadline)); then
        podman logs --tail 40 "$container" >&2 || true
        die "the service did not become ready within 180 s"
    fi
    sleep 1
done
log "ready: $(curl -fsS "http://127.0.0.1:$port/readyz")"
podman healthcheck run "$container" >/dev/null || die "the image's HEALTHCHECK failed"
log "HEALTHCHECK: $(podman inspect --format '{{.State.Health.Status}}' "$container")"
[[ $(podman exec "$container" id -u) == 10001 ]] || die "the service does not run as uid 10001"

data_dir=${TRAINSERVE_DATA_DIR:-../shared/datasets}
python3 deploy/ci/smoke_request.py "http://127.0.0.1:$port" --mnist "$data_dir/mnist"

# SIGTERM drains and exits cleanly (gunicorn is PID 1, reached directly).
podman stop --time 30 "$container" >/dev/null 2>>"$work/podman-run.log"
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[[ $exit_code == 0 ]] || { podman logs --tail 20 "$container" >&2; die "exit code $exit_code after SIGTERM"; }
log "stopped cleanly on SIGTERM; image smoke test passed in $((SECONDS - started)) s"
