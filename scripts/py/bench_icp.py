#!/usr/bin/env python3
"""The Python side of `trainer bench icp`: the same ICP computations in vectorised NumPy
(BLAS distances, argpartition) and scikit-learn's silhouette_score, on the data the Rust
benchmark wrote to DIR. Prints one JSON object (last line of stdout) with its timings and
writes a few outputs back for the agreement checks.

Inputs in DIR (little-endian, row-major): meta.json, centroids.f32 (C x E), refs.f32
(N x E), ref_labels.u16, queries.f32 (B x E), nc_cal.f64 and knn_cal.f64 (calibration
scores), sil_x.f32 (S x E), sil_labels.u16.
Outputs in DIR: np_nc_p.f64 (B x C p-values of the nearest-centroid batch, direct
differences),
np_knn_alpha.f64 (B x C k-NN nonconformity scores).

What is timed is "embeddings in, prediction sets + p-values out", as the Rust side:
 - nearest centroid, standard p-values (#{A >= a} + 1) / (n + 1), at batch 1 (a Python
   loop over single queries, as a service answering one request at a time) and batch B;
   two straightforward formulations of the distances (broadcast difference, BLAS
   |q|^2 + |c|^2 - 2 q.c), the faster one counts;
 - k-NN (k nearest of N references, labels != y), smoothed p-values, batch B: distances
   with BLAS (float32, as the embeddings), np.argpartition, bincount;
 - silhouette_score(X, labels) of scikit-learn on the float32 embeddings (and, for
   reference, on the same values as float64).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import silhouette_score


def load(d, name, dtype, shape=None):
    a = np.fromfile(d / name, dtype=dtype)
    return a.reshape(shape) if shape is not None else a


def rate(fn, items, min_time):
    """items processed per second: warm-up once, then repeat until min_time elapsed."""
    fn()
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= min_time:
            return items * n / el


def main() -> None:
    d = Path(sys.argv[1])
    m = json.loads((d / "meta.json").read_text())
    E, C, N, B, S, k = m["dim"], m["classes"], m["references"], m["batch"], m["silhouette_n"], m["k"]
    eps, min_time, seed = m["epsilon"], m["min_seconds"], m["seed"]
    centroids = load(d, "centroids.f32", "<f4", (C, E))
    refs = load(d, "refs.f32", "<f4", (N, E))
    ref_labels = load(d, "ref_labels.u16", "<u2").astype(np.intp)
    Q = load(d, "queries.f32", "<f4", (B, E))
    nc_cal = np.sort(load(d, "nc_cal.f64", "<f8"))
    knn_cal = np.sort(load(d, "knn_cal.f64", "<f8"))
    sil_x = load(d, "sil_x.f32", "<f4", (S, E))
    sil_labels = load(d, "sil_labels.u16", "<u2").astype(np.intp)
    n_nc, n_knn = len(nc_cal), len(knn_cal)
    cn = (centroids.astype(np.float64) ** 2).sum(1).astype(np.float32)
    rn = (refs.astype(np.float64) ** 2).sum(1).astype(np.float32)
    rng = np.random.default_rng(seed)
    classes = np.arange(C)

    def finish(alpha, cal, smoothed):
        n = len(cal)
        lo = np.searchsorted(cal, alpha, side="left")
        if smoothed:
            hi = np.searchsorted(cal, alpha, side="right")
            tau = rng.random(alpha.shape)
            p = ((n - hi) + tau * ((hi - lo) + 1)) / (n + 1)
        else:
            p = (n - lo + 1) / (n + 1)
        sets = p > eps
        top2 = np.partition(p, -2, axis=1)[:, -2:]
        return p, sets, top2[:, 1], 1.0 - top2[:, 0]

    def nc_alpha(dist):
        part = np.partition(dist, 1, axis=1)
        m1, m2 = part[:, :1], part[:, 1:2]
        den = np.where(dist == m1, m2, m1)
        return dist / den

    def nc_broadcast(q):
        dist = np.sqrt(((q[:, None, :] - centroids[None, :, :]) ** 2).sum(-1, dtype=np.float32)).astype(np.float64)
        return finish(nc_alpha(dist), nc_cal, False)

    def nc_blas(q):
        qn = (q * q).sum(1, dtype=np.float32)
        sq = qn[:, None] + cn[None, :] - 2.0 * (q @ centroids.T)
        dist = np.sqrt(np.maximum(sq, 0.0)).astype(np.float64)
        return finish(nc_alpha(dist), nc_cal, False)

    def knn(q):
        qn = (q * q).sum(1, dtype=np.float32)
        sq = qn[:, None] + rn[None, :] - 2.0 * (q @ refs.T)
        idx = np.argpartition(sq, k - 1, axis=1)[:, :k]
        lab = ref_labels[idx]
        b = q.shape[0]
        counts = np.bincount((np.arange(b)[:, None] * C + lab).ravel(), minlength=b * C).reshape(b, C)
        alpha = (k - counts).astype(np.float64)
        return finish(alpha, knn_cal, True), alpha

    out = {"numpy": np.__version__, "sklearn": sklearn.__version__}
    singles = [Q[i:i + 1] for i in range(B)]

    def batch1(fn):
        def run():
            for q in singles:
                fn(q)
        return run

    out["np_nc_batch1_broadcast_dps"] = rate(batch1(nc_broadcast), B, min_time)
    out["np_nc_batch1_blas_dps"] = rate(batch1(nc_blas), B, min_time)
    out["np_nc_batch1_dps"] = max(out["np_nc_batch1_broadcast_dps"], out["np_nc_batch1_blas_dps"])
    out["np_nc_batch_broadcast_dps"] = rate(lambda: nc_broadcast(Q), B, min_time)
    out["np_nc_batch_blas_dps"] = rate(lambda: nc_blas(Q), B, min_time)
    out["np_nc_batch_dps"] = max(out["np_nc_batch_broadcast_dps"], out["np_nc_batch_blas_dps"])
    out["np_knn_batch_dps"] = rate(lambda: knn(Q), B, min_time)

    # agreement check against the direct-difference variant (the BLAS expansion rounds
    # differently from the Rust side's direct differences, which can move a score across
    # a calibration score: one rank, 1/(n+1))
    p_nc = nc_broadcast(Q)[0]
    np.ascontiguousarray(p_nc, dtype="<f8").tofile(d / "np_nc_p.f64")
    np.ascontiguousarray(knn(Q)[1], dtype="<f8").tofile(d / "np_knn_alpha.f64")

    t = []
    for _ in range(m["silhouette_repeats"]):
        t0 = time.perf_counter()
        s32 = silhouette_score(sil_x, sil_labels)
        t.append(time.perf_counter() - t0)
    out["sk_silhouette_f32_s"] = min(t)
    out["sk_silhouette_f32_score"] = float(s32)
    if m.get("sklearn_f64", True):
        x64 = sil_x.astype(np.float64)
        t = []
        for _ in range(m["silhouette_repeats"]):
            t0 = time.perf_counter()
            s64 = silhouette_score(x64, sil_labels)
            t.append(time.perf_counter() - t0)
        out["sk_silhouette_f64_s"] = min(t)
        out["sk_silhouette_f64_score"] = float(s64)
        out["sk_silhouette_s"] = min(out["sk_silhouette_f32_s"], out["sk_silhouette_f64_s"])
    else:
        out["sk_silhouette_s"] = out["sk_silhouette_f32_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
