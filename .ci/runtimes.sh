#!/usr/bin/env bash
# Installs and starts the container runtimes the test suite needs, on a fresh Debian 12 machine,
# and seeds the offline base images. Safe to run again: each step checks whether it is done.
#
# Afterwards:
#   - dockerd listens on $AGENTRUN_CI_DOCKER_HOST (default unix:///run/agentrun-ci/docker.sock);
#   - Podman uses runc and ulimits no higher than the host's (/etc/containers/containers.conf);
#   - both runtimes have the images `python:3.11-slim` (Debian bookworm minbase with python3)
#     and `agentrun-busybox:latest` (FROM scratch with a static busybox), built without a registry.
#
# Usage, as root:  eval "$(.ci/runtimes.sh)"   (prints `export DOCKER_HOST=…` for eval)
# From an account with sudo:  eval "$(sudo .ci/runtimes.sh)"
set -euo pipefail

# Installing packages and starting dockerd need root. Failing here, loudly, keeps
# `eval "$(…)"` from going on with an empty DOCKER_HOST and tests that quietly skip.
if ((EUID != 0)); then
  printf 'runtimes: run this script as root (or with sudo): it installs packages and starts dockerd\n' >&2
  exit 1
fi

state_dir=${AGENTRUN_CI_STATE:-/var/lib/agentrun-ci}
run_dir=/run/agentrun-ci
docker_socket=$run_dir/docker.sock
docker_host=unix://$docker_socket

log() { printf 'runtimes: %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------------
# tini is Docker's init (docker-init) and catatonit Podman's, for the executors' `init = true`.
packages=(docker.io podman runc tini catatonit busybox-static mmdebstrap uidmap iproute2 curl
  python3 systemd)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- dockerd on a private socket ---------------------------------------------------------------
# No bridge networking on these machines: containers use network `none` or `host`.
mkdir -p "$run_dir" "$state_dir/docker" "$state_dir/docker-exec"
if ! DOCKER_HOST=$docker_host docker info >/dev/null 2>&1; then
  log "starting dockerd on $docker_socket"
  rm -f "$docker_socket" "$run_dir/docker.pid"
  nohup dockerd \
    --host "$docker_host" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    --data-root "$state_dir/docker" --exec-root "$state_dir/docker-exec" \
    --pidfile "$run_dir/docker.pid" \
    >"$state_dir/dockerd.log" 2>&1 &
  for _ in $(seq 1 120); do
    DOCKER_HOST=$docker_host docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  DOCKER_HOST=$docker_host docker info >/dev/null 2>&1 || {
    log "dockerd did not answer within 60 s; its log:"
    tail -n 40 "$state_dir/dockerd.log" >&2
    exit 1
  }
fi

# --- Podman configuration ----------------------------------------------------------------------
# crun rejects this machine's cgroups, and rlimits above the host's make container start fail
# ("error setting rlimit type 7"), so pin runc and ulimits of 1024.
mkdir -p /etc/containers
if ! grep -q 'agentrun-ci' /etc/containers/containers.conf 2>/dev/null; then
  log "writing /etc/containers/containers.conf"
  cat >/etc/containers/containers.conf <<'CONF'
# Written by agentrun-ci (.ci/runtimes.sh).
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
fi

# --- Offline base images -----------------------------------------------------------------------
export DOCKER_HOST=$docker_host DOCKER_BUILDKIT=0
images_dir=$state_dir/images
mkdir -p "$images_dir"

if [[ ! -s $images_dir/python-rootfs.tar ]]; then
  log "making a Debian bookworm root file system with python3 (mmdebstrap)"
  mmdebstrap --quiet --format=tar --variant=minbase --include=python3,ca-certificates bookworm \
    "$images_dir/python-rootfs.tar.partial" >&2
  mv "$images_dir/python-rootfs.tar.partial" "$images_dir/python-rootfs.tar"
fi
python_config=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')
if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  log "importing python:3.11-slim into docker"
  docker import "${python_config[@]}" "$images_dir/python-rootfs.tar" python:3.11-slim >/dev/null
fi
if ! podman image exists docker.io/library/python:3.11-slim; then
  log "importing python:3.11-slim into podman"
  podman import "${python_config[@]}" "$images_dir/python-rootfs.tar" \
    docker.io/library/python:3.11-slim >/dev/null
fi

busybox_dir=$images_dir/busybox
if [[ ! -f $busybox_dir/Dockerfile ]]; then
  mkdir -p "$busybox_dir"
  cp /bin/busybox "$busybox_dir/busybox"
  cat >"$busybox_dir/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
DOCKERFILE
fi
if ! docker image inspect agentrun-busybox:latest >/dev/null 2>&1; then
  log "building agentrun-busybox:latest in docker"
  docker build -q -t agentrun-busybox:latest "$busybox_dir" >/dev/null
fi
if ! podman image exists localhost/agentrun-busybox:latest; then
  log "building agentrun-busybox:latest in podman"
  podman build -q -t agentrun-busybox:latest "$busybox_dir" >/dev/null
fi

log "ready: docker at $docker_host, podman with runc"
echo "export DOCKER_HOST=$docker_host"
