"""The Python baseline of `edge-agent bench`: onnxruntime + NumPy ICP (nearest centroid,
standard p-values, pooled calibration) on the same bundle, same inputs. Prints one JSON
object: p50/p99 batch-1 latency (us) and batch-64 throughput (images/s).

usage: bench_ort.py BUNDLE_DIR [--threads 2] [--iters 500]
"""

import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import onnxruntime as ort


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    dt = {"F32": np.float32, "F64": np.float64, "U16": np.uint16, "U8": np.uint8}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a : 8 + n + b], dtype=dt[t["dtype"]]).reshape(t["shape"])
    return out


class Icp:
    def __init__(self, centroids, scores):
        self.c = centroids.astype(np.float32)
        self.s = np.sort(scores)
        self.n = len(scores)

    def __call__(self, emb, epsilon):
        d = np.sqrt(np.maximum(((emb[:, None, :] - self.c[None, :, :]) ** 2).sum(-1), 0.0))
        # alpha(x, y) = d_y / min_{c != y} d_c
        order = np.argsort(d, axis=1)
        m1 = d[np.arange(len(d)), order[:, 0]]
        m2 = d[np.arange(len(d)), order[:, 1]]
        other = np.where(np.arange(d.shape[1])[None, :] == order[:, :1], m2[:, None], m1[:, None])
        alpha = d / np.maximum(other, 1e-30)
        ge = self.n - np.searchsorted(self.s, alpha, side="left")
        p = (ge + 1) / (self.n + 1)
        return p, p > epsilon


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=500)
    a = ap.parse_args()
    m = json.load(open(os.path.join(a.bundle, "manifest.json")))
    ref = read_safetensors(os.path.join(a.bundle, m["reference"]))
    gold = read_safetensors(os.path.join(a.bundle, m["golden"]["file"]))
    icp = Icp(ref["centroids"], ref[m["icp"]["calibration_scores"]])
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(a.bundle, "model.onnx"), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = gold["inputs"].astype(np.float32)
    eps = m["icp"]["epsilon"]
    lat = []
    for i in range(a.iters + 50):
        xi = x[i % len(x)][None]
        t = time.perf_counter()
        emb = sess.run(None, {name: xi})[0]
        icp(emb, eps)
        if i >= 50:
            lat.append(time.perf_counter() - t)
    lat.sort()
    xb = np.concatenate([x] * (64 // len(x) + 1))[:64]
    for _ in range(5):
        icp(sess.run(None, {name: xb})[0], eps)
    n = max(20, a.iters // 10)
    t = time.perf_counter()
    for _ in range(n):
        icp(sess.run(None, {name: xb})[0], eps)
    thr = 64 * n / (time.perf_counter() - t)
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "threads": a.threads,
        "p50_b1_us": lat[len(lat) // 2] * 1e6,
        "p99_b1_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
        "throughput_b64": thr,
    }))


if __name__ == "__main__":
    sys.exit(main())
