#!/usr/bin/env bash
# Cloud-stack benchmark on real GTSRB: the tracking overhead (one training run with MariaDB
# registry + S3 (s3s-fs) data/artifacts + MLflow, against the embedded default: SQLite and
# local folders), then a sweep of 4 trials run by 2 workers through the same services,
# `trainer best` over it, and what MLflow's REST API returns for the sweep.
#
#   scripts/bench_cloud.sh [EPOCHS]     (default 2 epochs of 200 steps per run)
#
# Needs: release binaries (cargo build --release -p trainer -p exporter), MariaDB on
# 127.0.0.1:3306 (root, no password), GTSRB under $EDGECP_DATA (default ../shared/data), the
# s3s-fs binary and the MLflow venv that scripts/test.sh installs. Prints figures; writes
# its work to $BENCH_DIR (default /tmp/edgecp-bench-cloud).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
epochs=${1:-2}
export EDGECP_CACHE=${EDGECP_CACHE:-$HOME/.cache/edgecp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$EDGECP_CACHE/target}
data=${EDGECP_DATA:-$(cd .. && pwd)/shared/data}
bin=${BENCH_BIN:-$root/target/release}
work=${BENCH_DIR:-/tmp/edgecp-bench-cloud}
s3s=${EDGECP_S3S_FS:-$EDGECP_CACHE/s3s-fs-0.14.1/bin/s3s-fs}
py=$(scripts/pyenv.sh scripts/requirements-mlflow.txt)
for f in "$bin/trainer" "$bin/exporter" "$s3s"; do
  [ -x "$f" ] || { echo "missing $f (build with cargo build --release -p trainer -p exporter; run scripts/test.sh once for s3s-fs)" >&2; exit 2; }
done
[ -d "$data/gtsrb" ] || { echo "GTSRB not found at $data/gtsrb (set EDGECP_DATA)" >&2; exit 2; }

rm -rf "$work"; mkdir -p "$work/s3/edgecp" "$work/s3/mlflow" "$work/local"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

s3port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mlport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3port AWS_ALLOW_HTTP=true
setsid "$s3s" --host 127.0.0.1 --port "$s3port" --access-key bench --secret-key bench-secret "$work/s3" >"$work/s3s.log" 2>&1 &
pids+=($!)

db=edgecp_bench_$$; mldb=edgecp_bench_mlflow_$$
mysql -h127.0.0.1 -uroot -e "CREATE DATABASE $db CHARACTER SET utf8mb4; CREATE DATABASE $mldb CHARACTER SET utf8mb4"
trap 'cleanup; mysql -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $db; DROP DATABASE IF EXISTS $mldb" || true' EXIT
MLFLOW_S3_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_DEFAULT_REGION=us-east-1 setsid "$(dirname "$py")/mlflow" server \
  --host 127.0.0.1 --port "$mlport" --workers 1 \
  --backend-store-uri "mysql+pymysql://root@127.0.0.1:3306/$mldb" --default-artifact-root s3://mlflow/ \
  >"$work/mlflow.log" 2>&1 &
pids+=($!)
mlflow=http://127.0.0.1:$mlport
for _ in $(seq 1 180); do curl -sf "$mlflow/health" >/dev/null && break; sleep 1; done
curl -sf "$mlflow/health" >/dev/null || { echo "mlflow did not start: $work/mlflow.log" >&2; exit 1; }
registry="mysql://root@127.0.0.1:3306/$db"

cd "$work"
echo "== ingest GTSRB to a local folder and to S3" >&2
"$bin/trainer" ingest --source "u8:$data/gtsrb" --out local/datasets >/dev/null
"$bin/trainer" ingest --source "u8:$data/gtsrb" --out s3://edgecp/datasets >/dev/null

common=(--set "epochs=$epochs" --experiment overhead --json)
now() { date +%s.%N; }
embedded_s=0; cloud_s=0
for rep in 1 2; do
  echo "== training run $rep, embedded default (SQLite, local folders)" >&2
  t0=$(now)
  "$bin/trainer" --registry "sqlite://$work/local/registry.db?mode=rwc" train --data local/datasets \
    --artifacts local/artifacts "${common[@]}" > embedded.json
  t1=$(now)
  echo "== the same run $rep with MariaDB + S3 + MLflow" >&2
  "$bin/trainer" --registry "$registry" train --data s3://edgecp/datasets --artifacts s3://edgecp/runs \
    --mlflow "$mlflow" "${common[@]}" > cloud.json
  t2=$(now)
  echo "run $rep: embedded $(echo "$t1 - $t0" | bc -l) s, cloud $(echo "$t2 - $t1" | bc -l) s" >&2
  embedded_s=$(echo "$embedded_s + $t1 - $t0" | bc -l); cloud_s=$(echo "$cloud_s + $t2 - $t1" | bc -l)
done

echo "== sweep of 4 trials, 2 workers" >&2
"$bin/exporter" keygen --out keys >/dev/null
cat > sweep.toml <<EOF
experiment = "gtsrb-sweep"
dataset = "s3://edgecp/datasets"
method = "grid"
[base]
epochs = $epochs
[grid]
"model.embedding_dim" = [16, 32, 64, 128]
EOF
"$bin/trainer" --registry "$registry" sweep --spec sweep.toml --name gtsrb4 >/dev/null
t3=$(now)
workers=()
for w in 1 2; do
  mkdir -p "w$w"
  (cd "w$w" && RAYON_NUM_THREADS=1 "$bin/trainer" --registry "$registry" worker --sweep gtsrb4 --exit-when-done \
     --poll-secs 2 --key ../keys/signing.key --artifacts s3://edgecp/runs --bundles s3://edgecp/bundles \
     --mlflow "$mlflow" --json > out.jsonl 2> err.log) &
  workers+=($!)
done
wait "${workers[@]}"
t4=$(now)
sweep_s=$(echo "$t4 - $t3" | bc -l)
"$bin/trainer" --registry "$registry" sweep --show gtsrb4 > sweep-show.txt
"$bin/trainer" --registry "$registry" best --metric validation_silhouette --experiment gtsrb-sweep --json > best.json
"$py" "$root/scripts/py/mlflow_runs.py" --tracking-uri "$mlflow" --experiment gtsrb-sweep > mlflow-sweep.json

python3 - "$embedded_s" "$cloud_s" "$sweep_s" <<'EOF'
import json, sys
emb, cloud, sweep = map(float, sys.argv[1:4])
e = json.loads(open("embedded.json").read().strip().splitlines()[-1])
c = json.loads(open("cloud.json").read().strip().splitlines()[-1])
print(f"tracking overhead (2 runs each, alternating): embedded {emb:.1f} s, MariaDB+S3+MLflow {cloud:.1f} s, ratio {cloud/emb:.3f}")
print(f"  training only: {e['training']['seconds']:.1f} s vs {c['training']['seconds']:.1f} s; "
      f"NC accuracy {e['nc_accuracy']:.4f} vs {c['nc_accuracy']:.4f}; MLflow missing: {c['mlflow']['missing']}")
best = json.loads(open("best.json").read().strip().splitlines()[-1])
ml = json.load(open("mlflow-sweep.json"))
print(f"sweep of 4 trials with 2 workers: {sweep:.1f} s")
print(open("sweep-show.txt").read().rstrip())
rows = []
for r in ml["runs"]:
    rows.append((r["params"].get("model.embedding_dim"), r["metrics"].get("validation_silhouette"), r["status"],
                 len(r["history"].get("train_loss", [])), len(r["artifacts"]), r["tags"].get("edgecp.run_id")))
rows.sort(key=lambda x: -(x[1] or -9))
print("MLflow (REST, MLflow's client): E, validation_silhouette, status, train_loss points, files, registry run")
for row in rows:
    print("  ", *row)
best_run = best.get("run", {}).get("id") or best.get("run_id")
top = rows[0][5] if rows else None
print(f"trainer best: {best_run} (validation_silhouette {best.get('value', best.get('metric_value'))}); "
      f"highest in MLflow: {top}; agree: {best_run == top}; MLflow runs: {len(rows)}")
EOF
