#!/usr/bin/env python3
"""Reference p-values from crepes 0.8.0 for shared/tests/icp_reference.rs.

Reads from DIR (written by the Rust test):
  meta.json         {"n_cal": int, "n_test": int, "n_classes": int, "seed": int}
  cal_scores.f64    n_cal little-endian f64 calibration scores
  cal_labels.u16    n_cal little-endian u16 calibration labels
  test_scores.f64   n_test x n_classes little-endian f64 test scores (row-major)
Writes into DIR (all n_test x n_classes little-endian f64, row-major):
  p_standard, p_smoothed, taus_smoothed,
  p_mondrian_standard, p_mondrian_smoothed, taus_mondrian
and prints a one-line JSON summary.

Every p-value comes from crepes' own calls:
  pooled:   ConformalClassifier().fit(alphas_cal).predict_p(alphas_test, smoothing=..., seed=...)
  Mondrian: crepes' class-conditional recipe (as WrapClassifier(class_cond=True) does):
            ConformalClassifier().fit(alphas_cal, bins=y_cal) and, for each class c,
            predict_p(alphas_test, bins=np.full(n, c), ...)[:, c]
crepes draws its smoothing taus as np.random.rand(n_test, n_classes) right after
np.random.seed(seed) (crepes.base.p_values_batch); the taus written here are that same
draw, so the Rust side can reproduce crepes' smoothed p-values exactly and the test
compares against crepes' actual output, not against a re-implementation.
"""
import json
import sys
from pathlib import Path

import numpy as np
import crepes
from crepes import ConformalClassifier


def main() -> None:
    d = Path(sys.argv[1])
    meta = json.loads((d / "meta.json").read_text())
    n_cal, n, c, seed = meta["n_cal"], meta["n_test"], meta["n_classes"], meta["seed"]
    a_cal = np.fromfile(d / "cal_scores.f64", dtype="<f8")
    y_cal = np.fromfile(d / "cal_labels.u16", dtype="<u2").astype(np.int64)
    a_test = np.fromfile(d / "test_scores.f64", dtype="<f8").reshape(n, c)
    assert a_cal.shape == (n_cal,) and y_cal.shape == (n_cal,)

    out = {}
    cc = ConformalClassifier().fit(a_cal)
    out["p_standard"] = cc.predict_p(a_test, smoothing=False)
    out["p_smoothed"] = cc.predict_p(a_test, smoothing=True, seed=seed)
    np.random.seed(seed)
    out["taus_smoothed"] = np.random.rand(n, c)

    cm = ConformalClassifier().fit(a_cal, bins=y_cal)
    pm_std = np.zeros((n, c))
    pm_smo = np.zeros((n, c))
    taus_m = np.zeros((n, c))
    for k in range(c):
        bins = np.full(n, k)
        pm_std[:, k] = cm.predict_p(a_test, bins=bins, smoothing=False)[:, k]
        s = seed + 1 + k
        pm_smo[:, k] = cm.predict_p(a_test, bins=bins, smoothing=True, seed=s)[:, k]
        np.random.seed(s)
        taus_m[:, k] = np.random.rand(n, c)[:, k]
    out["p_mondrian_standard"] = pm_std
    out["p_mondrian_smoothed"] = pm_smo
    out["taus_mondrian"] = taus_m

    for name, arr in out.items():
        np.ascontiguousarray(arr, dtype="<f8").tofile(d / name)
    print(json.dumps({"crepes": getattr(crepes, "__version__", "?"), "n_cal": n_cal,
                      "n_test": n, "n_classes": c}))


if __name__ == "__main__":
    main()
