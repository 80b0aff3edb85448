#!/usr/bin/env bash
# The device targets under emulation (qemu-user, with the CPU each board has; see
# cross/config.toml): builds the unit tests of `shared`, `infer` and `edge-agent` for each
# target in CROSS_TARGETS and runs them under qemu, then builds the device agent
# (cross/build.sh: size, glibc version or static linkage).
#   cross/test.sh                                   # every target
#   CROSS_TARGETS=aarch64-unknown-linux-musl cross/test.sh
# Extra arguments go to the test binaries (e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh

read -r -a targets <<<"$CROSS_TARGETS"
for t in "${targets[@]}"; do
  start=$(date +%s)
  cross_log "unit tests of shared, infer and edge-agent for $t under qemu"
  cross_cargo "$t" test -p shared -p infer -p edge-agent --lib --no-fail-fast -- "$@"
  cross_log "$t: unit tests passed in $(( $(date +%s) - start )) s"
done
cross/build.sh "${targets[@]}"
