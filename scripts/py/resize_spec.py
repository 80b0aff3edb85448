#!/usr/bin/env python3
"""An independent implementation of docs/BUNDLE.md "Image resizing", written from that text
with NumPy only, for shared/tests/resize_spec.rs (which asserts bit-for-bit equality with
`shared::image::resize_square`).

    resize_spec.py DIR

DIR/cases.json is a list of cases; each has "dst": [w, h] and either
  "src": [W, H], "offset": N   the source is W*H*3 bytes of DIR/input.u8 from byte N
                               (raw RGB, row-major, HWC), or
  "file": PATH                 the source is a PPM file (P6 or P3), decoded as the text says.
The outputs (w*h*3 bytes each, HWC RGB) are written one after another, in case order, to
DIR/output.u8. Prints a JSON summary (cases, bytes) on success.

Importable: `resize(img, w, h)` takes and returns uint8 arrays of shape (H, W, 3);
`read_ppm(bytes)` decodes a PPM.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

MAX_PRECISION = 21  # 32 - 8 - 2 - 1: the loop below tries p = 0 .. 21
COEFF_LIMIT = 1 << 15  # weights are 16-bit signed integers


def round_half_away(x: float) -> int:
    """Round to nearest, halves away from zero, exactly (no x + 0.5 in floating point)."""
    if x < 0:
        return -round_half_away(-x)
    f = math.floor(x)
    return f + (1 if x - f >= 0.5 else 0)  # x - f is exact for x >= 0


def triangle(t: float) -> float:
    t = abs(t)
    return 1.0 - t if t < 1.0 else 0.0


def axis_weights(n: int, m: int):
    """The fixed-point weights of one axis, resized from n to m samples.

    Returns (p, rows): rows[i] = (first, [k_first, k_first+1, ...]) for output index i."""
    scale = n / m
    fs = max(scale, 1.0)
    radius = 1.0 * fs
    recip = 1.0 / fs
    real = []
    for i in range(m):
        c = (i + 0.5) * scale
        lo = max(math.floor(c - radius), 0)
        hi = min(math.ceil(c + radius), n)
        center = c - 0.5
        ws = [triangle((j - center) * recip) for j in range(lo, hi)]
        ww = 0.0
        for w in ws:  # left to right, in f64
            ww += w
        if ww != 0.0:
            ws = [w / ww for w in ws]
        real.append((lo, ws))
    biggest = max(w for _, ws in real for w in ws)
    p = 0
    for cand in range(MAX_PRECISION + 1):
        p = cand
        if round_half_away(biggest * float(1 << (cand + 1))) >= COEFF_LIMIT:
            break
    unit = float(1 << p)
    rows = [(lo, [round_half_away(w * unit) for w in ws]) for lo, ws in real]
    return p, rows


def resize_axis0(a: np.ndarray, m: int) -> np.ndarray:
    """Resizes a (n, ..., 3) uint8 array along its first axis to m, as one pass."""
    n = a.shape[0]
    p, rows = axis_weights(n, m)
    k = np.zeros((m, n), dtype=np.int64)
    for i, (lo, ks) in enumerate(rows):
        k[i, lo : lo + len(ks)] = ks
    flat = a.reshape(n, -1).astype(np.int64)
    acc = (1 << (p - 1)) + k @ flat  # exact: integers, far below 2**63
    out = np.clip(acc >> p, 0, 255)  # >> is floor division by 2**p
    return out.astype(np.uint8).reshape((m,) + a.shape[1:])


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resizes an (H, W, 3) uint8 image to (h, w, 3): horizontal pass, then vertical."""
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    if w == 0 or h == 0:
        return np.zeros((h, w, 3), dtype=np.uint8)
    H, W = img.shape[:2]
    assert W > 0 and H > 0
    out = img
    if w != W:
        # horizontal: resize along the column axis; the intermediate is uint8
        out = resize_axis0(out.transpose(1, 0, 2), w).transpose(1, 0, 2)
    if h != H:
        out = resize_axis0(out, h)
    return np.ascontiguousarray(out)


def read_ppm(data: bytes) -> np.ndarray:
    """Decodes a P6 or P3 PPM to an (H, W, 3) uint8 array (maxval scaling as the text says)."""
    magic = data[:2]
    assert magic in (b"P6", b"P3"), magic
    pos = 2
    fields = []
    while len(fields) < 3:
        # whitespace and comments, then a decimal number
        while True:
            if data[pos : pos + 1].isspace():
                pos += 1
            elif data[pos : pos + 1] == b"#":
                while data[pos : pos + 1] not in (b"\n", b"\r", b""):
                    pos += 1
            else:
                break
        start = pos
        while data[pos : pos + 1].isdigit():
            pos += 1
        fields.append(int(data[start:pos]))
    width, height, maxval = fields
    count = width * height * 3
    if magic == b"P6":
        pos += 1  # exactly one whitespace byte
        if maxval < 256:
            v = np.frombuffer(data, dtype=np.uint8, count=count, offset=pos).astype(np.int64)
        else:
            v = np.frombuffer(data, dtype=">u2", count=count, offset=pos).astype(np.int64)
    else:
        text = data[pos:].decode("ascii")
        words = [ln.split("#", 1)[0] for ln in text.splitlines()]
        v = np.array(" ".join(words).split(), dtype=np.int64)
        assert v.size == count
    if maxval != 255:
        v = np.minimum((v * 255 + maxval // 2) // maxval, 255)
    return v.astype(np.uint8).reshape(height, width, 3)


def main() -> None:
    d = Path(sys.argv[1])
    cases = json.loads((d / "cases.json").read_text())
    raw = (d / "input.u8").read_bytes()
    outputs = []
    for case in cases:
        w, h = case["dst"]
        if "file" in case:
            img = read_ppm(Path(case["file"]).read_bytes())
        else:
            W, H = case["src"]
            off = case["offset"]
            img = np.frombuffer(raw, dtype=np.uint8, count=W * H * 3, offset=off)
            img = img.reshape(H, W, 3)
        outputs.append(resize(img, w, h).tobytes())
    blob = b"".join(outputs)
    (d / "output.u8").write_bytes(blob)
    print(json.dumps({"cases": len(cases), "bytes": len(blob)}))


if __name__ == "__main__":
    main()
