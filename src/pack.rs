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
//! Only what the reader accepts is written: [`to_bytes`] refuses an empty tensor (a weight tensor
//! with no elements has nothing to pack, and the reader refuses one) and a per-channel tensor whose
//! channel axis is not 0, so every file it writes reads back equal.
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
/// that uses it. [`to_bytes`] refuses other channel axes and empty tensors.
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
    let len = c.len() as u64;
    match w.codes.channel_axis() {
        None => len.saturating_mul(u64::from(w.codes.format().bits())),
        Some(axis) => {
            let per = len / c.shape().get(axis).copied().unwrap_or(1).max(1) as u64;
            w.codes.formats().iter().fold(0u64, |acc, f| {
                acc.saturating_add(per.saturating_mul(u64::from(f.bits())))
            })
        }
    }
}

struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Appends the low `bits` bits of `v` (1..=8; higher bits are masked off, so a bad value cannot
    /// corrupt its neighbours).
    fn put(&mut self, v: u64, bits: u32) {
        debug_assert!((1..=8).contains(&bits));
        self.acc |= (v & ((1 << bits) - 1)) << self.n;
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
/// [`Error::InvalidArgument`] naming the tensor for a name longer than 65 535 bytes, a rank of 0 or
/// above 8, a width above 8, no elements, or per-channel formats along an axis other than 0; and
/// for more than `u32::MAX` tensors.
pub fn to_bytes(tensors: &[WeightCodes]) -> Result<Vec<u8>> {
    let invalid = |w: &WeightCodes, what: String| Error::InvalidArgument {
        name: "weights",
        reason: format!("tensor '{}': {what}", w.node),
    };
    let count = u32::try_from(tensors.len()).map_err(|_| Error::InvalidArgument {
        name: "weights",
        reason: format!(
            "{} tensors; a packed file holds at most {}",
            tensors.len(),
            u32::MAX
        ),
    })?;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for w in tensors {
        let name = w.node.as_bytes();
        let shape = w.codes.codes().shape();
        if let Some(axis) = w.codes.channel_axis().filter(|&a| a != 0) {
            return Err(invalid(
                w,
                format!(
                    "per-channel formats along axis {axis} of shape {shape:?}; packed weights \
                     hold them along axis 0 (the output channel)"
                ),
            ));
        }
        if w.codes.codes().is_empty() {
            return Err(invalid(
                w,
                format!("shape {shape:?} has no elements; packed weights hold non-empty tensors"),
            ));
        }
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
        // At most shape[0] formats, and shape[0] <= the element count, which fits in memory.
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
                // In range by QTensor's construction; checked so that no file holds a wrong code.
                let offset = i64::from(q) - f.min_code();
                if offset < 0 || offset >= 1 << f.bits() {
                    return Err(invalid(
                        w,
                        format!("code {q} of channel {c} is outside {f}'s range"),
                    ));
                }
                bw.put(offset as u64, f.bits());
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
        let formats = read_formats(&mut r, &name, n_formats)?;
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
        let codes = unpack_codes(data, &formats, elements, per)
            .map_err(|(q, f)| r.err(format!("tensor '{name}': code {q} beyond {f}")))?;
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

/// `n` formats of tensor `name`: width (u8), fractional bits (i16), flags (u8: 1 signed, 2 mid-rise).
fn read_formats(r: &mut Reader<'_>, name: &str, n: usize) -> Result<Vec<QFormat>> {
    let mut formats = Vec::with_capacity(n);
    for _ in 0..n {
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
    Ok(formats)
}

/// Unpacks `elements` codes, `per` per format (LSB first, each offset by its format's minimum code);
/// `data` holds exactly the payload's bytes. Errors with the first code beyond its format.
fn unpack_codes(
    data: &[u8],
    formats: &[QFormat],
    elements: u64,
    per: u64,
) -> Result<Vec<i8>, (i64, QFormat)> {
    let mut codes = Vec::with_capacity(elements as usize);
    let (mut acc, mut have, mut idx) = (0u64, 0u32, 0usize);
    for e in 0..elements {
        let f = formats[if formats.len() == 1 {
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
            return Err((q, f));
        }
        codes.push(q as i8);
    }
    Ok(codes)
}

/// Writes weight tensors to `path` (see [`to_bytes`]), atomically: the bytes go to a new temporary
/// file beside it (created exclusively, so no existing file or planted symlink is followed or
/// overwritten), which is synced and then renamed over `path`; a reader sees the old file or the
/// new one, never a part. On error the temporary file is removed and an existing file is left as
/// it was.
///
/// # Errors
/// As [`to_bytes`] (before anything is written); [`Error::Io`] naming the path.
pub fn write(path: impl AsRef<Path>, tensors: &[WeightCodes]) -> Result<()> {
    let bytes = to_bytes(tensors)?;
    crate::io::atomic::write_atomic(path.as_ref(), &bytes)
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
    fn bit_writer_masks_values_wider_than_their_width() {
        let mut bw = BitWriter {
            bytes: Vec::new(),
            acc: 0,
            n: 0,
        };
        // 0xff in 3 bits is 0b111, and the 5 bits after it stay 0.
        bw.put(0xff, 3);
        bw.put(0, 5);
        bw.put(0b1, 1);
        assert_eq!(bw.finish(), vec![0b0000_0111, 0b1]);
    }

    /// A fresh, empty directory for one test.
    fn scratch(test: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("fixq-pack-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn write_then_read_round_trips_and_replaces() {
        let d = scratch("round-trip");
        let p = d.join("w.fixqpack");
        let w = sample();
        write(&p, &w).unwrap();
        assert_eq!(read(&p).unwrap(), w);
        assert_eq!(std::fs::read(&p).unwrap(), to_bytes(&w).unwrap());
        // Replacing with fewer tensors leaves exactly the new content, and nothing else in the
        // directory.
        write(&p, &w[1..]).unwrap();
        assert_eq!(read(&p).unwrap(), w[1..].to_vec());
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("w.fixqpack")]);
        // No tensors at all is a valid file too.
        write(&p, &[]).unwrap();
        assert_eq!(read(&p).unwrap(), vec![]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_does_not_touch_a_file_or_symlink_at_the_old_temporary_name() {
        // Before issue 15, write used the fixed name `w.fixqpack.tmp`: it overwrote such a file and
        // followed a symlink planted there.
        let d = scratch("old-temp-name");
        let p = d.join("w.fixqpack");
        let old_tmp = d.join("w.fixqpack.tmp");
        std::fs::write(&old_tmp, b"someone else's").unwrap();
        write(&p, &sample()).unwrap();
        assert_eq!(std::fs::read(&old_tmp).unwrap(), b"someone else's");
        #[cfg(unix)]
        {
            let other = d.join("other.fixqpack");
            let victim = d.join("victim");
            std::fs::write(&victim, b"do not follow").unwrap();
            std::os::unix::fs::symlink(&victim, d.join("other.fixqpack.tmp")).unwrap();
            write(&other, &sample()).unwrap();
            assert_eq!(std::fs::read(&victim).unwrap(), b"do not follow");
            assert_eq!(read(&other).unwrap(), sample());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let d = scratch("failed");
        let p = d.join("w.fixqpack");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"kept").unwrap();
        match write(&p, &sample()) {
            Err(Error::Io { path, .. }) => assert_eq!(path, p.display().to_string()),
            other => panic!("{other:?}"),
        }
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("w.fixqpack")]);
        // Refused by to_bytes: nothing is created at all.
        let empty = WeightCodes {
            node: "e".into(),
            codes: QTensor::from_codes(
                ArrayD::<i8>::zeros(IxDyn(&[0, 2])),
                QFormat::signed(4, 0).unwrap(),
            )
            .unwrap(),
        };
        let q = d.join("e.fixqpack");
        assert!(matches!(
            write(&q, &[empty]),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(!q.exists());
        std::fs::remove_dir_all(&d).unwrap();
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
