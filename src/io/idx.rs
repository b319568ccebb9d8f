//! IDX files, the format of the MNIST database, plain or gzip-compressed.
//!
//! Layout: a big-endian `u32` magic `0x0000_08DD` (`08` = unsigned bytes, `DD` = number of
//! dimensions), one big-endian `u32` per dimension, then the values row-major. Only unsigned-byte
//! data (type `0x08`) is supported. A file starting with the gzip signature `1f 8b` is decompressed
//! first (feature `gzip`, on by default), whatever its name.

use std::path::Path;

use ndarray::{Array1, Array3, ArrayD, IxDyn};

use super::{byte_len, malformed, read_file};
use crate::error::{Error, Result};

/// Largest data size (after the header) accepted from a `.gz` file, in bytes (1 GiB).
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// Reads an image file (3 dimensions: count, rows, columns), e.g. `t10k-images-idx3-ubyte.gz`.
///
/// Pixels are `0..=255`; the bundled LeNet-5 expects `pixel / 255.0`.
///
/// # Errors
/// - `Io` if the file cannot be read; `Unsupported` for gzip input without feature `gzip`.
/// - `Malformed { format: "idx", .. }` for a bad magic, a type other than unsigned bytes, a
///   dimension count other than 3, or a data length that differs from the header's.
pub fn read_images(path: impl AsRef<Path>) -> Result<Array3<u8>> {
    let a = read(path)?;
    let found = a.ndim();
    a.into_dimensionality().map_err(|_| {
        malformed(
            "idx",
            3,
            format!("expected 3 dimensions (images), found {found}"),
        )
    })
}

/// Reads a label file (1 dimension), e.g. `t10k-labels-idx1-ubyte.gz`.
///
/// # Errors
/// As [`read_images`], with 1 dimension expected.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Array1<u8>> {
    let a = read(path)?;
    let found = a.ndim();
    a.into_dimensionality().map_err(|_| {
        malformed(
            "idx",
            3,
            format!("expected 1 dimension (labels), found {found}"),
        )
    })
}

/// Reads an unsigned-byte IDX file of any rank.
///
/// # Errors
/// As [`read_images`], without the rank check.
pub fn read(path: impl AsRef<Path>) -> Result<ArrayD<u8>> {
    let bytes = read_file(path.as_ref())?;
    parse(&bytes)
}

/// Decodes IDX bytes (plain, or gzip with feature `gzip`).
///
/// # Errors
/// As [`read`].
///
/// # Examples
/// ```
/// let bytes = [0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6];
/// let a = fixq::io::idx::parse(&bytes).unwrap();
/// assert_eq!(a.shape(), &[2, 3]);
/// assert!(fixq::io::idx::parse(&bytes[..17]).is_err());
/// ```
pub fn parse(bytes: &[u8]) -> Result<ArrayD<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let plain = gunzip(bytes)?;
        return parse_plain(&plain);
    }
    parse_plain(bytes)
}

/// Decompresses the header first and reads only as many bytes as it claims (plus one, to detect
/// trailing data), so a small file whose header claims a huge tensor is refused before allocating it.
#[cfg(feature = "gzip")]
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read;
    let gz_err = |e: std::io::Error| malformed("gzip", 0, e.to_string());
    let mut decoder = flate2::read::GzDecoder::new(bytes);
    let mut out = Vec::new();
    (&mut decoder)
        .take(4)
        .read_to_end(&mut out)
        .map_err(gz_err)?;
    let rank = match out.as_slice() {
        [0, 0, _, rank] => u64::from(*rank),
        // Not an IDX header: let `parse_plain` report it.
        _ => return Ok(out),
    };
    (&mut decoder)
        .take(4 * rank)
        .read_to_end(&mut out)
        .map_err(gz_err)?;
    let claimed = out
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(4)
        .try_fold(1u64, |acc, c| {
            acc.checked_mul(u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        })
        .filter(|&n| n <= MAX_DECOMPRESSED_BYTES);
    let Some(claimed) = claimed else {
        return Err(malformed(
            "idx",
            4,
            format!("the header claims more than {MAX_DECOMPRESSED_BYTES} bytes of data"),
        ));
    };
    decoder
        .take(claimed + 1)
        .read_to_end(&mut out)
        .map_err(gz_err)?;
    Ok(out)
}

#[cfg(not(feature = "gzip"))]
fn gunzip(_: &[u8]) -> Result<Vec<u8>> {
    Err(Error::Unsupported(
        "gzip-compressed IDX needs the `gzip` feature".into(),
    ))
}

fn parse_plain(bytes: &[u8]) -> Result<ArrayD<u8>> {
    let Some(magic) = bytes.get(..4) else {
        return Err(malformed(
            "idx",
            bytes.len(),
            "shorter than the 4-byte magic",
        ));
    };
    if magic[0] != 0 || magic[1] != 0 {
        return Err(malformed("idx", 0, format!("bad magic {magic:02x?}")));
    }
    if magic[2] != 0x08 {
        return Err(Error::Unsupported(format!(
            "IDX data type 0x{:02x} (only 0x08, unsigned byte)",
            magic[2]
        )));
    }
    let rank = usize::from(magic[3]);
    let header = 4 + 4 * rank;
    let Some(dims_bytes) = bytes.get(4..header) else {
        return Err(malformed(
            "idx",
            bytes.len(),
            format!("header of {rank} dimensions is truncated"),
        ));
    };
    let dims: Vec<usize> = dims_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let data = &bytes[header..];
    match byte_len(&dims, 1) {
        Some(n) if n == data.len() => {}
        claimed => {
            return Err(malformed(
                "idx",
                header,
                format!(
                    "dimensions {dims:?} need {} bytes but {} follow the header",
                    super::describe_len(claimed),
                    data.len()
                ),
            ));
        }
    }
    ArrayD::from_shape_vec(IxDyn(&dims), data.to_vec())
        .map_err(|e| malformed("idx", header, e.to_string()))
}
