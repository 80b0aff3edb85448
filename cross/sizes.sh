#!/usr/bin/env bash
# What the device binary is made of and what each choice costs, for one target (default:
# the Jetson one, the largest):
#   cross/sizes.sh [TARGET]
# 1. the default build (profile `device`), unstripped, through cross/bloat.py: the ELF
#    sections and the crates whose code dominates;
# 2. the stripped size of the default build, with each optional feature alone (eval,
#    gpio, ort, tract, tflite) and with panic = "abort" instead of unwinding,
#    and the difference of each from the default.
# Each variant is a fat-LTO build (minutes each on 2 cores; dependencies are cached).
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh

t=${1:-aarch64-unknown-linux-gnu.2.31}
bin=$(cross_out "$t")/device/edge-agent
# Every variant is linked with its symbols (CARGO_PROFILE_DEVICE_STRIP=none: the strip
# setting is part of every crate's build, so changing it would rebuild them all) and its
# stripped size is that of a copy stripped by llvm-strip (rustup's llvm-tools), which
# cross/build.sh's figure for the default build confirms.
rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools >&2
LLVM_STRIP=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-strip
mib() { echo "scale=2; $1 / 1048576" | bc; }
build() { # build ENV... -- ARGS...: the stripped size in bytes
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env CARGO_PROFILE_DEVICE_STRIP=none "${envs[@]}" bash -c 'source cross/env.sh; cross_cargo "$0" zigbuild -p edge-agent --bin edge-agent --profile device "$@"' "$t" "$@" >&2
  "$LLVM_STRIP" --strip-all -o "$bin.stripped" "$bin"
  stat -c %s "$bin.stripped"
}

cross_log "$t: the default build with symbols"
base=$(build --)
cp "$bin" "$CROSS_TARGET_DIR/edge-agent-$t-symbols"
python3 cross/bloat.py "$CROSS_TARGET_DIR/edge-agent-$t-symbols"

rows=("default (native engine, MQTT, store, HTTP)|$base")
for f in eval gpio ort tract tflite; do
  rows+=("+ $f|$(build -- --features "$f")")
done
# last: abort changes how every crate is compiled (a full rebuild)
rows+=("panic = \"abort\"|$(build CARGO_PROFILE_DEVICE_PANIC=abort --)")
printf '\n%s, stripped, profile device\n' "$t"
printf '| %-44s | %9s | %10s |\n' build MiB "vs default"
for r in "${rows[@]}"; do
  name=${r%|*}; size=${r##*|}
  printf '| %-44s | %9s | %+10s |\n' "$name" "$(mib "$size")" "$(mib $((size - base)))"
done
