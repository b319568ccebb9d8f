//! Bit-packed weight files: every weight stored at its allocated width, so the file's payload is the
//! model size the plan claims, plus a small header.
//!
//! # Format (version 1, little-endian)
//! ```text
//! magic "FIXQPACK" | u32 version = 1 | u32 tensor count
//! per tensor:
//!   u16 name length | name (UTF-8)
//!   u8 rank (1..=8) | rank × u64 dimensions
//!   u32 format count (1, or dimension 0 for per-channel)
//!   per format: u8 bits (1..=8) | i16 frac_bits | u8 flags (bit 0 signed, bit 1 mid-rise)
//!   u64 payload bits | payload bytes = ⌈payload bits / 8⌉
//! ```
//! The payload holds, in row-major order (channel-major for per-channel formats), each code q as the
//! unsigned offset q − q_min in exactly `bits` bits, least significant bit first. Reading checks every
//! length against the bytes that remain **before** allocating, so a header that claims a huge tensor is
//! rejected without allocating it.
//!
//! # Example
//! ```
//! use fixq::pack::{self, WeightCodes};
//! use fixq::{QFormat, QTensor};
//! use ndarray::{ArrayD, IxDyn};
//! let codes = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![-2i8, 1, 0, 3, -1, 2])?;
//! let w = WeightCodes { node: "fc".into(), codes: QTensor::from_codes(codes, QFormat::signed(3, 2)?)? };
//! let bytes = pack::to_bytes(std::slice::from_ref(&w))?;
//! assert_eq!(pack::payload_bits(std::slice::from_ref(&w)), 6 * 3);
//! assert_eq!(pack::from_bytes(&bytes)?, vec![w]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::{Error, Result};
use crate::fixed::{Grid, QFormat, QTensor};

const MAGIC: &[u8; 8] = b"FIXQPACK";
const VERSION: u32 = 1;
/// Largest tensor the reader accepts, in elements (2^31).
pub const MAX_ELEMENTS: u64 = 1 << 31;

/// A weight tensor in integer codes at its formats (one, or one per index of axis 0), with the node
/// that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightCodes {
    /// The node (Conv, Gemm or MatMul) that uses the weights.
    pub node: String,
    /// The codes, per-tensor or per-channel along axis 0, widths 1..=8.
    pub codes: QTensor<i8, IxDyn>,
}

/// Sum over tensors of elements × width: the payload size in bits (the model size).
pub fn payload_bits(tensors: &[WeightCodes]) -> u64 {
    tensors.iter().map(tensor_payload_bits).sum()
}

fn tensor_payload_bits(w: &WeightCodes) -> u64 {
    let c = w.codes.codes();
    match w.codes.channel_axis() {
        None => c.len() as u64 * u64::from(w.codes.format().bits()),
        Some(_) => {
            let per = c.len() as u64 / c.shape().first().copied().unwrap_or(1).max(1) as u64;
            w.codes
                .formats()
                .iter()
                .map(|f| per * u64::from(f.bits()))
                .sum()
        }
    }
}

struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn put(&mut self, v: u64, bits: u32) {
        self.acc |= v << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// Serialises weight tensors.
///
/// # Errors
/// [`Error::InvalidArgument`] for a name longer than 65 535 bytes, a rank above 8, or a width above 8.
pub fn to_bytes(tensors: &[WeightCodes]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for w in tensors {
        let name = w.node.as_bytes();
        let shape = w.codes.codes().shape();
        if name.len() > usize::from(u16::MAX) || shape.is_empty() || shape.len() > 8 {
            return Err(Error::InvalidArgument {
                name: "weights",
                reason: format!(
                    "tensor '{}': name of {} bytes or rank {} cannot be packed",
                    w.node,
                    name.len(),
                    shape.len()
                ),
            });
        }
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.push(shape.len() as u8);
        for &d in shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        let formats = w.codes.formats();
        out.extend_from_slice(&(formats.len() as u32).to_le_bytes());
        for f in formats {
            if f.bits() > 8 {
                return Err(Error::InvalidArgument {
                    name: "weights",
                    reason: format!(
                        "tensor '{}': width {} exceeds the 8 bits packed weights hold",
                        w.node,
                        f.bits()
                    ),
                });
            }
            out.push(f.bits() as u8);
            out.extend_from_slice(&(f.frac_bits() as i16).to_le_bytes());
            out.push(u8::from(f.is_signed()) | (u8::from(f.grid() == Grid::MidRise) << 1));
        }
        let bits = tensor_payload_bits(w);
        out.extend_from_slice(&bits.to_le_bytes());
        let mut bw = BitWriter {
            bytes: Vec::with_capacity(bits.div_ceil(8) as usize),
            acc: 0,
            n: 0,
        };
        let codes = w.codes.codes();
        for (c, lane) in codes.axis_iter(Axis(0)).enumerate() {
            let f = w.codes.format_of_channel(c);
            for &q in lane.iter() {
                bw.put((i64::from(q) - f.min_code()) as u64, f.bits());
            }
        }
        out.extend_from_slice(&bw.finish());
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Malformed {
            format: "fixq packed weights",
            offset: self.pos as u64,
            reason: reason.into(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(self.err(format!(
                "truncated: {n} more bytes needed, {} left",
                self.bytes.len() - self.pos
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

/// Reads weight tensors written by [`to_bytes`].
///
/// # Errors
/// [`Error::Malformed`] (with the byte offset) for a wrong magic or version, truncation, a rank, width,
/// format count or size out of range, or trailing bytes; never panics and never allocates more than the
/// input can fill.
pub fn from_bytes(bytes: &[u8]) -> Result<Vec<WeightCodes>> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(8)? != MAGIC {
        return Err(Error::Malformed {
            format: "fixq packed weights",
            offset: 0,
            reason: "not a fixq packed weight file (bad magic)".into(),
        });
    }
    let version = u32::from_le_bytes(r.array()?);
    if version != VERSION {
        return Err(r.err(format!(
            "version {version} is not supported (expected {VERSION})"
        )));
    }
    let count = u32::from_le_bytes(r.array()?) as usize;
    // Each tensor needs at least 2 + 1 + 8 + 4 + 4 + 8 bytes.
    if count > (bytes.len() - r.pos) / 27 {
        return Err(r.err(format!(
            "claims {count} tensors, more than the file can hold"
        )));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = usize::from(u16::from_le_bytes(r.array()?));
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| r.err("tensor name is not UTF-8"))?
            .to_string();
        let rank = usize::from(r.u8()?);
        if !(1..=8).contains(&rank) {
            return Err(r.err(format!("tensor '{name}': rank {rank} outside 1..=8")));
        }
        let mut shape = Vec::with_capacity(rank);
        let mut elements: u64 = 1;
        for _ in 0..rank {
            let d = u64::from_le_bytes(r.array()?);
            elements = elements
                .checked_mul(d)
                .filter(|&e| e <= MAX_ELEMENTS)
                .ok_or_else(|| {
                    r.err(format!(
                        "tensor '{name}': more than {MAX_ELEMENTS} elements"
                    ))
                })?;
            shape.push(d as usize);
        }
        if elements == 0 {
            return Err(r.err(format!("tensor '{name}' is empty")));
        }
        let n_formats = u32::from_le_bytes(r.array()?) as usize;
        if n_formats != 1 && n_formats != shape[0] {
            return Err(r.err(format!(
                "tensor '{name}': {n_formats} formats, expected 1 or {}",
                shape[0]
            )));
        }
        if n_formats * 4 > bytes.len() - r.pos {
            return Err(r.err("truncated format table"));
        }
        let mut formats = Vec::with_capacity(n_formats);
        for _ in 0..n_formats {
            let bits = u32::from(r.u8()?);
            let frac = i32::from(i16::from_le_bytes(r.array()?));
            let flags = r.u8()?;
            if !(1..=8).contains(&bits) || flags > 3 {
                return Err(r.err(format!(
                    "tensor '{name}': width {bits} or flags {flags} invalid"
                )));
            }
            let grid = if flags & 2 != 0 {
                Grid::MidRise
            } else {
                Grid::MidTread
            };
            formats.push(
                QFormat::new(bits, frac, flags & 1 != 0, grid)
                    .map_err(|e| r.err(format!("tensor '{name}': {e}")))?,
            );
        }
        let per = elements / n_formats as u64;
        let expect: u64 = if n_formats == 1 {
            elements * u64::from(formats[0].bits())
        } else {
            formats.iter().map(|f| per * u64::from(f.bits())).sum()
        };
        let payload = u64::from_le_bytes(r.array()?);
        if payload != expect {
            return Err(r.err(format!(
                "tensor '{name}': payload of {payload} bits, expected {expect}"
            )));
        }
        let data = r.take(payload.div_ceil(8) as usize)?;
        let mut codes = Vec::with_capacity(elements as usize);
        let (mut acc, mut have, mut idx) = (0u64, 0u32, 0usize);
        for e in 0..elements {
            let f = formats[if n_formats == 1 {
                0
            } else {
                (e / per) as usize
            }];
            let b = f.bits();
            while have < b {
                acc |= u64::from(data[idx]) << have;
                idx += 1;
                have += 8;
            }
            let raw = (acc & ((1u64 << b) - 1)) as i64;
            acc >>= b;
            have -= b;
            let q = raw + f.min_code();
            if q > f.max_code() {
                return Err(r.err(format!("tensor '{name}': code {q} beyond {f}")));
            }
            codes.push(q as i8);
        }
        let arr = ArrayD::from_shape_vec(IxDyn(&shape), codes).map_err(|e| r.err(e.to_string()))?;
        let codes = if n_formats == 1 {
            QTensor::from_codes(arr, formats[0])
        } else {
            QTensor::from_codes_per_channel(arr, 0, formats)
        }
        .map_err(|e| r.err(format!("tensor '{name}': {e}")))?;
        out.push(WeightCodes { node: name, codes });
    }
    if r.pos != bytes.len() {
        return Err(r.err(format!("{} trailing bytes", bytes.len() - r.pos)));
    }
    Ok(out)
}

/// Writes weight tensors to `path` (see [`to_bytes`]). An existing file is replaced only after the
/// whole content is written to a temporary file beside it.
///
/// # Errors
/// As [`to_bytes`]; [`Error::Io`] naming the path.
pub fn write(path: impl AsRef<Path>, tensors: &[WeightCodes]) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_bytes(tensors)?;
    let tmp = path.with_extension("fixqpack.tmp");
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads weight tensors from `path` (see [`from_bytes`]).
///
/// # Errors
/// [`Error::Io`] naming the path; as [`from_bytes`].
pub fn read(path: impl AsRef<Path>) -> Result<Vec<WeightCodes>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<WeightCodes> {
        let a = ArrayD::from_shape_vec(
            IxDyn(&[3, 2, 1, 2]),
            (0..12).map(|i| ((i * 5) % 7) as i8 - 3).collect(),
        )
        .unwrap();
        let fs = vec![
            QFormat::signed(3, 1).unwrap(),
            QFormat::signed(4, 2).unwrap(),
            QFormat::signed(8, 0).unwrap(),
        ];
        let b = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![-1i8, 0, 0, -1]).unwrap();
        vec![
            WeightCodes {
                node: "conv".into(),
                codes: QTensor::from_codes_per_channel(a, 0, fs).unwrap(),
            },
            WeightCodes {
                node: "fc".into(),
                codes: QTensor::from_codes(b, QFormat::mid_rise(1, 3).unwrap()).unwrap(),
            },
        ]
    }

    #[test]
    fn round_trip_and_size() {
        let w = sample();
        let bytes = to_bytes(&w).unwrap();
        assert_eq!(from_bytes(&bytes).unwrap(), w);
        assert_eq!(payload_bits(&w), 4 * (3 + 4 + 8) + 4);
    }

    #[test]
    fn every_prefix_and_flip_is_an_error_or_ok_never_a_panic() {
        let bytes = to_bytes(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(from_bytes(&bytes[..n]).is_err(), "prefix {n}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = from_bytes(&b);
            }
        }
    }

    #[test]
    fn huge_claim_is_rejected_before_allocation() {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(b'w');
        b.push(2);
        b.extend_from_slice(&(1u64 << 20).to_le_bytes());
        b.extend_from_slice(&(1u64 << 20).to_le_bytes());
        b.extend_from_slice(&[0u8; 32]);
        match from_bytes(&b) {
            Err(Error::Malformed { reason, .. }) => {
                assert!(reason.contains("elements"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
