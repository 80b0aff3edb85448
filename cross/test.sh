#!/usr/bin/env bash
# The device targets under emulation (qemu-user, with the CPU each board has; see
# cross/config.toml), for each target in CROSS_TARGETS:
# 1. the unit tests of `shared`, `infer` and `edge-agent` and infer's parity tests against
#    tract, built for the target and run under qemu (for the targets in
#    CROSS_UNIT_TARGETS: by default the Jetson one and armv7; the aarch64 musl build runs
#    the same aarch64 code);
# 2. the device agent (cross/build.sh: size <= 10 MB, glibc version or static linkage);
# 3. (CROSS_SMOKE_TARGETS, by default those of 1) the end-to-end smoke test (edge-agent/tests/cross_smoke.rs): that agent under qemu
#    takes a signed rollout over a loopback Mosquitto, pulls the bundle from a loopback S3
#    server, activates it and answers 1,000 GTSRB validation images as the x86 build does.
#   cross/test.sh                                   # every target
#   CROSS_TARGETS=aarch64-unknown-linux-musl cross/test.sh
# Extra arguments go to the test binaries (e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh

read -r -a targets <<<"$CROSS_TARGETS"
CROSS_UNIT_TARGETS=${CROSS_UNIT_TARGETS:-aarch64-unknown-linux-gnu.2.31 armv7-unknown-linux-musleabihf}
for t in "${targets[@]}"; do
  [[ " $CROSS_UNIT_TARGETS " == *" $t "* ]] || continue
  start=$(date +%s)
  cross_log "unit tests of shared, infer and edge-agent for $t under qemu"
  cross_cargo "$t" test -p shared -p infer -p edge-agent --lib --no-fail-fast -- "$@"
  cross_cargo "$t" test -p infer --test parity --no-fail-fast -- "$@"
  cross_log "$t: unit tests passed in $(( $(date +%s) - start )) s"
done
cross/build.sh "${targets[@]}"

# the runner of each target as cross/config.toml has it, for a process the test starts
runner_of() {
  case "$1" in
    aarch64-unknown-linux-gnu*) echo "env QEMU_CPU=cortex-a72 qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    aarch64-unknown-linux-musl) echo "env QEMU_CPU=cortex-a53 qemu-aarch64" ;;
    armv7-unknown-linux-musleabihf) echo "env QEMU_CPU=cortex-a7 qemu-arm" ;;
  esac
}
CROSS_SMOKE_TARGETS=${CROSS_SMOKE_TARGETS:-$CROSS_UNIT_TARGETS}
for t in "${targets[@]}"; do
  [[ " $CROSS_SMOKE_TARGETS " == *" $t "* ]] || continue
  cross_log "end-to-end under qemu: $t"
  EDGECP_CROSS_TARGET=$t EDGECP_CROSS_AGENT=$CROSS_TARGET_DIR/dist/$t/edge-agent \
    EDGECP_CROSS_RUNNER="$(runner_of "$t")" \
    cargo test -p edge-agent --features "${EDGECP_HOST_FEATURES:-}" --test cross_smoke -- --ignored --nocapture
done
