//! NumPy `.npy` files: float32, int64 or uint8 arrays, C order, little-endian, format versions 1-3.
//!
//! Layout: magic `\x93NUMPY`, major and minor version bytes, the header length (`u16` LE in version
//! 1, `u32` LE in versions 2 and 3), an ASCII/UTF-8 Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (16, 10), }`, then the raw data.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::{byte_len, malformed, read_file};
use crate::error::{Error, Result};

/// An array read from a `.npy` file, in its stored element type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NpyArray {
    /// `<f4`.
    F32(ArrayD<f32>),
    /// `<i8`.
    I64(ArrayD<i64>),
    /// `|u1`.
    U8(ArrayD<u8>),
}

impl NpyArray {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::F32(a) => a.shape(),
            NpyArray::I64(a) => a.shape(),
            NpyArray::U8(a) => a.shape(),
        }
    }

    /// The NumPy type string (`"<f4"`, `"<i8"` or `"|u1"`).
    pub fn dtype(&self) -> &'static str {
        match self {
            NpyArray::F32(_) => "<f4",
            NpyArray::I64(_) => "<i8",
            NpyArray::U8(_) => "|u1",
        }
    }

    /// The float32 array, e.g. to pass to [`crate::Graph::set_initializer`].
    ///
    /// # Errors
    /// `InvalidArgument` if the file held another type (no silent conversion).
    pub fn into_f32(self) -> Result<ArrayD<f32>> {
        match self {
            NpyArray::F32(a) => Ok(a),
            other => Err(Error::InvalidArgument {
                name: "npy dtype",
                reason: format!("expected <f4, found {}", other.dtype()),
            }),
        }
    }
}

/// Reads a `.npy` file.
///
/// # Errors
/// - `Io` if the file cannot be read.
/// - `Malformed { format: "npy", .. }` for a bad magic or header, or data whose length differs
///   from what the shape needs.
/// - `Unsupported` for other element types, big-endian data or Fortran order.
pub fn read(path: impl AsRef<Path>) -> Result<NpyArray> {
    parse(&read_file(path.as_ref())?)
}

/// Decodes `.npy` bytes.
///
/// # Errors
/// As [`read`].
///
/// # Examples
/// ```
/// let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
/// let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }\n";
/// bytes.extend((header.len() as u16).to_le_bytes());
/// bytes.extend(header.as_bytes());
/// bytes.extend([1, 2, 3, 4]);
/// let a = fixq::io::npy::parse(&bytes).unwrap();
/// assert_eq!(a.shape(), &[2, 2]);
/// assert!(fixq::io::npy::parse(&bytes[..bytes.len() - 1]).is_err());
/// ```
pub fn parse(bytes: &[u8]) -> Result<NpyArray> {
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err(malformed("npy", 0, "missing the \\x93NUMPY magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            let Some(b) = bytes.get(8..12) else {
                return Err(malformed("npy", 8, "truncated header length"));
            };
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(Error::Unsupported(format!("npy format version {v}"))),
    };
    let Some(header) = bytes.get(start..start.saturating_add(len)) else {
        return Err(malformed(
            "npy",
            start,
            format!("header claims {len} bytes but the file ends first"),
        ));
    };
    let header =
        std::str::from_utf8(header).map_err(|_| malformed("npy", start, "header is not UTF-8"))?;
    let (descr, fortran, shape) = parse_header(header).map_err(|r| malformed("npy", start, r))?;
    if fortran {
        return Err(Error::Unsupported("npy arrays in Fortran order".into()));
    }
    let data_at = start + len;
    let data = &bytes[data_at..];
    let size = match descr.as_str() {
        "<f4" => 4,
        "<i8" => 8,
        "|u1" | "<u1" => 1,
        other => {
            return Err(Error::Unsupported(format!(
                "npy dtype '{other}' (only <f4, <i8, |u1)"
            )));
        }
    };
    match byte_len(&shape, size) {
        Some(n) if n == data.len() => {}
        need => {
            return Err(malformed(
                "npy",
                data_at,
                format!(
                    "shape {shape:?} of {descr} needs {} bytes but {} follow the header",
                    super::describe_len(need),
                    data.len()
                ),
            ));
        }
    }
    let dims = IxDyn(&shape);
    let err = |e: ndarray::ShapeError| malformed("npy", data_at, e.to_string());
    Ok(match size {
        4 => NpyArray::F32(
            ArrayD::from_shape_vec(
                dims,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
            .map_err(err)?,
        ),
        8 => NpyArray::I64(
            ArrayD::from_shape_vec(
                dims,
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            )
            .map_err(err)?,
        ),
        _ => NpyArray::U8(ArrayD::from_shape_vec(dims, data.to_vec()).map_err(err)?),
    })
}

/// Reads `descr`, `fortran_order` and `shape` from the header's dict literal.
fn parse_header(h: &str) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let body = h
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("header is not a dict")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or("expected a quoted key")?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or("expected ':'")?
            .trim_start();
        rest = match key {
            "descr" => {
                let (v, a) = quoted(after).ok_or("descr is not a string")?;
                descr = Some(v.to_string());
                a
            }
            "fortran_order" => {
                let (v, a) = if let Some(a) = after.strip_prefix("True") {
                    (true, a)
                } else {
                    (
                        false,
                        after
                            .strip_prefix("False")
                            .ok_or("fortran_order is not True/False")?,
                    )
                };
                fortran = Some(v);
                a
            }
            "shape" => {
                let inner = after.strip_prefix('(').ok_or("shape is not a tuple")?;
                let close = inner.find(')').ok_or("unterminated shape tuple")?;
                let dims = inner[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| format!("bad dimension '{s}'"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                shape = Some(dims);
                &inner[close + 1..]
            }
            other => return Err(format!("unknown key '{other}'")),
        };
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err("header lacks descr, fortran_order or shape".into()),
    }
}

/// A `'...'` or `"..."` literal at the start of `s` (no escapes, as NumPy writes them) and the rest.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((&body[..end], &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8], version: u8) -> Vec<u8> {
        let mut b = b"\x93NUMPY".to_vec();
        b.extend([version, 0]);
        if version == 1 {
            b.extend((header.len() as u16).to_le_bytes());
        } else {
            b.extend((header.len() as u32).to_le_bytes());
        }
        b.extend(header.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn reads_each_dtype_and_version() {
        let f = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &[0, 0, 128, 63, 0, 0, 0, 64],
            1,
        );
        assert_eq!(
            parse(&f).unwrap().into_f32().unwrap().as_slice().unwrap(),
            &[1.0, 2.0]
        );
        let i = npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1), }",
            &(-5i64).to_le_bytes(),
            2,
        );
        assert!(matches!(parse(&i).unwrap(), NpyArray::I64(a) if a[[0, 0]] == -5));
        let s = npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (), }",
            &[7],
            3,
        );
        assert!(matches!(parse(&s).unwrap(), NpyArray::U8(a) if a.ndim() == 0));
    }

    #[test]
    fn rejects_without_allocating_or_panicking() {
        let huge = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1024), }",
            &[0; 8],
            1,
        );
        assert!(matches!(parse(&huge), Err(Error::Malformed { .. })));
        let fortran = npy(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
            &[0; 4],
            1,
        );
        assert!(matches!(parse(&fortran), Err(Error::Unsupported(_))));
        let big_endian = npy(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
            1,
        );
        assert!(matches!(parse(&big_endian), Err(Error::Unsupported(_))));
        let good = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            &[0; 12],
            1,
        );
        for cut in 0..good.len() {
            assert!(parse(&good[..cut]).is_err(), "prefix {cut}");
        }
    }
}
