#!/usr/bin/env bash
# Brings up the real servers the test suite talks to, idempotently:
# a Docker engine (no bridge, host networking only), PostgreSQL, Redis,
# and the Prometheus/Alertmanager binaries the tests start themselves.
# Every server listens on 127.0.0.1 only. Prints what it did.
set -euo pipefail

log() { printf 'testbed: %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local i
  for ((i = 0; i < limit * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "ERROR: $what did not come up within ${limit}s"
  return 1
}

# --- packages -----------------------------------------------------------
apt_install docker.io docker-compose busybox-static prometheus prometheus-alertmanager postgresql redis-server ca-certificates
# a local image registry: a pruned previous image pulled back by its digest
apt_install docker-registry
# the operator page's browser tests: Playwright drives this Chromium (no browser download)
apt_install chromium
# the completion tests load the generated scripts in the shells they are for
apt_install bash-completion zsh

# --- Docker engine --------------------------------------------------------
DOCKER_SOCK=/var/run/docker.sock
if docker version >/dev/null 2>&1; then
  log "docker engine: already running"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    log "ERROR: dockerd not found after install"; exit 1
  fi
  log "docker engine: starting dockerd (vfs, no bridge)"
  mkdir -p /var/log
  # setsid: the engine outlives this script and the test run's process group.
  setsid nohup dockerd --storage-driver=vfs --bridge=none --iptables=false \
    --ip-masq=false --ip6tables=false >/var/log/watchdogd-testbed-dockerd.log 2>&1 < /dev/null &
  wait_for 60 "dockerd" docker version || { tail -20 /var/log/watchdogd-testbed-dockerd.log; exit 1; }
  log "docker engine: up ($DOCKER_SOCK)"
fi

# --- Docker Swarm (one manager on 127.0.0.1; host networking only) ----------
# The Swarm test services use --network host. Swarm makes an "ingress" overlay
# (10.0.0.0/24) and the docker_gwbridge bridge on init: both are removed at once
# and never used, so no traffic leaves 127.0.0.1; the manager's ports (2377,
# 7946) listen on 127.0.0.1 only. Never publish ports through the routing mesh.
swarm_new=0
swarm_state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
if [ "$swarm_state" = "active" ]; then
  log "docker swarm: already active"
else
  log "docker swarm: init on 127.0.0.1"
  swarm_new=1
  docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 \
    --data-path-addr 127.0.0.1 >/dev/null
fi
if docker network inspect ingress >/dev/null 2>&1; then
  log "docker swarm: removing the ingress overlay (unused: host networking only)"
  echo y | docker network rm ingress >/dev/null
fi
for _ in 1 2 3 4 5 6 7 8 9 10; do  # made just after init: wait for it to remove it
  [ $swarm_new -eq 1 ] || break
  docker network inspect docker_gwbridge >/dev/null 2>&1 && break
  sleep 0.5
done
if docker network inspect docker_gwbridge >/dev/null 2>&1; then
  if [ "$(docker network inspect docker_gwbridge --format '{{len .Containers}}')" = "0" ]; then
    log "docker swarm: removing the unused docker_gwbridge bridge"
    docker network rm docker_gwbridge >/dev/null
  else
    log "WARNING: docker_gwbridge has endpoints; left as it is"
  fi
fi

# --- PostgreSQL -------------------------------------------------------------
pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q; }
if pg_ready; then
  log "postgresql: already answering on 127.0.0.1:5432"
else
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$version" ]; then log "ERROR: no PostgreSQL cluster configured"; exit 1; fi
  log "postgresql: starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for 60 "postgresql" pg_ready
fi
# trust auth and a database named test, as the tests expect
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  hba=$(su postgres -c "psql -tAc 'show hba_file'")
  log "postgresql: enabling trust auth on 127.0.0.1 in $hba"
  sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
  sleep 0.5
fi
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'")" != "1" ]; then
  log "postgresql: creating database test"
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
fi
log "postgresql: ready"

# --- Redis -----------------------------------------------------------------
if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  log "redis: already answering on 127.0.0.1:6379"
else
  log "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_for 30 "redis" sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
fi

# --- Prometheus / Alertmanager binaries (the tests start their own) ---------
for bin in prometheus prometheus-alertmanager busybox; do
  command -v "$bin" >/dev/null 2>&1 || { log "ERROR: $bin missing"; exit 1; }
done
# Debian's package starts a Prometheus on :9090 under systemd; nothing here needs it.
log "prometheus: $(prometheus --version 2>&1 | head -1)"
log "ready"
