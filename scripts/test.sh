#!/usr/bin/env bash
# The whole test suite, from a fresh machine: toolchain components, the Python venv that
# holds the reference implementations (NumPy, scikit-learn, crepes, onnx, onnxruntime,
# LiteRT), formatting, lints and
# every test. Build outputs and the venv live in a cache outside the checkout so that
# repeated runs (and CI on the same machine) skip the cold build; it also works from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

export EDGECP_CACHE=${EDGECP_CACHE:-$HOME/.cache/edgecp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$EDGECP_CACHE/target}
export EDGECP_DATA=${EDGECP_DATA:-$(cd .. && pwd)/shared/data}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# each step prints the wall time since the start, so a log shows where the time goes
step() { printf '\n== [%s, +%d s] %s\n' "$(date +%T)" "$SECONDS" "$*" >&2; }

# apt, waiting for the lock while the device builds' toolchain install holds it
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }

step "toolchain components"
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

# The device builds (aarch64 for Jetson with glibc 2.31, armv7 musl) are the largest
# compile of the suite, and their fat-LTO links hold one core each for minutes. They need
# nothing the x86 steps make, so they start now, in the background at low priority (nice
# 10): the x86 steps keep the CPU they ask for (some tests time things) and the device
# builds take what is left: the cores that wait on pip, npm and apt, on a build's last
# crates, on the services the tests start. The emulated tests run after the x86 ones.
# cross/test.sh installs its toolchain on first use (zig from PyPI, cargo-zigbuild,
# qemu-user; apt waits for the other's lock). EDGECP_CROSS=0 skips it.
cross_pid=
if [ "${EDGECP_CROSS:-1}" != 0 ]; then
  step "device builds: started in the background (log: $EDGECP_CACHE/cross-build.log)"
  mkdir -p "$EDGECP_CACHE"
  cross_log_file=$EDGECP_CACHE/cross-build.log
  # its own process group, so that a failing x86 step stops it too (the trap)
  setsid nice -n 10 cross/test.sh build >"$cross_log_file" 2>&1 &
  cross_pid=$!
  trap 'if [ -n "$cross_pid" ]; then kill -- -"$cross_pid" 2>/dev/null || true; fi' EXIT
fi

step "Python reference implementations (venv under $CARGO_TARGET_DIR)"
EDGECP_PYTHON=$(scripts/pyenv.sh)
export EDGECP_PYTHON
"$EDGECP_PYTHON" -c 'import numpy, sklearn, crepes, onnx, onnxruntime, ai_edge_litert; print("numpy", numpy.__version__, "scikit-learn", sklearn.__version__, "onnxruntime", onnxruntime.__version__, "crepes, onnx, LiteRT ok")' >&2

if [ ! -d "$EDGECP_DATA/gtsrb" ]; then
  echo "warning: $EDGECP_DATA/gtsrb is missing: tests that read GTSRB will fail and say so (set EDGECP_DATA)" >&2
fi

step "MariaDB on 127.0.0.1:3306 (the registry tests run on SQLite and MariaDB)"
db_up() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }
if ! db_up; then
  if [ -x /usr/sbin/mariadbd ]; then
    echo "starting mariadbd" >&2
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  else
    echo "MariaDB is not installed: apt-get install mariadb-server, or point EDGECP_TEST_MYSQL at a server" >&2
  fi
  for _ in $(seq 1 30); do db_up && break; sleep 1; done
fi
db_up || echo "warning: nothing listens on 127.0.0.1:3306: the MySQL registry tests will fail and say so" >&2

step "Mosquitto for the MQTT and rollout tests (they run private brokers on free ports)"
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto and its clients" >&2
  apt_get install -y mosquitto mosquitto-clients >&2 || echo "warning: mosquitto could not be installed: the MQTT tests will fail and say so" >&2
fi

step "S3 server for the object-store tests (s3s-fs, cached under $EDGECP_CACHE)"
S3S_ROOT=$EDGECP_CACHE/s3s-fs-0.14.1
if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
  # 0.14.1: the newest release that builds with this toolchain (0.17 needs rustc 1.96)
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$S3S_ROOT"
fi
export EDGECP_S3S_FS=$S3S_ROOT/bin/s3s-fs

step "Garage, the production S3 server the object-store tests also run against (cached under $EDGECP_CACHE)"
GARAGE_ROOT=$EDGECP_CACHE/garage-2.5.0
if [ ! -x "$GARAGE_ROOT/bin/garage" ]; then
  # a long compile (7 minutes on 2 cores here), once: SQLite metadata, bundled C libraries
  cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite --root "$GARAGE_ROOT"
fi
export EDGECP_GARAGE=$GARAGE_ROOT/bin/garage

step "Azurite, the Azure Blob Storage emulator the Azure tests run against (npm, cached under $EDGECP_CACHE)"
AZURITE_LOCK=$(sha256sum scripts/azurite/package-lock.json | cut -c1-12)
AZURITE_ROOT=$EDGECP_CACHE/azurite-3.37.0-$AZURITE_LOCK  # keyed by the lock file
if [ ! -x "$AZURITE_ROOT/node_modules/.bin/azurite-blob" ] || [ ! -f "$AZURITE_ROOT/.complete" ]; then
  rm -rf "$AZURITE_ROOT" && mkdir -p "$AZURITE_ROOT"
  cp scripts/azurite/package.json scripts/azurite/package-lock.json "$AZURITE_ROOT/"
  (cd "$AZURITE_ROOT" && npm ci --no-audit --no-fund --loglevel=error) >&2
  touch "$AZURITE_ROOT/.complete"
fi
export EDGECP_AZURITE=$AZURITE_ROOT/node_modules/.bin/azurite-blob

step "MLflow tracking server for the tracking tests (venv from scripts/requirements-mlflow.txt)"
EDGECP_MLFLOW_PYTHON=$(scripts/pyenv.sh scripts/requirements-mlflow.txt)
export EDGECP_MLFLOW_PYTHON
"$EDGECP_MLFLOW_PYTHON" -c 'import mlflow, pymysql, boto3, azure.storage.blob; print("mlflow", mlflow.__version__, "with pymysql, boto3 and azure-storage-blob")' >&2
command -v mysql >/dev/null || echo "warning: no mysql client: the tests that prepare MariaDB databases will fail and say so (apt-get install mariadb-client)" >&2

step "deployment files: docker-compose (Debian's, for \`config\`) and the checker's venv"
# tests/tests/deploy_files.rs runs scripts/py/check_deploy.py with this venv's python.
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    { apt_get install -y -qq docker-compose \
        || { apt_get update -qq && apt_get install -y -qq docker-compose; }; } >&2 \
      || echo "warning: could not install docker-compose: the deployment-file test will fail and say so" >&2
  else
    echo "warning: no docker-compose and no apt-get: the deployment-file test will fail and say so" >&2
  fi
fi
EDGECP_DEPLOY_PYTHON=$(scripts/pyenv.sh scripts/requirements-deploy.txt)
export EDGECP_DEPLOY_PYTHON

step "cargo fmt --check"
cargo fmt --all -- --check

# The agent's default features are a device's (native engine only); the suite also runs
# its tract and tflite runtimes, which the loading and parity tests compare.
AGENT_FEATURES=edge-agent/tract,edge-agent/tflite,edge-agent/eval

step "cargo clippy --all-targets -- -D warnings (with the agent's runtimes, and as a device builds it)"
cargo clippy --workspace --all-targets --features "$AGENT_FEATURES" -- -D warnings
cargo clippy -p edge-agent --all-targets -- -D warnings

step "cargo build --bins (the end-to-end tests in tests/ drive these binaries)"
cargo build --workspace --bins --features "$AGENT_FEATURES"

# infer's parity tests on the targets compare with tract's outputs on x86
export EDGECP_PARITY_FIXTURES=$EDGECP_CACHE/parity-fixtures
if [ -n "$cross_pid" ]; then
  step "tract's outputs for the device parity tests (x86)"
  rm -rf "$EDGECP_PARITY_FIXTURES"
  EDGECP_PARITY_WRITE=$EDGECP_PARITY_FIXTURES cargo test --workspace --features "$AGENT_FEATURES" \
    --test parity -- --exact matches_tract_on_networks_of_every_shape
fi

step "cargo test"
cargo test --workspace --features "$AGENT_FEATURES" --no-fail-fast "$@"

# The agent's `ort` feature loads onnxruntime at run time: the test venv's wheel carries
# the shared library, so the feature's tests run here on CPU.
step "edge-agent with the ort feature (onnxruntime from the test venv)"
ORT_DYLIB_PATH=$("$EDGECP_PYTHON" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])')
export ORT_DYLIB_PATH
cargo clippy -p edge-agent --all-targets --features ort,tract,tflite -- -D warnings
# the runtime-specific tests only: the MQTT, download and rollout tests do not depend on it
cargo test -p edge-agent --features ort,tract,tflite --no-fail-fast --lib --test loading --test serve "$@"

# The device targets: the builds started above, then under qemu the unit and parity tests
# and the emulated agent end to end against this build.
if [ -n "$cross_pid" ]; then
  step "device builds (started at the beginning): waiting for them"
  cross_built=0
  wait "$cross_pid" || cross_built=$?
  cross_pid=
  cat "$cross_log_file" >&2
  [ "$cross_built" = 0 ] || { echo "the device builds failed (log above)" >&2; exit 1; }
  step "device targets under qemu (cross/test.sh run)"
  EDGECP_HOST_FEATURES=tract,tflite,eval cross/test.sh run
fi
step "done"

