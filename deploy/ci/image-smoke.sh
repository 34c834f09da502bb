#!/usr/bin/env bash
# Build the images without a Docker daemon and prove that they work:
#   1. debootstrap a minimal Debian bookworm with Python 3.11 and tag it with the Dockerfile's base name
#      (no image registry is reachable, so the base is made here, from the machine's own Debian mirror);
#   2. buildah bud --isolation chroot --pull=never, passing pip the host's CA bundle and wheel folder;
#   3. run the serving image with podman (runc) on 127.0.0.1, read-only root like Kubernetes, wait for
#      /readyz and the image's HEALTHCHECK, send real MNIST digits, scrape /metrics, stop it with SIGTERM;
#   4. train with the training image into a mounted volume and serve that artifact with the serving image;
#   then remove everything it made.
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
# netavark, podman's network stack, sets up the published port with iptables.
for tool in buildah:buildah podman:podman debootstrap:debootstrap runc:runc iptables:iptables; do
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
train_image=localhost/trainserve-train:smoke
container=trainserve-smoke-$$
containers=()
cleanup() {
    local rc=$?
    for name in "${containers[@]}"; do podman rm --force --time 5 "$name" >/dev/null 2>&1 || true; done
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
    tar -C "$rootfs" -c . | podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
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
build() {  # build TAG [buildah arguments...]
    local tag=$1; shift
    log "building $tag${*:+ ($*)}"
    buildah bud --isolation chroot --pull=never --format docker --layers \
        "${mounts[@]}" "${build_args[@]}" "$@" -t "$tag" . >>"$work/build.log" 2>&1 \
        || { tail -n 40 "$work/build.log"; die "image build failed (log above)"; }
    log "built $tag: $(podman image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)"
}

# serve NAME [podman run arguments...]: start the serving image as Kubernetes runs it (read-only root,
# writable memory only for /tmp and /run/trainserve, as emptyDirs; no capabilities), published on the
# loopback address only; wait for /readyz and the image's HEALTHCHECK. Sets $url.
serve() {
    local name=$1 port; shift
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # The HEALTHCHECK is run on demand below: its timer needs systemd, which podman complains about on
    # stderr (kept in podman.log).
    podman run --detach --name "$name" --publish "127.0.0.1:$port:8000" \
        --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=64m --tmpfs /run/trainserve:rw,size=64m \
        --cap-drop ALL --security-opt no-new-privileges --health-interval disable \
        -e TRAINSERVE_WORKERS=2 -e TRAINSERVE_TORCH_THREADS=1 "$@" \
        "$image" >/dev/null 2>>"$work/podman.log" || { cat "$work/podman.log" >&2; die "podman run failed"; }
    containers+=("$name")
    url=http://127.0.0.1:$port
    local deadline=$((SECONDS + 180))
    until curl -fsS --max-time 2 "$url/readyz" >/dev/null 2>&1; do
        if [[ $(podman inspect --format '{{.State.Running}}' "$name") != true ]] || ((SECONDS > deadline)); then
            podman logs --tail 40 "$name" >&2 || true
            die "$name did not become ready within 180 s"
        fi
        sleep 1
    done
    log "$name ready on $url: $(curl -fsS "$url/readyz")"
    podman healthcheck run "$name" >/dev/null 2>>"$work/podman.log" || die "the image's HEALTHCHECK failed"
    [[ $(podman exec "$name" id -u) == 10001 ]] || die "$name does not run as uid 10001"
}

# stop NAME: SIGTERM must drain and exit 0 (the launcher is PID 1 and gets the signal itself).
stop() {
    podman stop --time 30 "$1" >/dev/null 2>>"$work/podman.log"
    local code
    code=$(podman inspect --format '{{.State.ExitCode}}' "$1")
    [[ $code == 0 ]] || { podman logs --tail 20 "$1" >&2; die "$1 exited $code after SIGTERM"; }
    log "$1 stopped cleanly on SIGTERM"
}

# --- 3. the serving image: the shipped model answers real MNIST digits -------------------------------------
build "$image"
serve "$container"
data_dir=${TRAINSERVE_DATA_DIR:-../shared/datasets}
python3 deploy/ci/smoke_request.py "$url" --mnist "$data_dir/mnist"
stop "$container"

# --- 4. the training image writes an artifact into a mounted volume; the serving image serves it ----------
# As the Kubernetes Job runs it (read-only root; `U`: the tmpfs belongs to the image's user, as an emptyDir
# with fsGroup does). scikit-learn's bundled 8x8 digits: no download, a few seconds of training.
build "$train_image" --target train
trained=$work/trained
install -d -o 10001 -g 10001 "$trained"
podman run --rm --read-only --read-only-tmpfs=false --tmpfs /tmp:rw --tmpfs /runs:rw,U --cap-drop ALL \
    --security-opt no-new-privileges -v "$trained:/models" "$train_image" \
    --dataset digits --epochs 1 --no-download --threads 2 >"$work/train.log" 2>&1 \
    || { tail -n 30 "$work/train.log" >&2; die "training in the image failed"; }
[[ -f $trained/digits-cnn/1/manifest.json ]] || die "no digits-cnn/1 artifact in the mounted volume"
log "trained digits-cnn/1 into the mounted volume"
serve "$container-trained" -v "$trained:/models:ro"
python3 deploy/ci/smoke_request.py "$url" --model digits-cnn
stop "$container-trained"

log "image smoke test passed in $((SECONDS - started)) s"
