#!/usr/bin/env python3
"""Per-op ONNX fixtures and random-weight test networks for fixq (issue 11, item 2).

Needs the exact versions in scripts/requirements.txt (`pip install -r scripts/requirements.txt`).
Run from the crate root. Deterministic: every case draws from its own generator, seeded from
SEED and the case name, so adding a case leaves the others' bytes unchanged.

  python3 scripts/op_fixtures.py
      writes tests/fixtures/ops/: one tiny model per op variant (<case>.onnx, <case>.input.npy,
      <case>.output.npy), the test networks resnet_a, mobilenetv2 and squeezenet, and README.md;
      then re-checks everything it wrote (onnx.checker, a fresh onnxruntime session, same output).
  python3 scripts/op_fixtures.py --check
      only the re-check of tests/fixtures/ops/ (or of --out DIR).
  python3 scripts/op_fixtures.py --resnet-depth 20 56 --out DIR
      writes resnet20.onnx / resnet56.onnx (CIFAR ResNet, 3x3 convs 16/32/64 channels, option-A
      shortcuts) with their .input.npy/.output.npy into DIR, prints their weight counts, re-checks them.
      These are for planning-time measurements and are not committed.

The test networks need the CIFAR-10 test images in ../shared/data/cifar10 (their inputs are real
images 0..3; BatchNormalization running statistics are set from images 100..163 so that activations
stay well scaled). The per-op cases need nothing outside the repository.

Every model is run by onnxruntime on CPU with graph optimizations disabled and one thread; its
output is the fixture. Each model's ir_version is the lowest one its opset allows, but at least 4
(IR 3 wants initializers listed as graph inputs; one case, conv_ir3_legacy_inputs, does exactly that).
"""
import argparse
import os
import sys
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10", "test_images_u8_nhwc.npy")
OUT = os.path.join(ROOT, "tests", "fixtures", "ops")
SEED = 20250611
BATCH = 2  # batch of the per-op inputs
INT64_MAX = np.iinfo(np.int64).max
# PyTorch's CIFAR normalisation (torchvision tutorials), applied to the network inputs.
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def session(model_bytes):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def case_rng(name):
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


class Builder:
    """Accumulates nodes and initializers of one graph; small helpers for the common layers."""

    def __init__(self, name, rng):
        self.name = name
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.inputs = []  # (name, declared shape, data)
        self.outputs = []
        self.bns = []  # (X name, mean init, var init) for running-statistics calibration
        self.used = set()
        self.legacy_inputs = False  # IR 3 layout: initializers also listed as graph inputs
        self.weights = 0  # elements of Conv / Gemm / MatMul weight tensors
        self.params = 0  # every other float initializer element a trainer would learn (bias, gamma, beta)

    def fresh(self, base):
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    # -- graph pieces -------------------------------------------------------------------------
    def input(self, shape, scale=1.0, symbolic=True, name="x", data=None):
        declared = ["N"] + list(shape[1:]) if symbolic else list(shape)
        if data is None:
            data = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.used.add(name)
        self.inputs.append((name, declared, data))
        return name

    def init(self, base, array):
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def i64(self, base, values):
        return self.init(base, np.array(values, np.int64))

    def f32(self, base, values):
        return self.init(base, np.array(values, np.float32))

    def const(self, base, array):
        """A Constant node (as PyTorch exports small operands) rather than an initializer."""
        out = self.fresh(base)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out + "_const",
                                           value=numpy_helper.from_array(np.asarray(array), out + "_value")))
        return out

    def node(self, op, inputs, n_out=1, name=None, **attrs):
        base = name or f"{op.lower()}"
        nm = self.fresh(base)
        outs = [nm if k == 0 else self.fresh(f"{nm}_out{k}") for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=nm, **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, name):
        self.outputs.append(name)

    # -- random tensors -----------------------------------------------------------------------
    def randn(self, *shape, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def uniform(self, lo, hi, *shape):
        return self.rng.uniform(lo, hi, shape).astype(np.float32)

    # -- layers -------------------------------------------------------------------------------
    def conv(self, x, cin, cout, k, stride=1, pads=None, dilation=1, group=1, bias=True, name=None,
             auto_pad=None, gain=2.0):
        kh, kw = (k, k) if isinstance(k, int) else k
        fan_in = cin // group * kh * kw
        w = self.randn(cout, cin // group, kh, kw, scale=np.sqrt(gain / fan_in))
        nm = name or "conv"
        ins = [x, self.init(nm + ".weight", w)]
        self.weights += w.size
        if bias:
            ins.append(self.init(nm + ".bias", self.randn(cout, scale=0.1)))
            self.params += cout
        attrs = dict(kernel_shape=[kh, kw])
        if stride != 1:
            attrs["strides"] = [stride, stride] if isinstance(stride, int) else list(stride)
        if dilation != 1:
            attrs["dilations"] = [dilation, dilation]
        if group != 1:
            attrs["group"] = group
        if auto_pad is not None:
            attrs["auto_pad"] = auto_pad
        elif pads is not None:
            attrs["pads"] = [pads] * 4 if isinstance(pads, int) else list(pads)
        return self.node("Conv", ins, name=nm, **attrs)

    def bn(self, x, c, name=None, gamma=(0.5, 1.5), eps=1e-5, calibrate=False):
        nm = name or "bn"
        mean = self.randn(c, scale=0.2)
        var = self.uniform(0.5, 2.0, c)
        ins = [x, self.init(nm + ".weight", self.uniform(*gamma, c)),
               self.init(nm + ".bias", self.randn(c, scale=0.1)),
               self.init(nm + ".running_mean", mean), self.init(nm + ".running_var", var)]
        self.params += 2 * c
        if calibrate:
            self.bns.append((x, ins[3], ins[4]))
        return self.node("BatchNormalization", ins, name=nm, epsilon=eps)

    def gemm(self, x, k, m, name=None, bias=True):
        nm = name or "fc"
        w = self.randn(m, k, scale=np.sqrt(1.0 / k))
        self.weights += w.size
        ins = [x, self.init(nm + ".weight", w)]
        if bias:
            ins.append(self.init(nm + ".bias", self.randn(m, scale=0.1)))
            self.params += m
        return self.node("Gemm", ins, name=nm, alpha=1.0, beta=1.0, transB=1)

    def relu6(self, x, name=None):
        # PyTorch (opset >= 11) exports ReLU6 as Clip with constant min/max inputs.
        return self.node("Clip", [x, self.const("zero", np.array(0.0, np.float32)),
                                  self.const("six", np.array(6.0, np.float32))], name=name or "relu6")

    # -- model --------------------------------------------------------------------------------
    def model(self, opset):
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s, _ in self.inputs]
        outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in self.outputs]
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fixq-op-fixtures")
        # IR 3 (opset <= 8) would require every initializer to be listed as a graph input too; use IR 4
        # there unless the case asks for that legacy layout.
        ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
        if self.legacy_inputs:
            m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                               for t in self.inits)
        else:
            ir = max(ir, 4)
        m.ir_version = ir
        return m


def declare_outputs(model, results, symbolic):
    """Fills the graph outputs' shapes: shape inference where it knows them, else onnxruntime's
    shapes with a symbolic batch dimension 'N' in front when the input had one."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to the run's shapes
        inferred = None
    known = {}
    if inferred is not None:
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") or d.HasField("dim_param")
                                           for d in t.shape.dim):
                known[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    for out, y in zip(model.graph.output, results):
        shape = known.get(out.name)
        if shape is None:
            shape = list(y.shape)
            if symbolic and shape and shape[0] == BATCH:
                shape[0] = "N"
        out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, shape))


def finish(b, opset):
    """Checks the model, runs it, declares the outputs; returns (bytes, input, output)."""
    model = b.model(opset)
    (name, declared, x), = b.inputs
    sess = session(model.SerializeToString())
    results = sess.run(None, {name: x})
    declare_outputs(model, results, symbolic=declared[0] == "N")
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    (y,) = session(data).run(None, {name: x})
    assert np.array_equal(y, results[0])
    return data, x, y.astype(np.float32)


# ================================================================================================
# Per-op cases. Each registers (name, op, opset, variant) and fills a Builder.
# ================================================================================================
CASES = []


def case(name, op, opset, variant):
    def register(fn):
        CASES.append(dict(name=name, op=op, opset=opset, variant=variant, fn=fn))
        return fn
    return register


X4 = (BATCH, 4, 6, 6)

# --- Conv ----------------------------------------------------------------------------------------


@case("conv_basic", "Conv", 13, "3x3, pads 1, stride 1, bias; 3 -> 4 channels")
def _(b):
    b.output(b.conv(b.input((BATCH, 3, 6, 6)), 3, 4, 3, pads=1))


@case("conv_pads_asym", "Conv", 11, "3x3, asymmetric pads [0,1,2,1] (begin H,W, end H,W), no bias")
def _(b):
    b.output(b.conv(b.input((BATCH, 3, 7, 7)), 3, 4, 3, pads=[0, 1, 2, 1], bias=False))


@case("conv_stride2", "Conv", 13, "3x3, stride 2, pads 1, 9x9 input (odd)")
def _(b):
    b.output(b.conv(b.input((BATCH, 3, 9, 9)), 3, 5, 3, stride=2, pads=1))


@case("conv_stride_rect", "Conv", 13, "1x3 kernel, strides [1,2], pads [0,1,0,1]")
def _(b):
    b.output(b.conv(b.input((BATCH, 3, 6, 8)), 3, 4, (1, 3), stride=(1, 2), pads=[0, 1, 0, 1]))


@case("conv_dilation2", "Conv", 13, "3x3, dilation 2, pads 2")
def _(b):
    b.output(b.conv(b.input((BATCH, 3, 8, 8)), 3, 4, 3, dilation=2, pads=2))


@case("conv_groups2", "Conv", 13, "3x3, groups 2 (4 -> 6 channels), pads 1")
def _(b):
    b.output(b.conv(b.input(X4), 4, 6, 3, group=2, pads=1))


@case("conv_depthwise", "Conv", 13, "3x3 depthwise (groups = C = 6), pads 1, bias")
def _(b):
    b.output(b.conv(b.input((BATCH, 6, 6, 6)), 6, 6, 3, group=6, pads=1))


@case("conv_depthwise_s2_mult2", "Conv", 11, "3x3 depthwise stride 2, channel multiplier 2 (4 -> 8, groups 4)")
def _(b):
    b.output(b.conv(b.input((BATCH, 4, 7, 7)), 4, 8, 3, group=4, stride=2, pads=1))


@case("conv_same_upper", "Conv", 11, "3x3, stride 2, auto_pad SAME_UPPER on 8x8 (implicit pad 0 before, 1 after)")
def _(b):
    b.output(b.conv(b.input((BATCH, 3, 8, 8)), 3, 4, 3, stride=2, auto_pad="SAME_UPPER"))


@case("conv_1x1_opset7", "Conv", 7, "1x1, no pads attribute, bias")
def _(b):
    b.output(b.conv(b.input(X4), 4, 3, 1))


@case("conv_ir3_legacy_inputs", "Conv", 7, "ir_version 3: weights also listed as graph inputs (old exporters)")
def _(b):
    b.legacy_inputs = True
    b.output(b.node("Relu", [b.conv(b.input((BATCH, 3, 5, 5)), 3, 4, 3, pads=1)]))


# --- Gemm / MatMul ---------------------------------------------------------------------------------


@case("gemm_transb", "Gemm", 13, "transB=1, bias [M] (PyTorch Linear)")
def _(b):
    b.output(b.gemm(b.input((BATCH, 8)), 8, 5))


@case("gemm_transa", "Gemm", 13, "transA=1 (input is [K,M]), B [K,N], alpha 0.5, beta 2, bias [N]")
def _(b):
    x = b.input((6, 3), symbolic=False)
    b.output(b.node("Gemm", [x, b.init("B", b.randn(6, 5, scale=0.4)), b.init("C", b.randn(5))],
                    transA=1, alpha=0.5, beta=2.0))


@case("gemm_alpha_beta", "Gemm", 9, "transB=1, alpha 0.75, beta 1.5, bias [1,M]")
def _(b):
    x = b.input((BATCH, 8))
    b.output(b.node("Gemm", [x, b.init("B", b.randn(5, 8, scale=0.35)), b.init("C", b.randn(1, 5))],
                    transB=1, alpha=0.75, beta=1.5))


@case("gemm_transab", "Gemm", 11, "transA=1 and transB=1, no alpha/beta attributes, bias [N]")
def _(b):
    x = b.input((8, 2), symbolic=False)
    b.output(b.node("Gemm", [x, b.init("B", b.randn(4, 8, scale=0.35)), b.init("C", b.randn(4))],
                    transA=1, transB=1))


@case("gemm_nobias", "Gemm", 13, "transB=0, no C input (optional since opset 11)")
def _(b):
    x = b.input((BATCH, 8))
    b.output(b.node("Gemm", [x, b.init("B", b.randn(8, 5, scale=0.35))]))


@case("gemm_opset7", "Gemm", 7, "opset 7 (C required), transB=1, bias [M]")
def _(b):
    b.output(b.gemm(b.input((BATCH, 8)), 8, 4))


@case("matmul_2d", "MatMul", 13, "[N,8] x constant [8,5]")
def _(b):
    b.output(b.node("MatMul", [b.input((BATCH, 8)), b.init("W", b.randn(8, 5, scale=0.35))]))


@case("matmul_add", "MatMul", 13, "[N,8] x constant [8,5] then Add bias [5] (tf2onnx dense)")
def _(b):
    y = b.node("MatMul", [b.input((BATCH, 8)), b.init("W", b.randn(8, 5, scale=0.35))])
    b.output(b.node("Add", [y, b.init("bias", b.randn(5, scale=0.1))]))


@case("matmul_3d", "MatMul", 13, "[N,3,8] x constant [8,4] (broadcast over the leading dims)")
def _(b):
    b.output(b.node("MatMul", [b.input((BATCH, 3, 8)), b.init("W", b.randn(8, 4, scale=0.35))]))


@case("matmul_opset9", "MatMul", 9, "[N,6] x constant [6,3]")
def _(b):
    b.output(b.node("MatMul", [b.input((BATCH, 6)), b.init("W", b.randn(6, 3, scale=0.4))]))


# --- BatchNormalization ------------------------------------------------------------------------------


@case("bn_after_conv", "BatchNormalization", 15, "after a bias-free Conv (foldable)")
def _(b):
    y = b.conv(b.input((BATCH, 3, 6, 6)), 3, 4, 3, pads=1, bias=False)
    b.output(b.bn(y, 4))


@case("bn_after_conv_bias", "BatchNormalization", 9, "after a Conv with bias (foldable), epsilon 1e-3")
def _(b):
    y = b.conv(b.input((BATCH, 3, 6, 6)), 3, 4, 3, pads=1)
    b.output(b.bn(y, 4, eps=1e-3))


@case("bn_standalone", "BatchNormalization", 15, "directly on the graph input (no Conv before it)")
def _(b):
    b.output(b.bn(b.input(X4), 4))


@case("bn_after_relu", "BatchNormalization", 14, "Conv -> Relu -> BN (not foldable into the Conv)")
def _(b):
    y = b.node("Relu", [b.conv(b.input((BATCH, 3, 6, 6)), 3, 4, 3, pads=1)])
    b.output(b.bn(y, 4))


@case("bn_after_maxpool", "BatchNormalization", 9, "after MaxPool (not foldable)")
def _(b):
    y = b.node("MaxPool", [b.input(X4)], kernel_shape=[2, 2], strides=[2, 2])
    b.output(b.bn(y, 4))


@case("bn_opset7", "BatchNormalization", 7, "opset 7 (spatial attribute default), standalone")
def _(b):
    b.output(b.bn(b.input(X4), 4))


@case("bn_after_gemm", "BatchNormalization", 15, "2-D [N,C] input after Gemm (BatchNorm1d)")
def _(b):
    b.output(b.bn(b.gemm(b.input((BATCH, 8)), 8, 5), 5))


# --- activations -----------------------------------------------------------------------------------


@case("relu", "Relu", 14, "")
def _(b):
    b.output(b.node("Relu", [b.input(X4)]))


@case("relu_opset7", "Relu", 7, "")
def _(b):
    b.output(b.node("Relu", [b.input(X4)]))


@case("clip_attr_relu6", "Clip", 9, "min 0, max 6 as attributes (Clip-6); input scaled x4")
def _(b):
    b.output(b.node("Clip", [b.input(X4, scale=4.0)], min=0.0, max=6.0))


@case("clip_attr_minmax", "Clip", 10, "min -0.5, max 0.75 as attributes (Clip-6)")
def _(b):
    b.output(b.node("Clip", [b.input(X4)], min=-0.5, max=0.75))


@case("clip_attr_opset7_default_max", "Clip", 7, "only min 0 as attribute (max defaults to +inf)")
def _(b):
    b.output(b.node("Clip", [b.input(X4)], min=0.0))


@case("clip_inputs_relu6", "Clip", 11, "ReLU6: min 0, max 6 as initializer inputs; input scaled x4")
def _(b):
    b.output(b.node("Clip", [b.input(X4, scale=4.0), b.f32("min", 0.0), b.f32("max", 6.0)]))


@case("clip_constant_nodes", "Clip", 13, "ReLU6 with min/max from Constant nodes (PyTorch export); input x4")
def _(b):
    b.output(b.relu6(b.input(X4, scale=4.0)))


@case("clip_min_only", "Clip", 12, "min -0.25 input, max input omitted (empty name)")
def _(b):
    b.output(b.node("Clip", [b.input(X4), b.f32("min", -0.25)]))


@case("clip_max_only", "Clip", 13, "min omitted (empty name), max 0.5 input")
def _(b):
    b.output(b.node("Clip", [b.input(X4), "", b.f32("max", 0.5)]))


@case("leakyrelu", "LeakyRelu", 16, "alpha 0.1")
def _(b):
    b.output(b.node("LeakyRelu", [b.input(X4)], alpha=0.1))


@case("leakyrelu_default", "LeakyRelu", 7, "default alpha 0.01")
def _(b):
    b.output(b.node("LeakyRelu", [b.input(X4)]))


@case("prelu_channel", "PRelu", 16, "per-channel slope [C,1,1]")
def _(b):
    b.output(b.node("PRelu", [b.input(X4), b.init("slope", b.uniform(0.05, 0.4, 4, 1, 1))]))


@case("prelu_channel_opset9", "PRelu", 9, "per-channel slope [C,1,1], after a Conv")
def _(b):
    y = b.conv(b.input((BATCH, 3, 6, 6)), 3, 4, 3, pads=1)
    b.output(b.node("PRelu", [y, b.init("slope", b.uniform(0.05, 0.4, 4, 1, 1))]))


@case("prelu_scalar", "PRelu", 7, "one slope [1] for all channels")
def _(b):
    b.output(b.node("PRelu", [b.input(X4), b.f32("slope", [0.25])]))


@case("sigmoid", "Sigmoid", 13, "input scaled x3")
def _(b):
    b.output(b.node("Sigmoid", [b.input(X4, scale=3.0)]))


@case("hardsigmoid", "HardSigmoid", 7, "default alpha 0.2, beta 0.5; input x3")
def _(b):
    b.output(b.node("HardSigmoid", [b.input(X4, scale=3.0)]))


@case("hardsigmoid_torch", "HardSigmoid", 13, "alpha 1/6, beta 0.5 (PyTorch Hardsigmoid); input x3")
def _(b):
    b.output(b.node("HardSigmoid", [b.input(X4, scale=3.0)], alpha=1.0 / 6.0, beta=0.5))


@case("hardswish", "HardSwish", 14, "input x3")
def _(b):
    b.output(b.node("HardSwish", [b.input(X4, scale=3.0)]))


@case("tanh", "Tanh", 13, "input x2")
def _(b):
    b.output(b.node("Tanh", [b.input(X4, scale=2.0)]))


# --- elementwise binary ops with broadcasting -------------------------------------------------------


@case("add_same_shape", "Add", 7, "tensor + tensor, same shape (x + Relu(x)), opset 7 broadcasting")
def _(b):
    x = b.input(X4)
    b.output(b.node("Add", [x, b.node("Relu", [x])]))


@case("add_tensor_broadcast", "Add", 14, "tensor [N,C,H,W] + tensor [N,C,1,1] (GlobalAveragePool of it)")
def _(b):
    x = b.input(X4)
    b.output(b.node("Add", [x, b.node("GlobalAveragePool", [x])]))


@case("add_const_channel", "Add", 13, "tensor + constant [C,1,1]")
def _(b):
    b.output(b.node("Add", [b.input(X4), b.init("c", b.randn(4, 1, 1))]))


@case("add_const_scalar_left", "Add", 13, "constant scalar + tensor (constant first)")
def _(b):
    b.output(b.node("Add", [b.f32("c", 0.75), b.input(X4)]))


@case("sub_const_channel", "Sub", 13, "tensor - constant [1,C,1,1] (mean subtraction)")
def _(b):
    b.output(b.node("Sub", [b.input(X4), b.init("mean", b.randn(1, 4, 1, 1))]))


@case("sub_const_left", "Sub", 13, "constant [C,1,1] - tensor")
def _(b):
    b.output(b.node("Sub", [b.init("c", b.randn(4, 1, 1)), b.input(X4)]))


@case("sub_tensor_broadcast", "Sub", 14, "tensor - ReduceMean(tensor, axes [2,3], keepdims 1) [N,C,1,1]")
def _(b):
    x = b.input(X4)
    b.output(b.node("Sub", [x, b.node("ReduceMean", [x], axes=[2, 3], keepdims=1)]))


@case("mul_const_channel", "Mul", 13, "tensor * constant [C,1,1]")
def _(b):
    b.output(b.node("Mul", [b.input(X4), b.init("c", b.randn(4, 1, 1))]))


@case("mul_const_width", "Mul", 7, "tensor * constant [W] (broadcast on the last axis)")
def _(b):
    b.output(b.node("Mul", [b.input(X4), b.init("c", b.randn(6))]))


@case("mul_se", "Mul", 13, "squeeze-and-excite: x * Sigmoid(Conv1x1(Relu(Conv1x1(GAP(x))))) [N,C,1,1]")
def _(b):
    x = b.input((BATCH, 8, 5, 5))
    s = b.node("GlobalAveragePool", [x])
    s = b.node("Relu", [b.conv(s, 8, 2, 1, name="se_reduce")])
    s = b.node("Sigmoid", [b.conv(s, 2, 8, 1, name="se_expand")])
    b.output(b.node("Mul", [x, s]))


@case("mul_tensor_same", "Mul", 14, "tensor * tensor, same shape (x * Sigmoid(x), SiLU)")
def _(b):
    x = b.input(X4, scale=2.0)
    b.output(b.node("Mul", [x, b.node("Sigmoid", [x])]))


@case("div_const_channel", "Div", 13, "tensor / positive constant [C,1,1]")
def _(b):
    b.output(b.node("Div", [b.input(X4), b.init("c", b.uniform(0.5, 2.0, 4, 1, 1))]))


@case("div_normalize", "Div", 9, "(x - mean [1,C,1,1]) / std [1,C,1,1] (input normalisation)")
def _(b):
    x = b.input((BATCH, 3, 6, 6))
    y = b.node("Sub", [x, b.init("mean", b.randn(1, 3, 1, 1, scale=0.3))])
    b.output(b.node("Div", [y, b.init("std", b.uniform(0.2, 0.3, 1, 3, 1, 1))]))


@case("div_const_scalar", "Div", 7, "tensor / scalar constant 255 (input x255)")
def _(b):
    b.output(b.node("Div", [b.input(X4, scale=255.0), b.f32("c", 255.0)]))


@case("div_tensor_broadcast", "Div", 14, "tensor / (Sigmoid(GAP(x)) + 0.5) [N,C,1,1]")
def _(b):
    x = b.input(X4)
    d = b.node("Add", [b.node("Sigmoid", [b.node("GlobalAveragePool", [x])]), b.f32("half", 0.5)])
    b.output(b.node("Div", [x, d]))


# --- Concat ----------------------------------------------------------------------------------------


@case("concat_channels", "Concat", 13, "axis 1 of two Conv branches (1x1 and 3x3, like a fire module)")
def _(b):
    x = b.input((BATCH, 3, 6, 6))
    b.output(b.node("Concat", [b.conv(x, 3, 2, 1, name="e1"), b.conv(x, 3, 3, 3, pads=1, name="e3")], axis=1))


@case("concat_three", "Concat", 11, "axis 1 of x, Relu(x), MaxPool 3x3 s1 p1 (x)")
def _(b):
    x = b.input(X4)
    mp = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    b.output(b.node("Concat", [x, b.node("Relu", [x]), mp], axis=1))


@case("concat_neg_axis", "Concat", 13, "axis -3 (channels of NCHW), input with itself scaled")
def _(b):
    x = b.input(X4)
    b.output(b.node("Concat", [b.node("Mul", [x, b.f32("k", 0.5)]), x], axis=-3))


@case("concat_opset7", "Concat", 7, "axis 1 of x and Conv(x)")
def _(b):
    x = b.input(X4)
    b.output(b.node("Concat", [x, b.conv(x, 4, 2, 3, pads=1)], axis=1))


# --- Slice -----------------------------------------------------------------------------------------


@case("slice_step2_hw", "Slice", 13, "x[:, :, ::2, ::2]: axes [2,3], steps [2,2], ends INT64_MAX, 9x9 input")
def _(b):
    x = b.input((BATCH, 4, 9, 9))
    b.output(b.node("Slice", [x, b.i64("starts", [0, 0]), b.i64("ends", [INT64_MAX, INT64_MAX]),
                              b.i64("axes", [2, 3]), b.i64("steps", [2, 2])]))


@case("slice_torch_chain", "Slice", 11, "PyTorch x[:, :, ::2, ::2]: four one-axis Slices (axes 0,1 full, 2,3 step 2)")
def _(b):
    y = b.input((BATCH, 4, 8, 8))
    for axis, step in ((0, 1), (1, 1), (2, 2), (3, 2)):
        y = b.node("Slice", [y, b.const("start", np.array([0], np.int64)), b.const("end", np.array([INT64_MAX], np.int64)),
                             b.const("axis", np.array([axis], np.int64)), b.const("step", np.array([step], np.int64))])
    b.output(y)


@case("slice_step2_offset", "Slice", 13, "starts [1,1], steps [2,2] on H, W of a 9x9 input")
def _(b):
    x = b.input((BATCH, 3, 9, 9))
    b.output(b.node("Slice", [x, b.i64("starts", [1, 1]), b.i64("ends", [9, 9]),
                              b.i64("axes", [2, 3]), b.i64("steps", [2, 2])]))


@case("slice_negative", "Slice", 13, "negative starts/ends/axes: x[:, 1:-1, :, -4:-1] (axes [1,-1])")
def _(b):
    x = b.input(X4)
    b.output(b.node("Slice", [x, b.i64("starts", [1, -4]), b.i64("ends", [-1, -1]), b.i64("axes", [1, -1])]))


@case("slice_reverse", "Slice", 10, "channel reversal: starts [-1], ends [-INT64_MAX], steps [-1] on axis 1")
def _(b):
    x = b.input(X4)
    b.output(b.node("Slice", [x, b.i64("starts", [-1]), b.i64("ends", [-INT64_MAX]), b.i64("axes", [1]),
                              b.i64("steps", [-1])]))


@case("slice_no_axes", "Slice", 13, "axes omitted (apply to axes 0..): starts [0,1], ends [INT64_MAX,3]")
def _(b):
    x = b.input(X4)
    b.output(b.node("Slice", [x, b.i64("starts", [0, 1]), b.i64("ends", [INT64_MAX, 3])]))


@case("slice_attr_opset9", "Slice", 9, "attribute form (Slice-1): axes [2,3], starts [1,0], ends [5,-1]")
def _(b):
    b.output(b.node("Slice", [b.input(X4)], axes=[2, 3], starts=[1, 0], ends=[5, -1]))


@case("slice_attr_noaxes_opset7", "Slice", 7, "attribute form without axes: starts [0,1,2], ends [1000,4,-1]")
def _(b):
    b.output(b.node("Slice", [b.input(X4)], starts=[0, 1, 2], ends=[1000, 4, -1]))


# --- Pad -------------------------------------------------------------------------------------------


@case("pad_spatial", "Pad", 13, "constant 0 (no value input), pads [0,0,1,2, 0,0,2,1] on H, W")
def _(b):
    b.output(b.node("Pad", [b.input(X4), b.i64("pads", [0, 0, 1, 2, 0, 0, 2, 1])], mode="constant"))


@case("pad_channel", "Pad", 11, "option-A channel pad: pads [0,2,0,0, 0,2,0,0], constant_value input 0")
def _(b):
    b.output(b.node("Pad", [b.input(X4), b.i64("pads", [0, 2, 0, 0, 0, 2, 0, 0]), b.f32("value", 0.0)],
                    mode="constant"))


@case("pad_value", "Pad", 13, "constant value 0.5, spatial and channel pads [0,1,1,0, 0,0,1,1]")
def _(b):
    b.output(b.node("Pad", [b.input(X4), b.i64("pads", [0, 1, 1, 0, 0, 0, 1, 1]), b.f32("value", 0.5)]))


@case("pad_axes_opset18", "Pad", 18, "axes input [1,3] (Pad-18): pads [1,0, 1,2] on C and W")
def _(b):
    b.output(b.node("Pad", [b.input(X4), b.i64("pads", [1, 0, 1, 2]), "", b.i64("axes", [1, 3])]))


@case("pad_attr_opset10", "Pad", 10, "attribute form (Pad-2): pads [0,0,1,1, 0,0,1,1], value 0")
def _(b):
    b.output(b.node("Pad", [b.input(X4)], mode="constant", pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0))


@case("pad_attr_channel_opset7", "Pad", 7, "attribute form (Pad-2): channel pads [0,2,0,0, 0,1,0,0], value -1")
def _(b):
    b.output(b.node("Pad", [b.input(X4)], pads=[0, 2, 0, 0, 0, 1, 0, 0], value=-1.0))


# --- layout ops --------------------------------------------------------------------------------------


@case("transpose_nhwc", "Transpose", 13, "perm [0,2,3,1] (NCHW -> NHWC)")
def _(b):
    b.output(b.node("Transpose", [b.input((BATCH, 3, 4, 5))], perm=[0, 2, 3, 1]))


@case("transpose_default", "Transpose", 7, "no perm (reverse the axes), [N,3,4] input")
def _(b):
    b.output(b.node("Transpose", [b.input((BATCH, 3, 4))]))


@case("channel_shuffle", "Reshape", 13, "Reshape [0,2,-1,H,W] -> Transpose [0,2,1,3,4] -> Reshape [0,-1,H,W]")
def _(b):
    y = b.node("Reshape", [b.input((BATCH, 6, 3, 3)), b.i64("shape5", [0, 2, -1, 3, 3])])
    y = b.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    b.output(b.node("Reshape", [y, b.i64("shape4", [0, -1, 3, 3])]))


@case("squeeze_attr_opset11", "Squeeze", 11, "attribute axes [2,3] after GlobalAveragePool")
def _(b):
    b.output(b.node("Squeeze", [b.node("GlobalAveragePool", [b.input(X4)])], axes=[2, 3]))


@case("squeeze_input_opset13", "Squeeze", 13, "axes input [-1,-2] after GlobalAveragePool")
def _(b):
    b.output(b.node("Squeeze", [b.node("GlobalAveragePool", [b.input(X4)]), b.i64("axes", [-1, -2])]))


@case("unsqueeze_attr_opset11", "Unsqueeze", 11, "attribute axes [2,3] on [N,C]")
def _(b):
    b.output(b.node("Unsqueeze", [b.input((BATCH, 5))], axes=[2, 3]))


@case("unsqueeze_input_opset13", "Unsqueeze", 13, "axes input [2,3] on [N,C]")
def _(b):
    b.output(b.node("Unsqueeze", [b.input((BATCH, 5)), b.i64("axes", [2, 3])]))


@case("unsqueeze_neg_opset13", "Unsqueeze", 13, "axes input [-1] on [N,C,H]")
def _(b):
    b.output(b.node("Unsqueeze", [b.input((BATCH, 3, 4)), b.i64("axes", [-1])]))


@case("flatten_axis1", "Flatten", 13, "axis 1 (torch.flatten(x, 1))")
def _(b):
    b.output(b.node("Flatten", [b.input(X4)], axis=1))


@case("flatten_axis2", "Flatten", 11, "axis 2 ([N,C,H,W] -> [N*C, H*W])")
def _(b):
    b.output(b.node("Flatten", [b.input(X4)], axis=2))


@case("flatten_default_opset9", "Flatten", 9, "default axis (1)")
def _(b):
    b.output(b.node("Flatten", [b.input(X4)]))


@case("reshape_zero_neg1", "Reshape", 13, "shape [0,-1] (keep N, flatten the rest)")
def _(b):
    b.output(b.node("Reshape", [b.input(X4), b.i64("shape", [0, -1])]))


@case("reshape_3d_opset7", "Reshape", 7, "shape [0,0,-1] ([N,C,H*W])")
def _(b):
    b.output(b.node("Reshape", [b.input(X4), b.i64("shape", [0, 0, -1])]))


@case("reshape_neg1_mid", "Reshape", 14, "shape [0,-1,3,2] (-1 in the middle, 0 in front)")
def _(b):
    b.output(b.node("Reshape", [b.input(X4), b.i64("shape", [0, -1, 3, 2])]))


@case("identity", "Identity", 13, "between two Relus")
def _(b):
    b.output(b.node("Relu", [b.node("Identity", [b.node("Relu", [b.input(X4)])])]))


@case("identity_opset7", "Identity", 7, "as the last node")
def _(b):
    b.output(b.node("Identity", [b.input(X4)]))


@case("dropout_opset7", "Dropout", 7, "ratio 0.3 attribute, inference (identity)")
def _(b):
    b.output(b.node("Dropout", [b.input(X4)], ratio=0.3))


@case("dropout_opset12", "Dropout", 12, "ratio input 0.5, training_mode omitted (inference)")
def _(b):
    b.output(b.node("Dropout", [b.input(X4), b.f32("ratio", 0.5)]))


@case("dropout_mask_opset13", "Dropout", 13, "no ratio, unused mask output, training_mode false input")
def _(b):
    y, _mask = b.node("Dropout", [b.input(X4), "", b.init("training_mode", np.array(False))], n_out=2)
    b.output(y)


# --- pooling ----------------------------------------------------------------------------------------


@case("maxpool_2x2", "MaxPool", 12, "2x2 stride 2")
def _(b):
    b.output(b.node("MaxPool", [b.input(X4)], kernel_shape=[2, 2], strides=[2, 2]))


@case("maxpool_ceil", "MaxPool", 10, "3x3 stride 2 ceil_mode 1 on 8x8 (-> 4x4; floor would give 3x3)")
def _(b):
    b.output(b.node("MaxPool", [b.input((BATCH, 3, 8, 8))], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))


@case("maxpool_pads_asym", "MaxPool", 12, "3x3 stride 1, asymmetric pads [0,1,1,0]")
def _(b):
    b.output(b.node("MaxPool", [b.input(X4)], kernel_shape=[3, 3], pads=[0, 1, 1, 0]))


@case("maxpool_stride_ne_kernel", "MaxPool", 8, "3x3 stride 2 pads 1 (ResNet stem), 9x9")
def _(b):
    b.output(b.node("MaxPool", [b.input((BATCH, 3, 9, 9))], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1]))


@case("maxpool_ceil_pads", "MaxPool", 11, "2x2 stride 2 ceil_mode 1 pads [1,0,0,1] on 7x7")
def _(b):
    b.output(b.node("MaxPool", [b.input((BATCH, 3, 7, 7))], kernel_shape=[2, 2], strides=[2, 2],
                    pads=[1, 0, 0, 1], ceil_mode=1))


@case("avgpool_include_pad", "AveragePool", 11, "3x3 stride 2 pads 1, count_include_pad 1")
def _(b):
    b.output(b.node("AveragePool", [b.input((BATCH, 3, 7, 7))], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1], count_include_pad=1))


@case("avgpool_exclude_pad", "AveragePool", 11, "3x3 stride 2 pads 1, count_include_pad 0")
def _(b):
    b.output(b.node("AveragePool", [b.input((BATCH, 3, 7, 7))], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1], count_include_pad=0))


@case("avgpool_ceil", "AveragePool", 10, "3x3 stride 2 ceil_mode 1 on 8x8, no pads (partial last window)")
def _(b):
    b.output(b.node("AveragePool", [b.input((BATCH, 3, 8, 8))], kernel_shape=[3, 3], strides=[2, 2],
                    ceil_mode=1))


@case("avgpool_ceil_include_pad", "AveragePool", 19, "3x3 stride 2 pads 1 ceil_mode 1 count_include_pad 1 on 8x8")
def _(b):
    b.output(b.node("AveragePool", [b.input((BATCH, 3, 8, 8))], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1))


@case("avgpool_pads_asym", "AveragePool", 19, "2x2 stride 1, asymmetric pads [1,0,0,1], count_include_pad 0")
def _(b):
    b.output(b.node("AveragePool", [b.input(X4)], kernel_shape=[2, 2], pads=[1, 0, 0, 1]))


@case("avgpool_pads_asym_include", "AveragePool", 13, "3x3 stride 2, pads [0,0,1,1] (Keras 'same'), count_include_pad 1")
def _(b):
    b.output(b.node("AveragePool", [b.input(X4)], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1],
                    count_include_pad=1))


@case("avgpool_2x2_opset7", "AveragePool", 7, "2x2 stride 2")
def _(b):
    b.output(b.node("AveragePool", [b.input(X4)], kernel_shape=[2, 2], strides=[2, 2]))


@case("globalavgpool", "GlobalAveragePool", 7, "")
def _(b):
    b.output(b.node("GlobalAveragePool", [b.input((BATCH, 4, 5, 5))]))


@case("globalmaxpool", "GlobalMaxPool", 13, "")
def _(b):
    b.output(b.node("GlobalMaxPool", [b.input((BATCH, 4, 5, 5))]))


@case("reducemean_keep1_opset13", "ReduceMean", 13, "axes [2,3] attribute, keepdims 1")
def _(b):
    b.output(b.node("ReduceMean", [b.input(X4)], axes=[2, 3], keepdims=1))


@case("reducemean_keep0_opset13", "ReduceMean", 13, "axes [2,3] attribute, keepdims 0")
def _(b):
    b.output(b.node("ReduceMean", [b.input(X4)], axes=[2, 3], keepdims=0))


@case("reducemean_keep1_opset18", "ReduceMean", 18, "axes [2,3] input, keepdims 1")
def _(b):
    b.output(b.node("ReduceMean", [b.input(X4), b.i64("axes", [2, 3])], keepdims=1))


@case("reducemean_keep0_opset18", "ReduceMean", 18, "axes [-2,-1] input, keepdims 0")
def _(b):
    b.output(b.node("ReduceMean", [b.input(X4), b.i64("axes", [-2, -1])], keepdims=0))


# --- shape-only chains (input batch dimension symbolic 'N') -------------------------------------------


def torch_view_flatten(b, x, opset):
    """x.view(x.size(0), -1) as the PyTorch exporter writes it."""
    shape = b.node("Shape", [x])
    n = b.node("Gather", [shape, b.const("idx0", np.array(0, np.int64))], axis=0)
    if opset >= 13:
        n1 = b.node("Unsqueeze", [n, b.const("axes0", np.array([0], np.int64))])
    else:
        n1 = b.node("Unsqueeze", [n], axes=[0])
    target = b.node("Concat", [n1, b.const("minus1", np.array([-1], np.int64))], axis=0)
    return b.node("Reshape", [x, target])


@case("shape_chain_flatten", "Shape/Gather/Unsqueeze/Concat/Reshape", 13,
      "x.view(x.size(0), -1) after a Conv; Unsqueeze axes as input")
def _(b):
    y = b.conv(b.input((BATCH, 3, 5, 5)), 3, 4, 3, pads=1)
    b.output(torch_view_flatten(b, y, 13))


@case("shape_chain_flatten_opset11", "Shape/Gather/Unsqueeze/Concat/Reshape", 11,
      "same chain with Unsqueeze axes attribute, then Gemm")
def _(b):
    y = b.node("Relu", [b.input((BATCH, 2, 3, 3))])
    b.output(b.gemm(torch_view_flatten(b, y, 11), 18, 4))


@case("shape_chain_nc", "Shape/Gather/Unsqueeze/Concat/Reshape", 13,
      "x.view(N, C, -1): two Gathers (0 and 1) concatenated with -1")
def _(b):
    x = b.input(X4)
    shape = b.node("Shape", [x])
    dims = [b.node("Unsqueeze", [b.node("Gather", [shape, b.i64(f"i{k}", k)], axis=0), b.i64(f"a{k}", [0])])
            for k in (0, 1)]
    b.output(b.node("Reshape", [x, b.node("Concat", dims + [b.i64("m1", [-1])], axis=0)]))


@case("constantofshape_add", "ConstantOfShape", 13, "Shape(x) -> ConstantOfShape(0.25) -> Add(x, .)")
def _(b):
    x = b.input(X4)
    c = b.node("ConstantOfShape", [b.node("Shape", [x])],
               value=numpy_helper.from_array(np.array([0.25], np.float32), "value"))
    b.output(b.node("Add", [x, c]))


@case("constantofshape_pads", "ConstantOfShape", 11,
      "Pad whose pads are Concat(ConstantOfShape([2]) int64 0, [1,1], ConstantOfShape([2]), [1,2])")
def _(b):
    x = b.input(X4)
    z = b.node("ConstantOfShape", [b.i64("two", [2])], value=numpy_helper.from_array(np.array([0], np.int64), "zero"))
    pads = b.node("Concat", [z, b.i64("begin_hw", [1, 1]), z, b.i64("end_hw", [1, 2])], axis=0)
    b.output(b.node("Pad", [x, pads]))


# --- Softmax ----------------------------------------------------------------------------------------


@case("softmax_final", "Softmax", 13, "after Gemm, axis -1 (network output)")
def _(b):
    b.output(b.node("Softmax", [b.gemm(b.input((BATCH, 8)), 8, 5)], axis=-1))


@case("softmax_opset11", "Softmax", 11, "axis 1 on [N,C] (Softmax-11 coerces to 2-D)")
def _(b):
    b.output(b.node("Softmax", [b.input((BATCH, 6), scale=2.0)], axis=1))


@case("softmax_default_opset7", "Softmax", 7, "default axis (1), after Flatten of GlobalAveragePool")
def _(b):
    y = b.node("Flatten", [b.node("GlobalAveragePool", [b.input(X4, scale=2.0)])], axis=1)
    b.output(b.node("Softmax", [y]))


# ================================================================================================
# Test networks
# ================================================================================================


def cifar_images(indices):
    if not os.path.exists(CIFAR):
        sys.exit(f"the test networks need the CIFAR-10 test images at {CIFAR}")
    images = np.load(CIFAR, mmap_mode="r")[indices].astype(np.float32) / np.float32(255.0)
    images = (images - CIFAR_MEAN) / CIFAR_STD
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def calibrate_bn(b, opset, images):
    """Sets every calibrated BN's running mean/var (in graph order) from the statistics of its
    input on `images`, times a random factor (mean + 0.1 sd noise, var x U(0.8, 1.25)), so the
    random-weight network keeps unit-scale activations at any depth."""
    by_name = {t.name: t for t in b.inits}
    for x_name, mean_name, var_name in b.bns:
        model = b.model(opset)
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(x_name, TensorProto.FLOAT, None))
        (act,) = session(model.SerializeToString()).run(None, {b.inputs[0][0]: images})
        mean = act.mean(axis=(0, 2, 3))
        sd = act.std(axis=(0, 2, 3))
        mean = mean + 0.1 * sd * b.rng.standard_normal(mean.shape)
        var = np.maximum(sd * sd, 1e-4) * b.rng.uniform(0.8, 1.25, sd.shape)
        by_name[mean_name].CopyFrom(numpy_helper.from_array(mean.astype(np.float32), mean_name))
        by_name[var_name].CopyFrom(numpy_helper.from_array(var.astype(np.float32), var_name))


def conv_bn(b, x, cin, cout, k, stride, name, relu=True, gamma=(0.5, 1.5)):
    y = b.conv(x, cin, cout, k, stride=stride, pads=k // 2, bias=False, name=name + ".conv")
    y = b.bn(y, cout, name=name + ".bn", gamma=gamma, calibrate=True)
    return b.node("Relu", [y], name=name + ".relu") if relu else y


def resnet_a(b, blocks_per_stage, widths):
    """CIFAR ResNet (He et al. 2016, section 4.2) with option-A shortcuts, as PyTorch exports it:
    x[:, :, ::2, ::2] becomes four one-axis Slices, F.pad(..., (0,0,0,0,p,p)) a channel Pad."""
    x = b.input((4, 3, 32, 32), data=cifar_images(range(4)))
    y = conv_bn(b, x, 3, widths[0], 3, 1, "conv1")
    cin = widths[0]
    for s, w in enumerate(widths):
        for k in range(blocks_per_stage):
            stride = 2 if s > 0 and k == 0 else 1
            nm = f"layer{s + 1}.{k}"
            h = conv_bn(b, y, cin, w, 3, stride, nm + ".1")
            h = conv_bn(b, h, w, w, 3, 1, nm + ".2", relu=False, gamma=(0.3, 0.8))
            if stride != 1 or cin != w:
                sc = y
                for axis, step in ((0, 1), (1, 1), (2, 2), (3, 2)):
                    sc = b.node("Slice", [sc, b.const("start", np.array([0], np.int64)),
                                          b.const("end", np.array([INT64_MAX], np.int64)),
                                          b.const("axis", np.array([axis], np.int64)),
                                          b.const("step", np.array([step], np.int64))], name=nm + ".sc.slice")
                p = (w - cin) // 2
                sc = b.node("Pad", [sc, b.const("pads", np.array([0, p, 0, 0, 0, w - cin - p, 0, 0], np.int64)),
                                    b.const("pad_value", np.array(0.0, np.float32))], name=nm + ".sc.pad",
                            mode="constant")
            else:
                sc = y
            y = b.node("Relu", [b.node("Add", [h, sc], name=nm + ".add")], name=nm + ".relu")
            cin = w
    y = b.node("GlobalAveragePool", [y], name="avgpool")
    y = b.node("Flatten", [y], name="flatten", axis=1)
    b.output(b.gemm(y, cin, 10, name="linear"))


def mobilenetv2(b):
    """MobileNetV2 for 32x32 inputs (stem stride 1), inverted residual blocks, BN not folded."""
    x = b.input((4, 3, 32, 32), data=cifar_images(range(4)))

    def cbr(y, cin, cout, k, stride, group, name, act=True):
        y = b.conv(y, cin, cout, k, stride=stride, pads=k // 2, group=group, bias=False, name=name + ".conv")
        y = b.bn(y, cout, name=name + ".bn", calibrate=True, gamma=(0.5, 1.5) if act else (0.3, 0.8))
        return b.relu6(y, name=name + ".relu6") if act else y

    y = cbr(x, 3, 16, 3, 1, 1, "stem")
    cin = 16
    # (expansion t, output channels c, repeats n, first stride s)
    blk = 0
    for t, c, n, s in ((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2), (4, 32, 2, 1)):
        for k in range(n):
            stride = s if k == 0 else 1
            nm = f"features.{blk}"
            hidden = cin * t
            h = y
            if t != 1:
                h = cbr(h, cin, hidden, 1, 1, 1, nm + ".expand")
            h = cbr(h, hidden, hidden, 3, stride, hidden, nm + ".dw")
            h = cbr(h, hidden, c, 1, 1, 1, nm + ".project", act=False)
            y = b.node("Add", [y, h], name=nm + ".add") if stride == 1 and cin == c else h
            cin = c
            blk += 1
    y = cbr(y, cin, 128, 1, 1, 1, "head")
    y = b.node("GlobalAveragePool", [y], name="avgpool")
    y = b.node("Flatten", [y], name="flatten", axis=1)
    y = b.node("Dropout", [y, b.f32("dropout_ratio", 0.2)], name="dropout")
    b.output(b.gemm(y, 128, 10, name="classifier"))


def squeezenet(b):
    """SqueezeNet 1.1-style for 32x32: fire modules, MaxPool 3x3/2 ceil_mode, no BN, conv head."""
    x = b.input((4, 3, 32, 32), data=cifar_images(range(4)))

    def fire(y, cin, sq, e1, e3, name):
        s = b.node("Relu", [b.conv(y, cin, sq, 1, name=name + ".squeeze")], name=name + ".squeeze_relu")
        a = b.node("Relu", [b.conv(s, sq, e1, 1, name=name + ".expand1x1")], name=name + ".expand1x1_relu")
        c = b.node("Relu", [b.conv(s, sq, e3, 3, pads=1, name=name + ".expand3x3")], name=name + ".expand3x3_relu")
        return b.node("Concat", [a, c], name=name + ".cat", axis=1)

    def pool(y, name):
        return b.node("MaxPool", [y], name=name, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)

    y = b.node("Relu", [b.conv(x, 3, 32, 3, pads=1, name="features.0")], name="features.1")  # 32x32
    y = pool(y, "features.2")  # 16x16 (floor mode would give 15x15)
    y = fire(y, 32, 8, 16, 16, "features.3")
    y = fire(y, 32, 8, 16, 16, "features.4")
    y = pool(y, "features.5")  # 8x8
    y = fire(y, 32, 16, 32, 32, "features.6")
    y = fire(y, 64, 16, 32, 32, "features.7")
    y = pool(y, "features.8")  # 4x4 (floor: 3x3)
    y = fire(y, 64, 24, 48, 48, "features.9")
    y = b.node("Dropout", [y, b.f32("dropout_ratio", 0.5)], name="classifier.0")
    y = b.node("Relu", [b.conv(y, 96, 10, 1, name="classifier.1")], name="classifier.2")
    y = b.node("GlobalAveragePool", [y], name="classifier.3")
    b.output(b.node("Flatten", [y], name="flatten", axis=1))


NETWORKS = [
    dict(name="resnet_a", op="network", opset=13,
         variant="CIFAR ResNet-14 (widths 8/16/32, 2 blocks per stage), option-A shortcuts (4 Slices, channel Pad), "
                 "Conv+BN+Relu, Add, GlobalAveragePool, Flatten, Gemm",
         fn=lambda b: resnet_a(b, 2, (8, 16, 32))),
    dict(name="mobilenetv2", op="network", opset=13,
         variant="MobileNetV2-style: 1x1 expand + ReLU6 (Clip), 3x3 depthwise s1/s2 + ReLU6, 1x1 linear "
                 "bottleneck, Add on stride-1 blocks, BN not folded, Dropout, Gemm",
         fn=mobilenetv2),
    dict(name="squeezenet", op="network", opset=12,
         variant="SqueezeNet-style: fire modules (1x1 squeeze, Concat of 1x1 and 3x3 expand), MaxPool 3x3/2 "
                 "ceil_mode, Dropout, final 1x1 conv + Relu + GlobalAveragePool + Flatten",
         fn=squeezenet),
]


def build_network(spec):
    b = Builder(spec["name"], case_rng(spec["name"]))
    spec["fn"](b)
    if b.bns:
        calibrate_bn(b, spec["opset"], cifar_images(range(100, 164)))
    return b


# ================================================================================================
# Writing, checking, README
# ================================================================================================


def write(out, name, data, x, y):
    with open(os.path.join(out, name + ".onnx"), "wb") as f:
        f.write(data)
    np.save(os.path.join(out, name + ".input.npy"), x)
    np.save(os.path.join(out, name + ".output.npy"), y)


def check_dir(out):
    """Reloads every <case>.onnx in `out`, checks it, re-runs it in a fresh session and compares."""
    names = sorted(f[:-5] for f in os.listdir(out) if f.endswith(".onnx"))
    worst = 0.0
    for name in names:
        model = onnx.load(os.path.join(out, name + ".onnx"))
        onnx.checker.check_model(model, full_check=True)
        x = np.load(os.path.join(out, name + ".input.npy"))
        want = np.load(os.path.join(out, name + ".output.npy"))
        sess = session(model.SerializeToString())
        (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
        # Same onnxruntime on the same machine reproduces the bytes exactly; the tolerance is for other CPUs.
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
            sys.exit(f"check failed: {name}: max |diff| {np.abs(got - want).max() if got.shape == want.shape else 'shape'}")
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"check: {len(names)} models in {os.path.relpath(out, ROOT)} reload, pass onnx.checker and "
          f"reproduce their outputs (max |diff| {worst:g})")


def op_counts(data):
    model = onnx.load_from_string(data)
    counts = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def write_readme(out, rows, nets):
    lines = [
        "# Per-op fixtures and test networks (issue 11)",
        "",
        "Generated by `scripts/op_fixtures.py`; do not edit by hand. Regenerate from the crate root with",
        "",
        "```",
        "pip install -r scripts/requirements.txt",
        "python3 scripts/op_fixtures.py",
        "```",
        "",
        "(`python3 scripts/op_fixtures.py --check` only re-verifies the committed files.) The script is",
        "deterministic: each case has its own seeded generator, so the files come out byte-identical.",
        f"Reference outputs: onnxruntime {ort.__version__} (CPU, graph optimizations disabled, 1 thread),",
        f"models built and checked with onnx {onnx.__version__}, numpy {np.__version__}.",
        "",
        "For every case `<case>`: `<case>.onnx` (one graph input `x`, one output), `<case>.input.npy`",
        "(float32, standard normal unless the table says it is scaled) and `<case>.output.npy` (float32,",
        "onnxruntime's output). Each model's `ir_version` is the lowest its opset allows, but at least 4",
        "(only `conv_ir3_legacy_inputs` is IR 3, with its initializers also listed as graph inputs). Unless the",
        "variant says otherwise the input's batch dimension is declared symbolic (`N`) and the data has",
        f"N = {BATCH}; output shapes are declared (with `N`) where ONNX shape inference or the run gives them.",
        "Weights are random (He-scaled). Small operands come as initializers, some as `Constant` nodes",
        "(as PyTorch exports them).",
        "",
        "## Per-op cases",
        "",
        "| case | op | opset | variant | input | output |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['op']} | {r['opset']} | {r['variant'] or '-'} | {r['in']} | {r['out']} |")
    lines += [
        "",
        "Conventions onnxruntime follows here (and fixq must match): AveragePool with `ceil_mode 1` divides",
        "a window that runs past the input by the part of it inside input + pads, i.e. `count_include_pad 1`",
        "counts the explicit pads but never the ceil-mode overhang (`count_include_pad 0`: input elements",
        "only), as PyTorch does. `Slice` ends beyond the axis are clamped (`INT64_MAX` is PyTorch's \"to",
        "the end\"); a negative step with end `-INT64_MAX` runs to index 0.",
        "",
        "## Test networks",
        "",
        "Random weights (He init; BatchNormalization with random gamma/beta, and running mean/var set from",
        "the statistics of each BN's input on CIFAR-10 test images 100..163 times random factors, so",
        "activations stay unit-scaled). Input `x` [N,3,32,32] with N symbolic; `.input.npy` holds CIFAR-10",
        "test images 0..3 from `../shared/data/cifar10`, scaled to [0,1] and normalised with mean",
        f"{fmt(CIFAR_MEAN)} and std {fmt(CIFAR_STD)} (per RGB channel). Output: 10 logits.",
        "",
        "| network | opset | what | weights (Conv/Gemm) | other params | nodes | size |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in nets:
        lines.append(f"| `{r['name']}` | {r['opset']} | {r['variant']} | {r['weights']:,} | {r['params']:,} | "
                     f"{r['ops']} | {r['size'] / 1024:.0f} KiB |")
    lines += [
        "",
        "## Deep CIFAR ResNets for planning-time measurements (not committed)",
        "",
        "```",
        "python3 scripts/op_fixtures.py --resnet-depth 20 56 --out /tmp/resnets",
        "```",
        "",
        "writes `resnet20.onnx` and `resnet56.onnx` (3x3 convs, 16/32/64 channels, (depth-2)/6 blocks per stage,",
        "option-A shortcuts, same construction as `resnet_a`) with their 4-image `.input.npy`/`.output.npy`,",
        "and prints the weight counts (ResNet-20: 268,336 Conv/Gemm weights, 269,722 parameters in all;",
        "ResNet-56: 848,944 Conv/Gemm weights, 853,018 in all, as in He et al.).",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def fmt(v):
    return "[" + ", ".join(f"{float(a):.4f}" for a in v) + "]"


def shape_str(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


def generate(out):
    os.makedirs(out, exist_ok=True)
    names = [c["name"] for c in CASES] + [n["name"] for n in NETWORKS]
    assert len(set(names)) == len(names), "duplicate case names"
    rows = []
    for c in CASES:
        b = Builder(c["name"], case_rng(c["name"]))
        c["fn"](b)
        data, x, y = finish(b, c["opset"])
        write(out, c["name"], data, x, y)
        model = onnx.load_from_string(data)
        decl_in = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        decl_out = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
        rows.append(dict(c, **{"in": shape_str(decl_in), "out": shape_str(decl_out)}))
        print(f"{c['name']:34s} opset {c['opset']:2d}  {shape_str(x.shape):>14s} -> {shape_str(y.shape):14s}"
              f" {len(data):6d} B")
    nets = []
    for spec in NETWORKS:
        b = build_network(spec)
        data, x, y = finish(b, spec["opset"])
        write(out, spec["name"], data, x, y)
        nets.append(dict(spec, weights=b.weights, params=b.params, ops=op_counts(data), size=len(data)))
        print(f"{spec['name']:34s} opset {spec['opset']:2d}  {b.weights:,} weights + {b.params:,} params, "
              f"{len(data) / 1024:.0f} KiB, logits[0] {np.array2string(y[0], precision=2)}")
    # drop files of cases that no longer exist
    keep = set(names)
    for f in os.listdir(out):
        stem = f.split(".")[0]
        if f != "README.md" and stem not in keep:
            os.remove(os.path.join(out, f))
    write_readme(out, rows, nets)
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{len(CASES)} op cases + {len(NETWORKS)} networks, {total / 1024:.0f} KiB in {os.path.relpath(out, ROOT)}")


def deep_resnets(depths, out):
    os.makedirs(out, exist_ok=True)
    for depth in depths:
        if depth < 8 or (depth - 2) % 6:
            sys.exit(f"--resnet-depth {depth}: a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110)")
        name = f"resnet{depth}"
        b = Builder(name, case_rng(name))
        resnet_a(b, (depth - 2) // 6, (16, 32, 64))
        calibrate_bn(b, 13, cifar_images(range(100, 164)))
        data, x, y = finish(b, 13)
        write(out, name, data, x, y)
        print(f"{name}: {b.weights:,} weights in Conv/Gemm, {b.weights + b.params:,} parameters in all "
              f"(+ BN running stats), {len(data) / 1024:.0f} KiB -> {os.path.join(out, name + '.onnx')}")
        if depth == 20:
            assert abs(b.weights + b.params - 270_000) < 5_000, "ResNet-20 should have ~270k weights"
    check_dir(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="output directory (default tests/fixtures/ops)")
    ap.add_argument("--resnet-depth", type=int, nargs="+", metavar="DEPTH",
                    help="write CIFAR ResNet-DEPTH (16/32/64 channels, option A) to --out instead of the fixtures")
    ap.add_argument("--check", action="store_true", help="only re-check the models already in --out")
    args = ap.parse_args()
    if args.resnet_depth:
        if not args.out:
            ap.error("--resnet-depth needs --out DIR (these models are not committed)")
        deep_resnets(args.resnet_depth, os.path.abspath(args.out))
        return
    out = os.path.abspath(args.out or OUT)
    if not args.check:
        generate(out)
    check_dir(out)


if __name__ == "__main__":
    main()
