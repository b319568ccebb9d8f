//! The path of a file in `../shared` (the LeNet-5 model and the MNIST test set beside the crate),
//! for the tests and benchmarks that need it. Panics, naming the path, when it is missing: these
//! checks never skip silently.

use std::path::PathBuf;

/// `../shared/{rel}`, which must exist.
pub fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: this needs the shared LeNet-5 model and MNIST data at ../shared beside the crate",
        p.display()
    );
    p
}
