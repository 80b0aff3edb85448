"""Latency and throughput of onnxruntime and the LiteRT interpreter on the exporter's
files (the other half of `exporter bench`).

Argument 1: a folder with model.onnx, model.tflite and bench.json
{"side", "threads", "batches": [1, 64], "seconds"}. Prints one JSON object: per runtime and
batch, median seconds per call and images/s.
"""
import json
import os
import sys
import time

import numpy as np


def timeit(fn, seconds):
    fn()
    fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), len(times)


def main(d):
    cfg = json.load(open(os.path.join(d, "bench.json")))
    s, threads, secs = cfg["side"], cfg["threads"], cfg["seconds"]
    rng = np.random.default_rng(0)
    out = {}
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    from ai_edge_litert.interpreter import Interpreter

    for b in cfg["batches"]:
        x = rng.integers(0, 256, size=(b, s, s, 3)).astype(np.float32)
        med, n = timeit(lambda: sess.run(None, {name: x}), secs)
        out[f"onnxruntime_b{b}"] = {"seconds": med, "images_per_sec": b / med, "calls": n}
        it = Interpreter(model_path=os.path.join(d, "model.tflite"), num_threads=threads)
        inp = it.get_input_details()[0]
        outp = it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], [b, s, s, 3])
        it.allocate_tensors()

        def run_litert():
            it.set_tensor(inp["index"], x)
            it.invoke()
            return it.get_tensor(outp["index"])

        med, n = timeit(run_litert, secs)
        out[f"litert_b{b}"] = {"seconds": med, "images_per_sec": b / med, "calls": n}
    out["onnxruntime_version"] = ort.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
