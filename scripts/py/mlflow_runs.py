"""Prints, as JSON, everything an MLflow server holds for one experiment, read with
MLflow's own Python client: each run's info, params, tags, latest metrics, the full
history of every metric, and its artifact files (listed from the artifact store).

The end-to-end tests use it to check what `trainer` logged, independently of our client."""
import argparse
import json

from mlflow.tracking import MlflowClient


def list_files(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            out.extend(list_files(client, run_id, f.path))
        else:
            out.append({"path": f.path, "size": f.file_size})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--order-by", default="attributes.start_time ASC")
    args = ap.parse_args()
    client = MlflowClient(tracking_uri=args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(json.dumps({"experiment": None, "runs": []}))
        return
    runs = []
    for r in client.search_runs([exp.experiment_id], order_by=[args.order_by], max_results=1000):
        history = {
            key: [[m.step, m.value] for m in sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: (m.step, m.timestamp))]
            for key in r.data.metrics
        }
        runs.append({
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "artifact_uri": r.info.artifact_uri,
            "params": r.data.params,
            "tags": {k: v for k, v in r.data.tags.items()},
            "metrics": r.data.metrics,
            "history": history,
            "artifacts": list_files(client, r.info.run_id),
        })
    print(json.dumps({"experiment": exp.experiment_id, "artifact_location": exp.artifact_location, "runs": runs}))


if __name__ == "__main__":
    main()
