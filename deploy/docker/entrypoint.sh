#!/bin/sh
# The image's entry point: prepare the Prometheus multiprocess directory's parent, then replace this shell
# with the launcher (service/launcher/launch.py), so that it is PID 1 and receives SIGTERM from `docker stop`
# or the kubelet directly: readiness goes off, the HTTP front end stops accepting and finishes what it
# holds within TRAINSERVE_GRACEFUL_TIMEOUT_S, then the model runtime finishes its queue and everything exits.
# The launcher empties and recreates the metrics directory itself at start-up.
set -eu
: "${PROMETHEUS_MULTIPROC_DIR:?must name a directory the service can write (the image sets one)}"
parent=$(dirname "$PROMETHEUS_MULTIPROC_DIR")
mkdir -p "$parent"
if [ ! -w "$parent" ]; then
    echo "entrypoint: $parent is not writable by uid $(id -u); mount a writable volume there" >&2
    exit 1
fi
exec python -m service
