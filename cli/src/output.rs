//! Writing results: never over an existing file without `--force`, always atomically (a unique
//! temporary file beside the target, flushed, then renamed: `fixq::io::write_atomic`).

use std::path::Path;

use ndarray::ArrayD;

use crate::error::{CliError, CliResult};

/// Checks, before any work is done, that `path` (given as `flag`) may be written: it must not exist
/// unless `force`, and must not be a directory.
///
/// # Errors
/// Bad input naming the flag and path.
pub fn check_writable(flag: &str, path: &Path, force: bool) -> CliResult<()> {
    let what = format!("{flag} {}", path.display());
    if path.is_dir() {
        return Err(CliError::input(what, "is a directory"));
    }
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(CliError::input(
            what,
            "exists; pass --force to overwrite it",
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically, checking again that it may be written.
///
/// # Errors
/// As [`check_writable`]; the write's I/O errors.
pub fn write(flag: &str, path: &Path, bytes: &[u8], force: bool) -> CliResult<()> {
    check_writable(flag, path, force)?;
    fixq::io::write_atomic(path, bytes)
        .map_err(|e| CliError::from_lib(format!("{flag} {}", path.display()), e))
}

/// A float32 array as a NumPy `.npy` file (format 1.0, little-endian, C order).
pub fn npy_bytes(a: &ArrayD<f32>) -> Vec<u8> {
    let shape = match a.shape() {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * a.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    // The header is at most a few hundred bytes (one number per dimension).
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in a.as_standard_layout().iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn npy_bytes_read_back_with_the_library_reader() {
        for shape in [vec![3usize], vec![2, 5], vec![1, 2, 3, 4], vec![0, 10]] {
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(
                IxDyn(&shape),
                (0..n).map(|i| i as f32 * 0.5 - 1.0).collect(),
            )
            .unwrap();
            let bytes = npy_bytes(&a);
            assert_eq!(bytes.len() % 64, (4 * n) % 64, "header padded to 64 bytes");
            let back = fixq::io::npy::parse(&bytes).unwrap().into_f32().unwrap();
            assert_eq!(back, a);
        }
    }
}
