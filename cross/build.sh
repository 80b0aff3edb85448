#!/usr/bin/env bash
# Builds the device agent (`edge-agent`, default features: native engine, MQTT, object
# store, HTTP; profile `device`) for each target and checks what a device needs of it:
#   cross/build.sh                      # every target in CROSS_TARGETS
#   cross/build.sh aarch64-unknown-linux-musl
#   FEATURES=gpio cross/build.sh ...    # extra features (gpio, tract, tflite, ort)
# Prints, per target: the stripped size, the highest GLIBC_ symbol version it needs (glibc
# builds; must be <= the version in the target name) or that it is static (musl builds),
# and copies the binary to $CROSS_TARGET_DIR/dist/<target>/edge-agent.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh

targets=("$@")
[ ${#targets[@]} -gt 0 ] || read -r -a targets <<<"$CROSS_TARGETS"
features=${FEATURES:-}
max_bytes=$((10 * 1024 * 1024))
status=0
for t in "${targets[@]}"; do
  cross_log "building edge-agent for $t${features:+ with $features}"
  start=$(date +%s)
  cross_cargo "$t" zigbuild -p edge-agent --bin edge-agent --profile device ${features:+--features "$features"} >&2
  bin=$(cross_out "$t")/device/edge-agent
  dist=$CROSS_TARGET_DIR/dist/$t
  mkdir -p "$dist" && cp "$bin" "$dist/edge-agent"
  size=$(stat -c %s "$bin")
  if file "$bin" | grep -q 'statically linked'; then
    linkage="static (no interpreter)"
    if readelf -l "$bin" | grep -q INTERP; then linkage="has an interpreter"; status=1; fi
  else
    glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
    linkage="dynamic, needs up to $glibc"
    want=${t##*.2.}
    if [ "$want" != "$t" ] && [ "$(printf '%s\n%s\n' "GLIBC_2.$want" "$glibc" | sort -V | tail -1)" != "GLIBC_2.$want" ]; then
      linkage="$linkage (more than GLIBC_2.$want)"; status=1
    fi
  fi
  verdict=ok
  [ "$size" -le "$max_bytes" ] || { verdict="over 10 MB"; status=1; }
  printf 'cross: %-34s %6.2f MB  %s  %s  (%d s)\n' "$t" "$(echo "$size / 1048576" | bc -l)" "$linkage" "$verdict" $(( $(date +%s) - start ))
done
exit $status
