# Sourced by cross/build.sh and cross/test.sh: the cross toolchain, installed on first use
# and cached under $EDGECP_CACHE (like the test suite's other tools):
# - zig 0.13.0 from PyPI's `ziglang` (the linker and C compiler for every target; it pins
#   the glibc version through the target name, e.g. aarch64-unknown-linux-gnu.2.31, and
#   carries musl);
# - cargo-zigbuild (cargo with zig as the linker);
# - qemu-user, and Debian's aarch64 glibc for running the glibc build under it;
# - the Rust targets (rustup) and rust-src (armv7 musl's std is built from source).
set -euo pipefail

export EDGECP_CACHE=${EDGECP_CACHE:-$HOME/.cache/edgecp}
CROSS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CROSS_DIR
ZIG_VERSION=0.13.0
ZIGBUILD_VERSION=0.24.1
ZIG_ROOT=$EDGECP_CACHE/ziglang-$ZIG_VERSION
ZIGBUILD_ROOT=$EDGECP_CACHE/cargo-zigbuild-$ZIGBUILD_VERSION

# the device targets: Jetson (glibc 2.31 = JetPack 5's Ubuntu 20.04), any aarch64 board
# (static), any ARMv7 hard-float board (static)
CROSS_TARGETS_ALL="aarch64-unknown-linux-gnu.2.31 aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf"
export CROSS_TARGETS=${CROSS_TARGETS:-$CROSS_TARGETS_ALL}

cross_log() { printf '[cross %s, +%d s] %s\n' "$(date +%T)" "$SECONDS" "$*" >&2; }

if [ ! -x "$ZIG_ROOT/ziglang/zig" ]; then
  cross_log "installing zig $ZIG_VERSION (PyPI ziglang) into $ZIG_ROOT"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$ZIG_ROOT" "ziglang==$ZIG_VERSION" >&2
fi
if [ ! -x "$ZIGBUILD_ROOT/bin/cargo-zigbuild" ]; then
  cross_log "installing cargo-zigbuild $ZIGBUILD_VERSION into $ZIGBUILD_ROOT"
  cargo install cargo-zigbuild --version "$ZIGBUILD_VERSION" --locked --root "$ZIGBUILD_ROOT" >&2
fi
export PATH=$ZIGBUILD_ROOT/bin:$ZIG_ROOT/ziglang:$PATH

# scripts/test.sh runs this beside its own apt installs: wait for the other's lock
apt_install() {
  local wait=(-o DPkg::Lock::Timeout=600)
  DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -qq "$@" >&2 \
    || { apt-get "${wait[@]}" update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -qq "$@" >&2; }
}
if ! command -v qemu-aarch64 >/dev/null || ! command -v qemu-arm >/dev/null; then
  cross_log "installing qemu-user (apt)"
  apt_install qemu-user
fi
if [ ! -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]; then
  cross_log "installing libc6-arm64-cross (apt): the loader and glibc for the Jetson build under qemu"
  apt_install libc6-arm64-cross
fi

installed=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu aarch64-unknown-linux-musl; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t" >&2
done
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src >&2

# The cross builds have their own target folder: the host's stays untouched.
export CROSS_TARGET_DIR=${CROSS_TARGET_DIR:-$EDGECP_CACHE/target-cross}

# `cargo-zigbuild SUB ARGS` (SUB: zigbuild, test, check) for target $1, whose name may
# carry a glibc version (.2.31). The armv7 musl std is built from source (RUSTC_BOOTSTRAP
# lets stable cargo take -Zbuild-std; see cross/config.toml); RUSTC_BOOTSTRAP is set for
# every target so that the shared build scripts keep one fingerprint.
cross_cargo() {
  local target=$1 sub=$2
  shift 2
  local extra=()
  case "$target" in
    armv7-unknown-linux-musleabihf)
      # mimalloc's build asks for -latomic on 32-bit ARM; zig has no libatomic, but its
      # compiler-rt (linked anyway) defines the __atomic_* calls: an empty archive
      # satisfies the flag (array settings given with --config add to the file's)
      local stubs=$EDGECP_CACHE/cross-stubs
      if [ ! -f "$stubs/libatomic.a" ]; then
        mkdir -p "$stubs" && ar rc "$stubs/libatomic.a"
      fi
      extra=(-Zbuild-std --config "target.$target.rustflags=[\"-L\", \"native=$stubs\"]")
      ;;
  esac
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$CROSS_TARGET_DIR \
    cargo-zigbuild "$sub" --config "$CROSS_DIR/config.toml" --target "$target" "${extra[@]}" "$@"
}

# The folder cargo writes target $1's outputs to (without the glibc suffix).
cross_out() { echo "$CROSS_TARGET_DIR/${1%%.2.*}"; }
