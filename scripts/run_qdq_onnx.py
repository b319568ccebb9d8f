#!/usr/bin/env python3
"""Check and run a QDQ model exported by fixq (QuantizedModel::to_onnx_qdq) in onnxruntime.

    python3 scripts/run_qdq_onnx.py MODEL.onnx INPUT.npy OUT_DIR

1. onnx.checker.check_model(full_check=True): the ONNX structural check plus shape inference.
2. Runs INPUT (float32, the model's input layout) through two CPU sessions with one thread:
   - "optimized": onnxruntime's default optimizations (ORT_ENABLE_ALL), which fuse the
     DequantizeLinear -> op -> QuantizeLinear groups into integer kernels (QLinearConv, ...);
   - "reference": no graph optimizations, every QuantizeLinear/DequantizeLinear run as written.
3. Writes OUT_DIR/ort_optimized.npy and OUT_DIR/ort_reference.npy (float32) and prints one line per
   session with the operator counts of the graph it ran.

Needs the pinned packages: pip install -r scripts/requirements.txt
Exit codes: 0 ok, 2 usage, 3 a package is missing, 4 the checker refused the model.
"""
import collections
import os
import sys

PIP = "python3 -m pip install -r scripts/requirements.txt"

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:  # pragma: no cover - the message is the point
    print(f"run_qdq_onnx.py: {e}; install the pinned packages with: {PIP}", file=sys.stderr)
    sys.exit(3)


def session(path, level, optimized_path):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def op_counts(path):
    m = onnx.load(path)
    c = collections.Counter(n.op_type for n in m.graph.node)
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    model_path, input_path, out_dir = sys.argv[1:]
    model = onnx.load(model_path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        print(f"run_qdq_onnx.py: onnx.checker refused {model_path}: {e}", file=sys.stderr)
        sys.exit(4)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    print(f"checker: ok (ir_version {model.ir_version}, opset {opset}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__})")
    x = np.load(input_path).astype(np.float32)
    for name, level in [("optimized", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                        ("reference", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)]:
        ran = os.path.join(out_dir, f"ort_{name}_graph.onnx")
        sess = session(model_path, level, ran)
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
        np.save(os.path.join(out_dir, f"ort_{name}.npy"), np.asarray(y, dtype=np.float32))
        print(f"{name}: {op_counts(ran)}")


if __name__ == "__main__":
    main()
