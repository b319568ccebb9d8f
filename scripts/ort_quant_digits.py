#!/usr/bin/env python3
"""Peer rows for the digits CNN: onnxruntime's own static quantization.

Quantizes models/digits_cnn.onnx with onnxruntime.quantization.quantize_static (QDQ format,
MinMax calibration on the whole training split data/digits/train-*, activations uint8), with
int8 and, where this onnxruntime has QuantType.QInt4, int4 weights, each per-tensor and
per-channel; then measures every model's accuracy on the held-out split data/digits/test-*.
The quantized models go to a temporary directory (or --out DIR) and are not part of the repo.

Usage (from the repository root, after scripts/train_digits.py):
    pip install onnxruntime==<version>   # see models/MODELS.md
    python3 scripts/ort_quant_digits.py [--out DIR]
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import logging
import struct
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits_cnn.onnx")
DATA = os.path.join(ROOT, "data", "digits")


def read_idx(path):
    with open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split):
    x = read_idx(os.path.join(DATA, f"{split}-images-idx3-ubyte"))
    y = read_idx(os.path.join(DATA, f"{split}-labels-idx1-ubyte"))
    return (x.astype(np.float32) / np.float32(16.0))[:, None, :, :], y.astype(np.int64)


class Reader(CalibrationDataReader):
    def __init__(self, x, batch=64):
        self.batches = [x[i:i + batch] for i in range(0, x.shape[0], batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"input": self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def accuracy(path, x, y):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    return float((logits.argmax(axis=1) == y).mean())


def weight_bits(path, bits):
    """Bits of stored quantized weights (Conv/Gemm weight initializers only, not biases)."""
    m = onnx.load(path)
    n = 0
    for t in m.graph.initializer:
        if t.name.endswith("weight_quantized") or (t.name.endswith("weight") and t.data_type != 1):
            n += int(np.prod(t.dims))
    return n * bits


def main():
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advisory warnings
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="directory for the quantized models (default: a temp dir)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="ort_quant_digits_")
    os.makedirs(out, exist_ok=True)

    x_tr, _ = load("train")
    x_te, y_te = load("test")
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}; calibration {x_tr.shape[0]} train images,"
          f" evaluation {x_te.shape[0]} test images")

    rows = [("float32", "32 bit", "float", accuracy(MODEL, x_te, y_te), None)]
    configs = [("int8", QuantType.QInt8, 8)]
    if hasattr(QuantType, "QInt4"):
        configs.append(("int4", QuantType.QInt4, 4))
    else:
        print("this onnxruntime has no QuantType.QInt4: int4 rows skipped")

    for wname, wtype, bits in configs:
        for per_channel in (False, True):
            gran = "per-channel" if per_channel else "per-tensor"
            path = os.path.join(out, f"digits_cnn_{wname}_{gran}.onnx")
            quantize_static(
                MODEL, path, Reader(x_tr),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=wtype,
                per_channel=per_channel,
                calibrate_method=CalibrationMethod.MinMax,
            )
            acc = accuracy(path, x_te, y_te)
            rows.append((f"onnxruntime quantize_static QDQ MinMax, {gran}", wname, "uint8", acc,
                         weight_bits(path, bits)))

    n = len(y_te)
    print()
    print("| model | weights | activations | accuracy (held-out, n=%d) | weight bits |" % n)
    print("|---|---|---|---|---|")
    for name, w, a, acc, wb in rows:
        print(f"| {name} | {w} | {a} | {100 * acc:.2f} % ({int(round(acc * n))}/{n}) |"
              f" {'' if wb is None else f'{wb:,}'} |")
    print(f"\nquantized models in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
