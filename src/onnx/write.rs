//! Protocol-buffer wire format, the writing half: the primitives that [`super::encode`] builds ONNX
//! messages from, the mirror of [`super::wire`].
//!
//! A record is a key varint `field << 3 | wire_type` followed by its value: a varint (type 0), a varint
//! length and that many bytes (type 2: strings, bytes, nested messages, packed repeated integers);
//! floats travel as raw tensor bytes, so type 5 is not needed. Negative `int32`/`int64` values are written as the ten-byte
//! two's-complement varint that protobuf specifies (not zig-zag, which only `sint*` fields use).
//! Nested messages are encoded into their own buffer first, so their length is known when the
//! parent writes it. Writing cannot fail.

/// Wire type 0: varint.
const VARINT: u32 = 0;
/// Wire type 2: length-delimited.
const LEN: u32 = 2;

/// One message being encoded.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty message.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The encoded message.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        debug_assert!((1..=u32::MAX >> 3).contains(&field));
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    /// An `int32`/`int64`/enum/`bool` field (negative values as 10-byte two's complement).
    pub(crate) fn int(&mut self, field: u32, v: i64) {
        self.key(field, VARINT);
        self.varint(v as u64);
    }

    /// A `bytes` field.
    pub(crate) fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// A `string` field.
    pub(crate) fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// A packed repeated `int64` field (nothing is written for an empty list).
    pub(crate) fn packed_ints(&mut self, field: u32, vs: &[i64]) {
        if vs.is_empty() {
            return;
        }
        let mut inner = Writer::new();
        for &v in vs {
            inner.varint(v as u64);
        }
        self.bytes(field, &inner.buf);
    }

    /// A nested message, filled in by `fill`.
    pub(crate) fn message(&mut self, field: u32, fill: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::new();
        fill(&mut inner);
        self.bytes(field, &inner.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{Reader, Value};
    use super::*;

    /// Every record of `bytes` as (field, value).
    fn records(bytes: &[u8]) -> Vec<(u32, Value<'_>)> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some(rec) = r.next_field().unwrap() {
            out.push(rec);
        }
        out
    }

    #[test]
    fn varints_match_the_protobuf_encoding_and_read_back() {
        let mut w = Writer::new();
        w.int(1, 300);
        w.int(2, 0);
        w.int(3, -1);
        w.int(4, i64::MAX);
        w.int(536_870_911, 1); // the largest field number: a 5-byte key
        let b = w.into_bytes();
        // 300 = 0b10_0101100 -> ac 02 (the protobuf documentation's example); -1 is ten bytes.
        assert_eq!(&b[..5], &[0x08, 0xac, 0x02, 0x10, 0x00]);
        assert_eq!(
            &b[5..16],
            &[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]
        );
        let got: Vec<(u32, i64)> = records(&b)
            .into_iter()
            .map(|(f, v)| (f, v.as_i64(0, "x").unwrap()))
            .collect();
        assert_eq!(
            got,
            [(1, 300), (2, 0), (3, -1), (4, i64::MAX), (536_870_911, 1)]
        );
    }

    #[test]
    fn strings_and_bytes_read_back() {
        let mut w = Writer::new();
        w.int(2, -3);
        w.string(4, "DequantizeLinear");
        w.bytes(9, &[0, 255, 7]);
        w.string(5, "");
        let b = w.into_bytes();
        let rec = records(&b);
        assert_eq!(rec.len(), 4);
        assert_eq!(rec[0].1.as_i64(0, "i").unwrap(), -3);
        assert_eq!(rec[1].1.as_string(0, "s").unwrap(), "DequantizeLinear");
        assert_eq!(rec[2].1.as_bytes(0, "b").unwrap().0, &[0, 255, 7]);
        assert_eq!(rec[3].1.as_string(0, "s").unwrap(), "");
        assert_eq!(rec.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 4, 9, 5]);
    }

    #[test]
    fn packed_fields_read_back_through_the_readers_repeated_decoders() {
        let mut w = Writer::new();
        w.packed_ints(1, &[1, 150, -2, 0, 1 << 40]);
        w.packed_ints(3, &[]);
        w.packed_ints(2, &[7]);
        let b = w.into_bytes();
        // field 1, length-delimited: 01, 96 01, then -2 as ten bytes, 00, then 2^40 in six bytes.
        assert_eq!(&b[..5], &[0x0a, 20, 0x01, 0x96, 0x01]);
        let rec = records(&b);
        assert_eq!(rec.len(), 2, "an empty packed list writes nothing");
        let mut ints = Vec::new();
        rec[0].1.push_i64s(0, "ints", &mut ints).unwrap();
        assert_eq!(ints, [1, 150, -2, 0, 1 << 40]);
        assert_eq!(rec[1].0, 2);
        let mut one = Vec::new();
        rec[1].1.push_i64s(0, "ints", &mut one).unwrap();
        assert_eq!(one, [7]);
    }

    #[test]
    fn nested_messages_carry_their_length_and_read_back() {
        let mut w = Writer::new();
        w.message(7, |g| {
            g.string(2, "graph");
            g.message(1, |n| {
                n.string(4, "Relu");
                n.int(3, 5);
            });
            g.message(1, |_| {});
        });
        w.int(1, 10);
        let b = w.into_bytes();
        let outer = records(&b);
        assert_eq!(outer.len(), 2);
        assert_eq!(outer[1].1.as_i64(0, "ir").unwrap(), 10);
        let (gb, _) = outer[0].1.as_bytes(0, "graph").unwrap();
        let g = records(gb);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].1.as_string(0, "name").unwrap(), "graph");
        let (nb, _) = g[1].1.as_bytes(0, "node").unwrap();
        let n = records(nb);
        assert_eq!(n[0].1.as_string(0, "op").unwrap(), "Relu");
        assert_eq!(n[1].1.as_i64(0, "i").unwrap(), 5);
        let (empty, _) = g[2].1.as_bytes(0, "node").unwrap();
        assert!(empty.is_empty());
    }
}
