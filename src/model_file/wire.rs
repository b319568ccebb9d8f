//! The little-endian primitives of the model file: a [`Writer`] that appends them and a [`Reader`]
//! that checks every length against the bytes that remain before it reads or allocates.

use crate::error::{Error, Result};
use crate::fixed::{Grid, QFormat};

/// The `format` every [`Error::Malformed`] of the model file names.
pub(crate) const FORMAT: &str = "fixq model file";

/// Appends little-endian values.
#[derive(Default)]
pub(crate) struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    pub fn bool(&mut self, v: bool) {
        self.bytes.push(u8::from(v));
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    /// An `f32` as its bits (NaN payloads and signed zeros kept).
    pub fn f32(&mut self, v: f32) {
        self.u32(v.to_bits());
    }
    /// An `f64` as its bits.
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn usize(&mut self, v: usize) {
        self.u64(v as u64);
    }
    /// A `u32` count, or an error naming `what` when it does not fit.
    pub fn count(&mut self, n: usize, what: &str) -> Result<()> {
        let n = u32::try_from(n).map_err(|_| Error::InvalidArgument {
            name: "model",
            reason: format!(
                "{what}: {n} entries; a model file holds at most {}",
                u32::MAX
            ),
        })?;
        self.u32(n);
        Ok(())
    }
    /// A UTF-8 string: `u32` byte length, then the bytes.
    pub fn str(&mut self, s: &str) -> Result<()> {
        self.count(s.len(), "a name")?;
        self.bytes.extend_from_slice(s.as_bytes());
        Ok(())
    }
    pub fn i64s(&mut self, v: &[i64]) -> Result<()> {
        self.count(v.len(), "an integer list")?;
        v.iter().for_each(|&x| self.i64(x));
        Ok(())
    }
    pub fn usizes(&mut self, v: &[usize]) -> Result<()> {
        self.count(v.len(), "an integer list")?;
        v.iter().for_each(|&x| self.usize(x));
        Ok(())
    }
    /// A format in 4 bytes: width (u8), fractional bits (i16), flags (u8: 1 signed, 2 mid-rise).
    pub fn format(&mut self, f: QFormat) {
        // QFormat::new bounds the width to 1..=32 and the fractional bits to ±100.
        self.u8(f.bits() as u8);
        self.bytes
            .extend_from_slice(&(f.frac_bits() as i16).to_le_bytes());
        self.u8(u8::from(f.is_signed()) | (u8::from(f.grid() == Grid::MidRise) << 1));
    }
    pub fn formats(&mut self, fs: &[QFormat]) -> Result<()> {
        self.count(fs.len(), "a format list")?;
        fs.iter().for_each(|&f| self.format(f));
        Ok(())
    }
}

/// Reads values from `bytes[pos..end]`, each error a [`Error::Malformed`] at the byte it concerns.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    /// What is being read, for messages ("graph section", ...).
    pub context: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes[start..end]` (offsets stay those of the whole file).
    pub fn new(bytes: &'a [u8], start: usize, end: usize, context: &'static str) -> Self {
        debug_assert!(start <= end && end <= bytes.len());
        Self {
            bytes,
            pos: start,
            end,
            context,
        }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }
    /// A `Malformed` error at the current offset.
    pub fn err(&self, reason: impl std::fmt::Display) -> Error {
        self.err_at(self.pos, reason)
    }
    /// A `Malformed` error at `offset`.
    pub fn err_at(&self, offset: usize, reason: impl std::fmt::Display) -> Error {
        Error::Malformed {
            format: FORMAT,
            offset: offset as u64,
            reason: format!("{}: {reason}", self.context),
        }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.err(format!(
                "truncated: {n} more bytes needed, {} left",
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn bool(&mut self) -> Result<bool> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.err_at(at, format!("flag byte {v}, expected 0 or 1"))),
        }
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_bits(self.u32()?))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub fn usize(&mut self) -> Result<usize> {
        let at = self.pos;
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| self.err_at(at, format!("{v} does not fit this platform")))
    }
    /// A `u32` count of entries that take at least `min_bytes` each, checked against the bytes left
    /// (so no caller allocates for entries the input cannot hold).
    pub fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes.max(1)) > self.remaining() {
            return Err(self.err_at(
                at,
                format!(
                    "{what}: {n} entries of at least {min_bytes} bytes claimed, {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }
    pub fn str(&mut self) -> Result<String> {
        let n = self.count(1, "name length")?;
        let at = self.pos;
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(str::to_string)
            .map_err(|_| self.err_at(at, "a name is not UTF-8"))
    }
    pub fn i64s(&mut self) -> Result<Vec<i64>> {
        let n = self.count(8, "integer list")?;
        (0..n).map(|_| self.i64()).collect()
    }
    pub fn usizes(&mut self) -> Result<Vec<usize>> {
        let n = self.count(8, "integer list")?;
        (0..n).map(|_| self.usize()).collect()
    }
    pub fn format(&mut self) -> Result<QFormat> {
        let at = self.pos;
        let bits = u32::from(self.u8()?);
        let frac = i32::from(i16::from_le_bytes(self.array()?));
        let flags = self.u8()?;
        if flags > 3 {
            return Err(self.err_at(at, format!("format flags {flags}, expected 0..=3")));
        }
        let grid = if flags & 2 != 0 {
            Grid::MidRise
        } else {
            Grid::MidTread
        };
        QFormat::new(bits, frac, flags & 1 != 0, grid)
            .map_err(|e| self.err_at(at, format!("format: {e}")))
    }
    pub fn formats(&mut self) -> Result<Vec<QFormat>> {
        let n = self.count(4, "format list")?;
        (0..n).map(|_| self.format()).collect()
    }
    /// Errors unless every byte of the range was read.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} bytes left unread", self.remaining())));
        }
        Ok(())
    }
}
