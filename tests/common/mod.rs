//! Hand-encoded ONNX (protobuf) bytes for the reliability tests: small models that no exporter
//! would write, built field by field; and the error matchers those tests share.
#![allow(dead_code)]

use fixq::Error;

/// `(name, reason)` of an `InvalidArgument`.
pub fn invalid(e: Error) -> (&'static str, String) {
    match e {
        Error::InvalidArgument { name, reason } => (name, reason),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// `(what, expected, found)` of a `ShapeMismatch`.
pub fn shape_mismatch(e: Error) -> (String, String, String) {
    match e {
        Error::ShapeMismatch {
            what,
            expected,
            found,
        } => (what, expected, found),
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

/// The message of an `Unsupported`.
pub fn unsupported(e: Error) -> String {
    match e {
        Error::Unsupported(text) => text,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// A varint.
pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
pub fn field_bytes(field: u64, body: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(body.len() as u64, out);
    out.extend(body);
}

/// A varint field.
pub fn field_varint(field: u64, v: u64, out: &mut Vec<u8>) {
    varint(field << 3, out);
    varint(v, out);
}

/// A `TensorProto` named `name` of `data_type` with `dims` and raw bytes.
pub fn tensor(name: &str, data_type: u64, dims: &[u64], raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(1, d, &mut t);
    }
    field_varint(2, data_type, &mut t);
    field_bytes(8, name.as_bytes(), &mut t);
    field_bytes(9, raw, &mut t);
    t
}

/// A float `ValueInfoProto` named `name` with `dims`.
pub fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        field_varint(1, d, &mut dim);
        field_bytes(1, &dim, &mut shape);
    }
    let mut tensor_type = Vec::new();
    field_varint(1, 1, &mut tensor_type);
    field_bytes(2, &shape, &mut tensor_type);
    let mut ty = Vec::new();
    field_bytes(1, &tensor_type, &mut ty);
    let mut v = Vec::new();
    field_bytes(1, name.as_bytes(), &mut v);
    field_bytes(2, &ty, &mut v);
    v
}

/// A model: input `x` `[1, 4]`, one node `op_type` from `x` (and `extra_inputs`) to `y`, output `y`,
/// the given initializers, opset 13.
pub fn model(op_type: &str, extra_inputs: &[&str], initializers: &[Vec<u8>]) -> Vec<u8> {
    let mut node = Vec::new();
    field_bytes(1, b"x", &mut node);
    for i in extra_inputs {
        field_bytes(1, i.as_bytes(), &mut node);
    }
    field_bytes(2, b"y", &mut node);
    field_bytes(3, b"n0", &mut node);
    field_bytes(4, op_type.as_bytes(), &mut node);
    let mut graph = Vec::new();
    field_bytes(1, &node, &mut graph);
    for t in initializers {
        field_bytes(5, t, &mut graph);
    }
    field_bytes(11, &value_info("x", &[1, 4]), &mut graph);
    field_bytes(12, &value_info("y", &[1, 4]), &mut graph);
    let mut opset = Vec::new();
    field_varint(2, 13, &mut opset);
    let mut m = Vec::new();
    field_varint(1, 8, &mut m);
    field_bytes(7, &graph, &mut m);
    field_bytes(8, &opset, &mut m);
    m
}
