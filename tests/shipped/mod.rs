//! The models and data that ship with the crate (`models/`, `data/`, see `NOTICE` and `data/README.md`),
//! for the tests: the digits CNN with scikit-learn's 8x8 digits, and the MLPerf Tiny ResNet-8 with a
//! class-balanced 200-image subset of the CIFAR-10 test set. No test reads anything outside the
//! repository; the full real-data checks are `examples/reproduce.rs`.
#![allow(dead_code)]

use fixq::Graph;
use fixq::eval::Dataset;
use fixq::io::npy::{self, NpyArray};
use ndarray::{ArrayD, Ix4};

/// `{crate root}/{rel}`.
pub fn path(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// The digits CNN (`models/digits_cnn.onnx`).
pub fn digits_graph() -> Graph {
    Graph::from_onnx_file(path("models/digits_cnn.onnx")).unwrap()
}

/// The first `limit` images of a digits split (`"train"`: 1,347 images, the calibration set; `"test"`:
/// the 450 held-out images), scaled to the model's input (value / 16).
pub fn digits(split: &str, limit: Option<usize>) -> Dataset {
    Dataset::from_idx(
        path(&format!("data/digits/{split}-images-idx3-ubyte")),
        path(&format!("data/digits/{split}-labels-idx1-ubyte")),
        1.0 / 16.0,
        limit,
    )
    .unwrap()
}

/// The MLPerf Tiny ResNet-8 (`models/resnet8_cifar10.onnx`).
pub fn resnet8_graph() -> Graph {
    Graph::from_onnx_file(path("models/resnet8_cifar10.onnx")).unwrap()
}

fn u8_npy(rel: &str) -> ArrayD<u8> {
    match npy::read(path(rel)).unwrap() {
        NpyArray::U8(a) => a,
        other => panic!("{rel} has dtype {}, expected |u1", other.dtype()),
    }
}

/// The shipped CIFAR-10 subset (test images 500..700, 20 per class), as ResNet-8 takes it: raw pixel
/// values 0..255 as float, NCHW (the file is u8 NHWC).
pub fn cifar10_subset() -> Dataset {
    let images = u8_npy("data/cifar10/subset_images_u8_nhwc.npy")
        .into_dimensionality::<Ix4>()
        .unwrap();
    let labels = u8_npy("data/cifar10/subset_labels_u8.npy");
    assert_eq!(images.shape(), &[200, 32, 32, 3]);
    Dataset {
        images: images
            .permuted_axes([0, 3, 1, 2])
            .mapv(f32::from)
            .as_standard_layout()
            .into_owned(),
        labels: labels.iter().copied().collect(),
    }
}

/// Top-1 class of each row of `[N, classes]` logits (the first maximum).
pub fn argmax(logits: &ArrayD<f32>) -> Vec<usize> {
    logits
        .outer_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0
        })
        .collect()
}
