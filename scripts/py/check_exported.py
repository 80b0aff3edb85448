"""Independent check of the exporter's files: onnx.checker, onnxruntime and the LiteRT
interpreter run them on the inputs the Rust test wrote and compare with the trained
network's outputs.

Exchange folder (argument 1): model.onnx, model.tflite (optional), input.f32 (raw
little-endian float32, NHWC), expected.f32 (float32 [N, E]), shape.json {"n","side","dim"}.
Prints one JSON object: max |difference| per runtime and batch size.
"""
import json
import os
import sys

import numpy as np


def main(d):
    shape = json.load(open(os.path.join(d, "shape.json")))
    n, s, e = shape["n"], shape["side"], shape["dim"]
    x = np.fromfile(os.path.join(d, "input.f32"), dtype="<f4").reshape(n, s, s, 3)
    want = np.fromfile(os.path.join(d, "expected.f32"), dtype="<f4").reshape(n, e)
    out = {}

    import onnx
    import onnxruntime as ort

    path = os.path.join(d, "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    out["onnx_checker"] = "ok"
    out["onnx_opset"] = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    y = sess.run(None, {name: x})[0]
    out["onnxruntime_batch_n"] = float(np.abs(y - want).max())
    y1 = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(n)])
    out["onnxruntime_batch_1"] = float(np.abs(y1 - want).max())
    out["onnxruntime_version"] = ort.__version__

    tfl = os.path.join(d, "model.tflite")
    if os.path.exists(tfl):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=tfl, num_threads=2)
        inp = it.get_input_details()[0]
        outp = it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], [n, s, s, 3])
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        y = it.get_tensor(outp["index"])
        out["litert_batch_n"] = float(np.abs(y - want).max())
        ops = sorted({op["op_name"] for op in it._get_ops_details()})
        out["litert_ops"] = ops
    q = os.path.join(d, "model_int8.tflite")
    if os.path.exists(q):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=q, num_threads=2)
        inp = it.get_input_details()[0]
        outp = it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], [n, s, s, 3])
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        y = it.get_tensor(outp["index"])
        out["litert_int8_max_abs"] = float(np.abs(y - want).max())
        cos = (y * want).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
        out["litert_int8_min_cosine"] = float(cos.min())
        out["litert_int8_ops"] = sorted({op["op_name"] for op in it._get_ops_details()})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
