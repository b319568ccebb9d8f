#!/usr/bin/env python3
"""Train the small digits CNN shipped with fixq, deterministically, and export it.

Data: the 8x8 handwritten digits bundled with scikit-learn (`load_digits`, 1797 images,
gray levels 0..16). Split: stratified, test_size=0.25, random_state=0 (1347 train / 450 test).
Input: pixel / 16.0 as float32, shape [N,1,8,8].

Network (node names mirror shared/models/lenet5_mnist.onnx):
  conv1 (Conv 1->16, 3x3, pad 1, bias) - relu1 - pool1 (MaxPool 2x2 s2)  -> 16x4x4
  conv2 (Conv 16->32, 3x3, pad 1, bias) - relu2 - pool2 (MaxPool 2x2 s2) -> 32x2x2
  flatten (128) - linear1 (Gemm 128->64, transB=1) - relu3 - linear2 (Gemm 64->10) -> logits

Training is plain numpy (im2col convolutions, hand-written backward pass), Adam with a cosine
learning-rate schedule, random +-1 pixel shifts as augmentation, fixed seed, one BLAS thread.

Writes:
  models/digits_cnn.onnx                   (opset 13, ir_version 8, input `input` [N,1,8,8])
  data/digits/{train,test}-images-idx3-ubyte  raw 0..16 pixel values, [N,8,8] uint8
  data/digits/{train,test}-labels-idx1-ubyte  labels 0..9

Usage (from the repository root):  python3 scripts/train_digits.py
"""

import os

# One BLAS thread: the same arithmetic order on every run, hence byte-identical weights.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_v] = "1"

import struct
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
EPOCHS = 60
BATCH = 32
LR = 2e-3
WEIGHT_DECAY = 1e-4  # decoupled (AdamW style)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_PATH = os.path.join(ROOT, "models", "digits_cnn.onnx")
DATA_DIR = os.path.join(ROOT, "data", "digits")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def load_split():
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # [1797, 8, 8], values 0..16
    labels = digits.target.astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )
    return x_tr, y_tr, x_te, y_te


def to_input(images_u8):
    """Raw 0..16 pixels [N,8,8] -> float32 [N,1,8,8] in [0,1]."""
    return (images_u8.astype(np.float32) / np.float32(16.0))[:, None, :, :]


def write_idx_images(path, images_u8):
    n, h, w = images_u8.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, h, w))
        f.write(np.ascontiguousarray(images_u8, dtype=np.uint8).tobytes())


def write_idx_labels(path, labels_u8):
    with open(path, "wb") as f:
        f.write(struct.pack(">II", 0x00000801, labels_u8.shape[0]))
        f.write(np.ascontiguousarray(labels_u8, dtype=np.uint8).tobytes())


def shift_batch(x, rng):
    """Random shift of each image by dy, dx in {-1,0,1}, zero fill. x: [B,1,8,8]."""
    b, _, h, w = x.shape
    pad = np.zeros((b, 1, h + 2, w + 2), dtype=x.dtype)
    pad[:, :, 1:-1, 1:-1] = x
    dy = rng.integers(-1, 2, size=b)
    dx = rng.integers(-1, 2, size=b)
    out = np.empty_like(x)
    for i in range(b):
        out[i] = pad[i, :, 1 - dy[i]:1 - dy[i] + h, 1 - dx[i]:1 - dx[i] + w]
    return out


# ----------------------------------------------------------------------------------------------
# Layers (forward + backward), NCHW
# ----------------------------------------------------------------------------------------------

def im2col3x3(x):
    """x [B,C,H,W] -> cols [B*H*W, C*9] for a 3x3 kernel, stride 1, pad 1 (ONNX/PyTorch order)."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.empty((b, c, 3, 3, h, w), dtype=x.dtype)
    for ky in range(3):
        for kx in range(3):
            patches[:, :, ky, kx] = xp[:, :, ky:ky + h, kx:kx + w]
    return patches.transpose(0, 4, 5, 1, 2, 3).reshape(b * h * w, c * 9)


def col2im3x3(dcols, shape):
    b, c, h, w = shape
    d = dcols.reshape(b, h, w, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((b, c, h + 2, w + 2), dtype=dcols.dtype)
    for ky in range(3):
        for kx in range(3):
            dxp[:, :, ky:ky + h, kx:kx + w] += d[:, :, ky, kx]
    return dxp[:, :, 1:-1, 1:-1]


def conv_forward(x, wt, bias):
    b, c, h, w = x.shape
    o = wt.shape[0]
    cols = im2col3x3(x)
    y = cols @ wt.reshape(o, -1).T + bias
    return y.reshape(b, h, w, o).transpose(0, 3, 1, 2), cols


def conv_backward(dy, cols, x_shape, wt):
    b, c, h, w = x_shape
    o = wt.shape[0]
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = (dy2.T @ cols).reshape(wt.shape)
    db = dy2.sum(axis=0)
    dx = col2im3x3(dy2 @ wt.reshape(o, -1), x_shape)
    return dx, dw, db


def pool_forward(x):
    b, c, h, w = x.shape
    win = x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)
    idx = win.argmax(axis=-1)
    y = np.take_along_axis(win, idx[..., None], axis=-1)[..., 0]
    return y, idx


def pool_backward(dy, idx, x_shape):
    b, c, h, w = x_shape
    dwin = np.zeros((b, c, h // 2, w // 2, 4), dtype=dy.dtype)
    np.put_along_axis(dwin, idx[..., None], dy[..., None], axis=-1)
    return dwin.reshape(b, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

PARAM_ORDER = [
    "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
    "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
]


def init_params(rng):
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float64)

    return {
        "conv1.weight": he((16, 1, 3, 3), 9),
        "conv1.bias": np.zeros(16),
        "conv2.weight": he((32, 16, 3, 3), 16 * 9),
        "conv2.bias": np.zeros(32),
        "linear1.weight": he((64, 128), 128),
        "linear1.bias": np.zeros(64),
        "linear2.weight": (rng.standard_normal((10, 64)) * np.sqrt(1.0 / 64)),
        "linear2.bias": np.zeros(10),
    }


def forward(p, x, keep=False):
    c1, cols1 = conv_forward(x, p["conv1.weight"], p["conv1.bias"])
    r1 = np.maximum(c1, 0)
    p1, i1 = pool_forward(r1)
    c2, cols2 = conv_forward(p1, p["conv2.weight"], p["conv2.bias"])
    r2 = np.maximum(c2, 0)
    p2, i2 = pool_forward(r2)
    f = p2.reshape(p2.shape[0], -1)
    l1 = f @ p["linear1.weight"].T + p["linear1.bias"]
    r3 = np.maximum(l1, 0)
    logits = r3 @ p["linear2.weight"].T + p["linear2.bias"]
    if not keep:
        return logits
    cache = dict(x=x, cols1=cols1, c1=c1, r1=r1, i1=i1, p1=p1, cols2=cols2, c2=c2, r2=r2,
                 i2=i2, p2=p2, f=f, l1=l1, r3=r3)
    return logits, cache


def backward(p, cache, dlogits):
    g = {}
    g["linear2.weight"] = dlogits.T @ cache["r3"]
    g["linear2.bias"] = dlogits.sum(axis=0)
    dr3 = dlogits @ p["linear2.weight"]
    dl1 = dr3 * (cache["l1"] > 0)
    g["linear1.weight"] = dl1.T @ cache["f"]
    g["linear1.bias"] = dl1.sum(axis=0)
    df = dl1 @ p["linear1.weight"]
    dp2 = df.reshape(cache["p2"].shape)
    dr2 = pool_backward(dp2, cache["i2"], cache["r2"].shape)
    dc2 = dr2 * (cache["c2"] > 0)
    dp1, g["conv2.weight"], g["conv2.bias"] = conv_backward(dc2, cache["cols2"], cache["p1"].shape, p["conv2.weight"])
    dr1 = pool_backward(dp1, cache["i1"], cache["r1"].shape)
    dc1 = dr1 * (cache["c1"] > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv_backward(dc1, cache["cols1"], cache["x"].shape, p["conv1.weight"])
    return g


def softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    d = prob
    d[np.arange(n), y] -= 1.0
    return loss, d / n


def accuracy(p, x, y, batch=512):
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((forward(p, x[i:i + batch]).argmax(axis=1) == y[i:i + batch]).sum())
    return correct / x.shape[0]


def train(x_tr, y_tr, x_te, y_te):
    rng = np.random.default_rng(SEED)
    p = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = x_tr.shape[0]
    steps_per_epoch = (n + BATCH - 1) // BATCH
    total = EPOCHS * steps_per_epoch
    step = 0
    xtr64 = x_tr.astype(np.float64)
    for epoch in range(EPOCHS):
        perm = rng.permutation(n)
        tot_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            xb = shift_batch(xtr64[idx], rng)
            yb = y_tr[idx].astype(np.int64)
            logits, cache = forward(p, xb, keep=True)
            loss, dlogits = softmax_xent(logits, yb)
            tot_loss += loss * len(idx)
            g = backward(p, cache, dlogits)
            step += 1
            lr = LR * 0.5 * (1.0 + np.cos(np.pi * (step - 1) / total))
            for k in PARAM_ORDER:
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k]
                mh = m[k] / (1 - b1 ** step)
                vh = v[k] / (1 - b2 ** step)
                if k.endswith("weight"):
                    p[k] -= lr * WEIGHT_DECAY * p[k]
                p[k] -= lr * mh / (np.sqrt(vh) + eps)
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}  loss {tot_loss / n:.4f}  train acc {accuracy(p, xtr64, y_tr):.4f}"
                  f"  test acc {accuracy(p, x_te.astype(np.float64), y_te):.4f}", flush=True)
    return {k: p[k].astype(np.float32) for k in PARAM_ORDER}


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------

def export_onnx(p, path):
    conv_attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool_attrs = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", **conv_attrs),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", **pool_attrs),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", **conv_attrs),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", **pool_attrs),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "linear1.weight", "linear1.bias"], ["l1"], name="linear1", transB=1),
        helper.make_node("Relu", ["l1"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "linear2.weight", "linear2.bias"], ["logits"], name="linear2", transB=1),
    ]
    inits = [
        helper.make_tensor(k, TensorProto.FLOAT, list(p[k].shape),
                           np.ascontiguousarray(p[k], dtype="<f4").tobytes(), raw=True)
        for k in PARAM_ORDER
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, producer_name="fixq-train-digits",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


# ----------------------------------------------------------------------------------------------

def main():
    t0 = time.time()
    x_tr_u8, y_tr, x_te_u8, y_te = load_split()
    print(f"train {x_tr_u8.shape[0]}  test {x_te_u8.shape[0]}")

    os.makedirs(DATA_DIR, exist_ok=True)
    write_idx_images(os.path.join(DATA_DIR, "train-images-idx3-ubyte"), x_tr_u8)
    write_idx_labels(os.path.join(DATA_DIR, "train-labels-idx1-ubyte"), y_tr)
    write_idx_images(os.path.join(DATA_DIR, "test-images-idx3-ubyte"), x_te_u8)
    write_idx_labels(os.path.join(DATA_DIR, "test-labels-idx1-ubyte"), y_te)

    x_tr, x_te = to_input(x_tr_u8), to_input(x_te_u8)
    params = train(x_tr, y_tr, x_te, y_te)

    # Float32 evaluation of the exported weights, the numbers onnxruntime must reproduce.
    p32 = {k: v for k, v in params.items()}
    acc_te = accuracy(p32, x_te, y_te)
    acc_tr = accuracy(p32, x_tr, y_tr)
    print(f"numpy float32: train acc {acc_tr:.4f}  test acc {acc_te:.4f} "
          f"({int(round(acc_te * len(y_te)))}/{len(y_te)})")

    export_onnx(params, MODEL_PATH)
    print(f"wrote {os.path.relpath(MODEL_PATH, ROOT)} ({os.path.getsize(MODEL_PATH)} bytes)"
          f" in {time.time() - t0:.1f} s")

    # Optional cross-check with onnxruntime, when it is installed.
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: skipped the cross-check")
        return 0
    sess = ort.InferenceSession(MODEL_PATH, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_te})[0]
    np_logits = forward(p32, x_te)
    acc_ort = float((ort_logits.argmax(axis=1) == y_te).mean())
    same_pred = bool((ort_logits.argmax(axis=1) == np_logits.argmax(axis=1)).all())
    print(f"onnxruntime {ort.__version__}: test acc {acc_ort:.4f}; max |logit diff| vs numpy "
          f"{np.abs(ort_logits - np_logits).max():.2e}; same predictions: {same_pred}")
    if acc_ort != acc_te or not same_pred:
        print("MISMATCH between numpy and onnxruntime", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
