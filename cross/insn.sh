#!/usr/bin/env bash
# Guest instructions per image of the native engine and tract under qemu (batch 1, one
# thread), for the targets given (default: aarch64 and armv7):
#   cross/insn.sh [TARGET...]
# The model is the exporter's network with random weights (infer/tests/parity.rs
# `write_exporter_model`); infer/examples/insn_bench.rs embeds N images; the count of
# cross/insn_count.c at N = 22 minus that at N = 2, over 20, is the work of one image
# (loading and tract's optimisation cancel out). Built in the `device` profile, like the
# agent. docs/BENCHMARKS.md has the method and the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu.2.31 armv7-unknown-linux-musleabihf)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -shared -fPIC -O2 -o "$work/insn_count.so" cross/insn_count.c
for t in "${targets[@]}"; do
  case "$t" in
    aarch64-unknown-linux-gnu*) qemu=(env QEMU_CPU=cortex-a53 qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
    aarch64-unknown-linux-musl) qemu=(env QEMU_CPU=cortex-a53 qemu-aarch64) ;;
    armv7-unknown-linux-musleabihf) qemu=(env QEMU_CPU=cortex-a7 qemu-arm) ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  # tract on the target: --cfg edgecp_tract brings infer's tract dev-dependency back (the
  # changed flags rebuild the dependencies once, apart from cross/test.sh's)
  tract=(--config "target.${t%%.2.*}.rustflags=[\"--cfg\", \"edgecp_tract\"]")
  EDGECP_WRITE_MODEL=$work/model.onnx cross_cargo "$t" test --profile device -p infer --test parity \
    "${tract[@]}" -- --ignored --exact write_exporter_model >&2
  cross_cargo "$t" build --profile device -p infer --example insn_bench "${tract[@]}" >&2
  bench=$(cross_out "$t")/device/examples/insn_bench
  count() { # ENGINE N [ENV...]: instructions of one run
    local out=$work/count
    rm -f "$out"
    env "${@:3}" "${qemu[@]}" -plugin "$work/insn_count.so,out=$out" "$bench" "$work/model.onnx" "$1" "$2" >/dev/null
    awk '{print $2}' "$out"
  }
  per_image() { # ENGINE [ENV...]
    local lo hi
    lo=$(count "$1" 2 "${@:2}")
    hi=$(count "$1" 22 "${@:2}")
    echo "scale=2; ($hi - $lo) / 20 / 1000000" | bc
  }
  echo "$t (guest instructions per image, millions)"
  case "$t" in
    aarch64*)
      echo "  native, NEON kernels:     $(per_image native)"
      echo "  native, generic kernels:  $(per_image native EDGECP_INFER_ISA=baseline)"
      echo "  tract:                    $(per_image tract)"
      ;;
    armv7*)
      echo "  native (scalar):          $(per_image native)"
      echo "  tract (as under qemu):    $(per_image tract)"
      echo "  tract with NEON:          $(per_image tract TRACT_CPU_ARM32_NEON=true)"
      ;;
  esac
done
