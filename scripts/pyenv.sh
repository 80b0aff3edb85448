#!/usr/bin/env bash
# Creates (once per requirements hash) the Python venv that tests and benchmarks use to
# compare against NumPy, scikit-learn and crepes, and prints its python path.
# The venv lives under the cargo target folder, never system-wide.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../target}
req=$here/requirements-test.txt
key=$(sha256sum "$req" | cut -c1-12)
venv=$target/venv-$key
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "setting up Python venv $venv" >&2
  rm -rf "$venv"
  mkdir -p "$target"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
