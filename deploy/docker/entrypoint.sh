#!/bin/sh
# The image's entry point: prepare the Prometheus multiprocess directory's parent, then replace this shell
# with gunicorn, so that gunicorn is PID 1 and receives SIGTERM from `docker stop` or the kubelet directly
# (it stops accepting, lets requests finish for TRAINSERVE_GRACEFUL_TIMEOUT_S, then exits).
# gunicorn.conf.py empties and recreates the directory itself at start-up.
set -eu
: "${PROMETHEUS_MULTIPROC_DIR:?must name a directory the service can write (the image sets one)}"
parent=$(dirname "$PROMETHEUS_MULTIPROC_DIR")
mkdir -p "$parent"
if [ ! -w "$parent" ]; then
    echo "entrypoint: $parent is not writable by uid $(id -u); mount a writable volume there" >&2
    exit 1
fi
exec gunicorn -c /app/service/gunicorn.conf.py 'service.app:create_app()'
