#!/usr/bin/env bash
# The device targets under emulation (qemu-user, with the CPU each board has; see
# cross/config.toml). For each target in CROSS_TEST_TARGETS (default: the Jetson one and
# armv7, the two ends: 64-bit glibc with NEON, 32-bit musl without):
# 1. the device agent (cross/build.sh: profile `device`, size <= 10 MB, glibc version or
#    static linkage);
# 2. the unit tests of `shared`, `infer` and `edge-agent` and infer's parity tests against
#    tract, built in the same `device` profile (so they reuse every dependency the agent
#    was just built with: one dependency build per target instead of two) and run under
#    qemu;
# 3. the end-to-end smoke test (edge-agent/tests/cross_smoke.rs): that agent under qemu
#    takes a signed rollout over a loopback Mosquitto, pulls the bundle from a loopback S3
#    server, activates it and answers 1,000 GTSRB validation images as the x86 build does.
#
#   cross/test.sh          # all three steps
#   cross/test.sh build    # 1 and the test binaries of 2, nothing run (scripts/test.sh
#                          # runs this beside the x86 tests, at low priority)
#   cross/test.sh run      # 2 and 3 (builds what is missing first)
#
# The targets go in parallel, each in its own target folder under $CROSS_TARGET_DIR (a
# fat-LTO link holds one core for minutes: two targets keep both busy); CROSS_TEST_PARALLEL=0
# takes them one after the other. Each line of output starts with its target.
# The aarch64 musl build runs the same aarch64 code as the Jetson one; add it with
#   CROSS_TEST_TARGETS="aarch64-unknown-linux-gnu.2.31 aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf" cross/test.sh
# (cross/build.sh builds all three). Extra arguments go to the test binaries (e.g. a filter).
# Tests built in the `device` profile run without debug assertions and overflow checks;
# the x86 suite (scripts/test.sh) runs the same tests with them.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh

mode=all
case "${1:-}" in
  build | run | all) mode=$1; shift ;;
esac

read -r -a targets <<<"${CROSS_TEST_TARGETS:-aarch64-unknown-linux-gnu.2.31 armv7-unknown-linux-musleabihf}"

# the runner of each target as cross/config.toml has it, for a process the test starts
runner_of() {
  case "$1" in
    aarch64-unknown-linux-gnu*) echo "env QEMU_CPU=cortex-a72 qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    aarch64-unknown-linux-musl) echo "env QEMU_CPU=cortex-a53 qemu-aarch64" ;;
    armv7-unknown-linux-musleabihf) echo "env QEMU_CPU=cortex-a7 qemu-arm" ;;
  esac
}

# infer's parity tests compare with tract; on the targets they read tract's outputs,
# computed on x86 by the same seeded cases (so tract is not built per target).
# scripts/test.sh computes them before it starts this (EDGECP_PARITY_FIXTURES); run by
# hand, this computes them first.
fixtures=${EDGECP_PARITY_FIXTURES:-}
if [ "$mode" != build ] && { [ -z "$fixtures" ] || [ -z "$(ls -A "$fixtures" 2>/dev/null)" ]; }; then
  fixtures=$CROSS_TARGET_DIR/parity-fixtures
  rm -rf "$fixtures"
  cross_log "tract's outputs for the parity tests, on x86"
  EDGECP_PARITY_WRITE=$fixtures cargo test -p infer --test parity -- --exact \
    matches_tract_on_networks_of_every_shape
fi
export EDGECP_PARITY_FIXTURES=$fixtures

unit_tests() {
  cross_cargo "$1" test --profile device -p shared -p infer -p edge-agent --lib --test parity \
    --no-fail-fast "${@:2}"
}

# One target's steps; prints its timings last.
one_target() {
  local t=$1
  shift
  # its own target folder, so that the targets' cargo runs do not wait for each other
  export CROSS_TARGET_DIR=$CROSS_TARGET_DIR/$t
  local start built tested done_at
  start=$(date +%s)
  built=$start
  if [ "$mode" != run ] || [ ! -x "$CROSS_TARGET_DIR/dist/$t/edge-agent" ]; then
    cross/build.sh "$t"
    built=$(date +%s)
  fi
  if [ "$mode" = build ]; then
    cross_log "unit and parity test binaries for $t (not run)"
    unit_tests "$t" --no-run
    cross_log "$t: agent build $((built - start)) s, test binaries $(($(date +%s) - built)) s"
    return
  fi
  cross_log "unit tests of shared, infer and edge-agent for $t under qemu"
  # one cargo run: the test binaries' LTO links (one core each) overlap with each other
  unit_tests "$t" -- "$@"
  tested=$(date +%s)
  cross_log "end-to-end under qemu: $t"
  EDGECP_CROSS_TARGET=$t EDGECP_CROSS_AGENT=$CROSS_TARGET_DIR/dist/$t/edge-agent \
    EDGECP_CROSS_RUNNER="$(runner_of "$t")" \
    cargo test -p edge-agent --features "${EDGECP_HOST_FEATURES:-}" --test cross_smoke -- --ignored --nocapture
  done_at=$(date +%s)
  cross_log "$t: agent build $((built - start)) s, unit and parity tests (build and run) $((tested - built)) s, end to end $((done_at - tested)) s"
}

status=0
if [ "${CROSS_TEST_PARALLEL:-1}" = 0 ] || [ ${#targets[@]} -le 1 ]; then
  for t in "${targets[@]}"; do
    one_target "$t" "$@" || status=1
  done
else
  pids=()
  for t in "${targets[@]}"; do
    short=${t%%.2.*}
    # each line carries its target; pipefail keeps the steps' status
    ( set -o pipefail; one_target "$t" "$@" 2>&1 | sed -u "s/^/[$short] /" ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p" || status=1
  done
fi
cross_log "device targets ($mode): $([ $status = 0 ] && echo ok || echo FAILED)"
exit $status
