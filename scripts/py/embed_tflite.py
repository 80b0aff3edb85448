"""Embeddings of image splits through the LiteRT interpreter (float32 and int8 .tflite
files), for `exporter tflite --int8`'s accuracy and ICP figures.

Argument 1: a folder with job.json {"side", "models": [file, ...], "splits": {name: n}} and
<split>.u8 (raw NHWC RGB u8). Writes <model>.<split>.f32 (float32 [n, E]) and prints one
JSON object with the seconds spent.
"""
import json
import os
import sys
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

BATCH = 256


def main(d):
    job = json.load(open(os.path.join(d, "job.json")))
    s = job["side"]
    t0 = time.perf_counter()
    for model in job["models"]:
        it = Interpreter(model_path=os.path.join(d, model), num_threads=job.get("threads", 2))
        inp = it.get_input_details()[0]
        outp = it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], [BATCH, s, s, 3])
        it.allocate_tensors()
        for split, n in job["splits"].items():
            x = np.fromfile(os.path.join(d, f"{split}.u8"), dtype=np.uint8).reshape(n, s, s, 3)
            outs = []
            for i in range(0, n, BATCH):
                chunk = x[i : i + BATCH].astype(np.float32)
                m = len(chunk)
                if m < BATCH:
                    chunk = np.concatenate([chunk, np.zeros((BATCH - m, s, s, 3), np.float32)])
                it.set_tensor(inp["index"], chunk)
                it.invoke()
                outs.append(it.get_tensor(outp["index"])[:m].copy())
            np.concatenate(outs).astype("<f4").tofile(os.path.join(d, f"{model}.{split}.f32"))
    print(json.dumps({"seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main(sys.argv[1])
