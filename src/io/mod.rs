//! Readers for data sets and weights: IDX (MNIST), NumPy `.npy`, and `.safetensors`; and the
//! atomic file replacement the writers share ([`write_atomic`], public for programs built on the
//! crate, such as the `fixq` command line).
//!
//! Every reader checks the sizes its header claims against the bytes actually present before
//! allocating, and reports `Malformed { format, offset, reason }` for truncated or corrupt input.
//! Nothing here panics on bad data.

pub(crate) mod atomic;
pub mod idx;
pub(crate) mod json;
pub mod npy;
pub mod safetensors;

pub use atomic::write_atomic;

use std::path::Path;

use crate::error::{Error, Result};

/// Reads a whole file, attaching the path to I/O errors.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A `Malformed` error for `format` at `offset`.
pub(crate) fn malformed(format: &'static str, offset: usize, reason: impl Into<String>) -> Error {
    Error::Malformed {
        format,
        offset: offset as u64,
        reason: reason.into(),
    }
}

/// A byte count from [`byte_len`] for messages: the number, or "more than 9223372036854775807"
/// (`isize::MAX`) where it overflowed.
pub(crate) fn describe_len(len: Option<usize>) -> String {
    match len {
        Some(n) => n.to_string(),
        None => format!("more than {}", isize::MAX),
    }
}

/// Product of `dims` times `elem_size`, or `None` on overflow (or beyond `isize::MAX`).
pub(crate) fn byte_len(dims: &[usize], elem_size: usize) -> Option<usize> {
    dims.iter()
        .try_fold(elem_size, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
}
