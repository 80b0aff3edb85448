#!/usr/bin/env python3
"""Reference silhouette from scikit-learn for shared/tests/silhouette_reference.rs.

Reads from DIR: meta.json {"n": int, "dim": int}, x.f32 (n x dim little-endian f32,
row-major) and labels.u16 (n little-endian u16). The f32 values are widened to f64
(exactly), so scikit-learn computes in double precision. Writes samples.f64 (n values of
silhouette_samples) and prints {"score": silhouette_score(...)} as JSON.
"""
import json
import sys
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import silhouette_samples, silhouette_score


def main() -> None:
    d = Path(sys.argv[1])
    meta = json.loads((d / "meta.json").read_text())
    n, dim = meta["n"], meta["dim"]
    x = np.fromfile(d / "x.f32", dtype="<f4").reshape(n, dim).astype(np.float64)
    labels = np.fromfile(d / "labels.u16", dtype="<u2").astype(np.int64)
    score = float(silhouette_score(x, labels, metric="euclidean"))
    samples = silhouette_samples(x, labels, metric="euclidean")
    np.ascontiguousarray(samples, dtype="<f8").tofile(d / "samples.f64")
    print(json.dumps({"score": score, "sklearn": sklearn.__version__}))


if __name__ == "__main__":
    main()
