#!/usr/bin/env python3
"""Regenerate the onnxruntime cross-check fixtures under tests/fixtures/.

Needs `pip install onnxruntime numpy onnx`; CI does not run this, it only reads the committed output.
Run from the crate root:  python3 scripts/onnxruntime_fixture.py

Writes:
  lenet5_ort_indices.npy   int64 [16]      MNIST test-set indices used (the first 16)
  lenet5_ort_logits.npy    float32 [16,10] onnxruntime logits of ../shared/models/lenet5_mnist.onnx
  ops_model.onnx           a small synthetic model using the other supported operators
  ops_input.npy            float32 [2,3,8,8] its input (seeded)
  ops_output.npy           float32 [2,5]     its onnxruntime output
"""
import gzip
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
OUT = os.path.join(ROOT, "tests", "fixtures")
N_IMAGES = 16


def session(model_bytes):
    opts = ort.SessionOptions()
    # Keep onnxruntime's arithmetic close to the graph as written (no fusions that reorder sums).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def lenet():
    with gzip.open(os.path.join(SHARED, "data", "mnist", "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    assert int.from_bytes(raw[:4], "big") == 0x803
    n, rows, cols = (int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, 1, rows, cols)
    indices = np.arange(N_IMAGES, dtype=np.int64)
    x = images[indices].astype(np.float32) / np.float32(255.0)
    with open(os.path.join(SHARED, "models", "lenet5_mnist.onnx"), "rb") as f:
        sess = session(f.read())
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.save(os.path.join(OUT, "lenet5_ort_indices.npy"), indices)
    np.save(os.path.join(OUT, "lenet5_ort_logits.npy"), logits.astype(np.float32))
    print("lenet5 logits", logits.shape, "argmax", logits.argmax(1).tolist())


def ops_model():
    rng = np.random.default_rng(20160611)
    inits = []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def bn_params(prefix, c):
        return [
            init(prefix + "_gamma", rng.uniform(0.5, 1.5, c).astype(np.float32)),
            init(prefix + "_beta", randn(c) * 0.1),
            init(prefix + "_mean", randn(c) * 0.1),
            init(prefix + "_var", rng.uniform(0.5, 2.0, c).astype(np.float32)),
        ]

    n = helper.make_node
    nodes = [
        # branch a: Conv (no bias) -> BN -> Relu -> Pad -> Slice -> AveragePool
        n("Conv", ["x", init("wa", randn(4, 3, 3, 3) * 0.3)], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["ca"] + bn_params("bna", 4), ["ba"], name="bn_a", epsilon=1e-3),
        n("Relu", ["ba"], ["ra"], name="relu_a"),
        n("Pad", ["ra", init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)),
                  init("pad_value", np.array(0.25, np.float32))], ["pa"], name="pad_a"),
        n("Slice", ["pa", init("starts", np.array([1, 2], np.int64)), init("ends", np.array([9, 10], np.int64)),
                    init("axes", np.array([2, 3], np.int64))], ["sa"], name="slice_a"),
        n("AveragePool", ["sa"], ["aa"], name="avg_a", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          count_include_pad=1),
        # branch b: strided 1x1 Conv with bias -> BN -> channel-reversing Slice -> Clip(0, 1) via Constants
        n("Conv", ["x", init("wb", randn(4, 3, 1, 1)), init("bb", randn(4) * 0.1)], ["cb"], name="conv_b",
          strides=[2, 2]),
        n("BatchNormalization", ["cb"] + bn_params("bnb", 4), ["bbn"], name="bn_b"),
        n("Slice", ["bbn", init("rs", np.array([-1], np.int64)), init("re", np.array([-100], np.int64)),
                    init("ra_", np.array([1], np.int64)), init("rst", np.array([-1], np.int64))], ["rb"],
          name="reverse_b"),
        n("Constant", [], ["clip_min"], name="cmin", value=numpy_helper.from_array(np.array(0.0, np.float32))),
        n("Constant", [], ["clip_max"], name="cmax", value=numpy_helper.from_array(np.array(1.0, np.float32))),
        n("Clip", ["rb", "clip_min", "clip_max"], ["clb"], name="clip_b"),
        # join, pool, broadcast add, global pool
        n("Concat", ["aa", "clb"], ["cat"], name="concat", axis=1),
        n("MaxPool", ["cat"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]),
        n("Add", ["mp", init("shift", randn(8, 1, 1) * 0.1)], ["ad"], name="add"),
        n("GlobalAveragePool", ["ad"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["fl"], name="flatten", axis=1),
        n("Constant", [], ["shape3"], name="shape3", value=numpy_helper.from_array(np.array([-1, 2, 4], np.int64))),
        n("Reshape", ["fl", "shape3"], ["r3"], name="reshape3"),
        n("MatMul", ["r3", init("wm", randn(4, 6))], ["mm"], name="matmul"),
        n("Reshape", ["mm", init("shape2", np.array([0, -1], np.int64))], ["r2"], name="reshape2"),
        n("Dropout", ["r2"], ["dr"], name="dropout"),
        n("Gemm", ["dr", init("wg", randn(5, 12) * 0.5), init("bg", randn(5) * 0.1)], ["g"], name="gemm",
          transB=1, alpha=0.75, beta=0.5),
        n("BatchNormalization", ["g"] + bn_params("bng", 5), ["bng_out"], name="bn_g"),
        n("Identity", ["bng_out"], ["y"], name="identity"),
    ]
    graph = helper.make_graph(
        nodes, "fixq_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="fixq-fixture")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (y,) = session(data).run(None, {"x": x})
    with open(os.path.join(OUT, "ops_model.onnx"), "wb") as f:
        f.write(data)
    np.save(os.path.join(OUT, "ops_input.npy"), x)
    np.save(os.path.join(OUT, "ops_output.npy"), y.astype(np.float32))
    print("ops model", len(data), "bytes; output", y.shape, y.ravel()[:5])


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    lenet()
    ops_model()
