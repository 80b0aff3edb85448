#!/usr/bin/env bash
# musl's malloc against mimalloc under threads, under qemu, for the static (musl) targets:
#   cross/alloc-bench.sh [ROUNDS]
# The agent's musl builds use mimalloc (edge-agent/src/alloc.rs) because musl's malloc
# serialises threads; this measures that choice on the same binary (alloc-bench/src/main.rs).
# qemu runs guest threads on host threads, so the figures are only as parallel as this
# machine's cores; on 2 cores, 4 threads compete.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
for t in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  cross_cargo "$t" zigbuild --manifest-path cross/alloc-bench/Cargo.toml --release -q >&2
  case "$t" in
    aarch64*) run="env QEMU_CPU=cortex-a53 qemu-aarch64" ;;
    armv7*) run="env QEMU_CPU=cortex-a7 qemu-arm" ;;
  esac
  echo "$t (under qemu)"
  $run "$(cross_out "$t")/release/alloc-bench" "${1:-50000}"
done
