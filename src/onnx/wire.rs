//! Protocol-buffer wire format: the few primitives ONNX decoding needs.
//!
//! A message is a sequence of `(key, value)` records. The key is a varint `field << 3 | wire_type`;
//! the value is a varint (type 0), 8 little-endian bytes (type 1), a varint length followed by that
//! many bytes (type 2) or 4 little-endian bytes (type 5). Types 3 and 4 (groups) are deprecated and
//! never appear in ONNX files; they are rejected.
//!
//! Every length read from the input is checked against the bytes that remain *before* anything is
//! sliced or allocated, and every error carries the absolute byte offset in the original buffer.

use crate::error::{Error, Result};

/// Deepest message nesting the decoder accepts (model → graph → node → attribute → tensor is 5).
pub(crate) const MAX_DEPTH: u32 = 8;

/// The value part of one record.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1 (no field import reads has this type, so the value is skipped).
    Fixed64,
    /// Wire type 2, with the absolute offset of its first byte.
    Bytes(&'a [u8], u64),
    /// Wire type 5.
    Fixed32(u32),
}

/// Reads records from one message's bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute offset of `buf[0]` in the original input, for error messages.
    base: u64,
    /// Nesting depth of this message (the top-level message is 0).
    depth: u32,
}

/// A `Malformed` error for ONNX data at `offset`.
pub(crate) fn malformed(offset: u64, reason: impl Into<String>) -> Error {
    Error::Malformed {
        format: "onnx",
        offset,
        reason: reason.into(),
    }
}

impl<'a> Reader<'a> {
    /// A reader over a whole top-level message.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
            depth: 0,
        }
    }

    /// A reader over a nested message found at absolute `offset`, one level deeper than `self`.
    ///
    /// # Errors
    /// `Malformed` if the nesting would exceed [`MAX_DEPTH`].
    pub(crate) fn nested(&self, bytes: &'a [u8], offset: u64) -> Result<Self> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(malformed(
                offset,
                format!("messages nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(Reader {
            buf: bytes,
            pos: 0,
            base: offset,
            depth,
        })
    }

    /// Absolute offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn read_varint(&mut self) -> Result<u64> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(malformed(self.offset(), "truncated varint"));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && byte > 1 {
                return Err(malformed(start, "varint longer than 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(start, "varint longer than 10 bytes"))
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        let remaining = self.buf.len() - self.pos;
        if len > remaining {
            return Err(malformed(
                self.offset(),
                format!("{what} claims {len} bytes but only {remaining} remain"),
            ));
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    /// The next record as `(field number, value)`, or `None` at the end of the message.
    ///
    /// # Errors
    /// `Malformed` on a truncated record, a field number of 0, or a group / unknown wire type.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key_offset = self.offset();
        let key = self.read_varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(malformed(
                key_offset,
                format!("invalid field number {field}"),
            ));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.read_varint()?),
            1 => {
                self.take(8, "fixed64 field")?;
                Value::Fixed64
            }
            2 => {
                let len_offset = self.offset();
                let len = self.read_varint()?;
                let len = usize::try_from(len).map_err(|_| {
                    malformed(len_offset, format!("length {len} does not fit in memory"))
                })?;
                let at = self.offset();
                Value::Bytes(self.take(len, "length-delimited field")?, at)
            }
            5 => {
                let b = self.take(4, "fixed32 field")?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
            t => {
                return Err(malformed(
                    key_offset,
                    format!("unsupported wire type {t} in field {field}"),
                ));
            }
        };
        Ok(Some((field as u32, value)))
    }
}

impl<'a> Value<'a> {
    /// The value as a varint-encoded integer (int32/int64/enum/bool are all varints).
    pub(crate) fn as_i64(&self, at: u64, what: &str) -> Result<i64> {
        match *self {
            Value::Varint(v) => Ok(v as i64),
            _ => Err(malformed(at, format!("{what}: expected a varint"))),
        }
    }

    /// The value as a length-delimited byte string with its absolute offset.
    pub(crate) fn as_bytes(&self, at: u64, what: &str) -> Result<(&'a [u8], u64)> {
        match *self {
            Value::Bytes(b, off) => Ok((b, off)),
            _ => Err(malformed(
                at,
                format!("{what}: expected a length-delimited field"),
            )),
        }
    }

    /// The value as UTF-8 text.
    pub(crate) fn as_string(&self, at: u64, what: &str) -> Result<String> {
        let (b, off) = self.as_bytes(at, what)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|e| {
            malformed(
                off + e.valid_up_to() as u64,
                format!("{what}: invalid UTF-8"),
            )
        })
    }

    /// The value as an `f32` (wire type 5).
    pub(crate) fn as_f32(&self, at: u64, what: &str) -> Result<f32> {
        match *self {
            Value::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(malformed(at, format!("{what}: expected a fixed32 float"))),
        }
    }

    /// Appends a repeated varint field to `out`, accepting both packed and unpacked encodings.
    pub(crate) fn push_i64s(&self, at: u64, what: &str, out: &mut Vec<i64>) -> Result<()> {
        match *self {
            Value::Varint(v) => {
                out.push(v as i64);
                Ok(())
            }
            Value::Bytes(b, off) => {
                // At most one value per byte, so the reservation is bounded by the input size.
                out.reserve(b.len().min(1 << 20));
                let mut r = Reader {
                    buf: b,
                    pos: 0,
                    base: off,
                    depth: 0,
                };
                while r.pos < b.len() {
                    out.push(r.read_varint()? as i64);
                }
                Ok(())
            }
            _ => Err(malformed(at, format!("{what}: expected varints"))),
        }
    }

    /// Appends a repeated float field to `out`, accepting both packed and unpacked encodings.
    pub(crate) fn push_f32s(&self, at: u64, what: &str, out: &mut Vec<f32>) -> Result<()> {
        match *self {
            Value::Fixed32(v) => {
                out.push(f32::from_bits(v));
                Ok(())
            }
            Value::Bytes(b, off) => {
                if b.len() % 4 != 0 {
                    return Err(malformed(
                        off,
                        format!("{what}: packed floats of {} bytes", b.len()),
                    ));
                }
                out.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                Ok(())
            }
            _ => Err(malformed(at, format!("{what}: expected fixed32 floats"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_edges() {
        // field 1, varint 300 ; field 2, varint u64::MAX
        let mut buf = vec![0x08, 0xac, 0x02, 0x10];
        buf.extend([0xff; 9]);
        buf.push(0x01);
        let mut r = Reader::new(&buf);
        match r.next_field().unwrap() {
            Some((1, Value::Varint(300))) => {}
            other => panic!("{other:?}"),
        }
        match r.next_field().unwrap() {
            Some((2, Value::Varint(u64::MAX))) => {}
            other => panic!("{other:?}"),
        }
        assert!(r.next_field().unwrap().is_none());
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let mut buf = vec![0x08];
        buf.extend([0xff; 10]);
        buf.push(0x00);
        assert!(matches!(
            Reader::new(&buf).next_field(),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn huge_length_is_rejected_before_slicing() {
        // field 1, wire type 2, length 2^40
        let buf = [0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        let err = Reader::new(&buf).next_field().unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
    }

    #[test]
    fn groups_and_field_zero_are_rejected() {
        assert!(Reader::new(&[0x0b]).next_field().is_err());
        assert!(Reader::new(&[0x00, 0x00]).next_field().is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let buf = [0u8; 0];
        let mut r = Reader::new(&buf);
        for _ in 0..MAX_DEPTH {
            r = r.nested(&buf, 0).unwrap();
        }
        assert!(r.nested(&buf, 0).is_err());
    }

    #[test]
    fn packed_and_unpacked_repeated() {
        let mut v = Vec::new();
        Value::Bytes(&[0x01, 0x96, 0x01], 0)
            .push_i64s(0, "x", &mut v)
            .unwrap();
        Value::Varint(7).push_i64s(0, "x", &mut v).unwrap();
        assert_eq!(v, [1, 150, 7]);
        let mut f = Vec::new();
        Value::Bytes(&1.5f32.to_le_bytes(), 0)
            .push_f32s(0, "x", &mut f)
            .unwrap();
        assert_eq!(f, [1.5]);
        assert!(
            Value::Bytes(&[0, 0, 0], 0)
                .push_f32s(0, "x", &mut f)
                .is_err()
        );
    }
}
