#!/usr/bin/env bash
# Creates (once per requirements hash) a Python venv and prints its python path.
#   scripts/pyenv.sh                                  tests: NumPy, scikit-learn, crepes
#   scripts/pyenv.sh scripts/requirements-bench.txt   benchmarks: PyTorch
# The venv lives under the cargo target folder, never system-wide.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../target}
req=${1:-$here/requirements-test.txt}
key=$(sha256sum "$req" | cut -c1-12)
name=$(basename "$req" .txt)
name=${name#requirements-}
venv=$target/venv-$name-$key
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "setting up Python venv $venv" >&2
  rm -rf "$venv"
  mkdir -p "$target"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
