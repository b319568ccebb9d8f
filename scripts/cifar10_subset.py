#!/usr/bin/env python3
"""Cut the shipped fixtures for the ResNet-8 smoke tests from the shared folder (deterministic).

Run from the crate root, with ../shared beside it:

    python3 scripts/cifar10_subset.py          # needs numpy
    python3 scripts/cifar10_subset.py --ort    # also the onnxruntime logits (needs onnxruntime)

Writes:
  models/resnet8_cifar10.onnx                a byte copy of ../shared/models/resnet8_cifar10.onnx
  data/cifar10/subset_images_u8_nhwc.npy     uint8 [200,32,32,3]  CIFAR-10 test images 500..699
  data/cifar10/subset_labels_u8.npy          uint8 [200]          their labels, 20 per class
  tests/fixtures/resnet8_ort_logits.npy      float32 [200,10]     onnxruntime logits (with --ort)

The subset is the first 20 images of each class among test images 500..9999 (the evaluation range of
the reproduction; images 0..499 calibrate there), in index order. The shared copy interleaves the
classes (image k has class k % 10), so this is exactly images 500..699.
"""
import hashlib
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
PER_CLASS = 20
FIRST = 500

SHA256 = {
    "data/cifar10/test_images_u8_nhwc.npy": "d765699b7101d810160afab41b0001151710f9ee0779489eda185ed00cc63019",
    "data/cifar10/test_labels_u8.npy": "30f2711ac2b2325c6e1a1da3606f5f76691289c030e602278b221b8c91daffe8",
}


def shared(rel):
    path = os.path.join(SHARED, rel)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: this script reads the shared folder at ../shared")
    if rel in SHA256:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert digest == SHA256[rel], f"{path}: sha256 {digest}, expected {SHA256[rel]}"
    return path


def main():
    images = np.load(shared("data/cifar10/test_images_u8_nhwc.npy"))
    labels = np.load(shared("data/cifar10/test_labels_u8.npy"))
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    picked = []
    for c in range(10):
        idx = np.nonzero(labels[FIRST:] == c)[0][:PER_CLASS] + FIRST
        assert len(idx) == PER_CLASS
        picked.extend(idx.tolist())
    picked = np.array(sorted(picked), dtype=np.int64)
    assert picked.tolist() == list(range(FIRST, FIRST + 10 * PER_CLASS)), "classes are not interleaved"
    sub_images = np.ascontiguousarray(images[picked])
    sub_labels = np.ascontiguousarray(labels[picked])
    os.makedirs(os.path.join(ROOT, "data", "cifar10"), exist_ok=True)
    np.save(os.path.join(ROOT, "data", "cifar10", "subset_images_u8_nhwc.npy"), sub_images)
    np.save(os.path.join(ROOT, "data", "cifar10", "subset_labels_u8.npy"), sub_labels)
    shutil.copyfile(shared("models/resnet8_cifar10.onnx"), os.path.join(ROOT, "models", "resnet8_cifar10.onnx"))
    print("subset", sub_images.shape, "images", picked[0], "..", picked[-1], "per class", np.bincount(sub_labels).tolist())
    if "--ort" in sys.argv[1:]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Keep onnxruntime's arithmetic close to the graph as written (no fusions that reorder sums).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(shared("models/resnet8_cifar10.onnx"), opts, providers=["CPUExecutionProvider"])
        # The model takes raw pixels 0..255, NCHW float32.
        x = sub_images.transpose(0, 3, 1, 2).astype(np.float32)
        (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
        np.save(os.path.join(ROOT, "tests", "fixtures", "resnet8_ort_logits.npy"), logits.astype(np.float32))
        acc = float((logits.argmax(1) == sub_labels).mean())
        print("onnxruntime", ort.__version__, "logits", logits.shape, f"accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
