//! ONNX messages for writing a model: the subset of `onnx.proto` that an exported inference graph
//! needs, encoded with [`super::write::Writer`]. Field numbers follow `onnx/onnx.proto` and match the
//! reader in [`super::proto`].

use super::write::Writer;

/// `TensorProto.DataType` values the writer emits.
pub(crate) mod data_type {
    /// 32-bit float.
    pub(crate) const FLOAT: i32 = 1;
    /// Unsigned 8-bit integer.
    pub(crate) const UINT8: i32 = 2;
    /// Signed 8-bit integer.
    pub(crate) const INT8: i32 = 3;
    /// Unsigned 16-bit integer (QuantizeLinear/DequantizeLinear from opset 21).
    pub(crate) const UINT16: i32 = 4;
    /// Signed 16-bit integer (QuantizeLinear/DequantizeLinear from opset 21).
    pub(crate) const INT16: i32 = 5;
    /// Signed 32-bit integer.
    pub(crate) const INT32: i32 = 6;
    /// Signed 64-bit integer.
    pub(crate) const INT64: i32 = 7;
    /// Unsigned 4-bit integer, two per byte (IR version 10, opset 21).
    pub(crate) const UINT4: i32 = 21;
    /// Signed 4-bit integer, two per byte (IR version 10, opset 21).
    pub(crate) const INT4: i32 = 22;
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue {
    /// `INT`.
    Int(i64),
    /// `STRING`.
    String(String),
    /// `INTS`.
    Ints(Vec<i64>),
}

/// A `NodeProto`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeOut {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(String, AttrValue)>,
}

/// A `TensorProto` with its data in `raw_data` (little-endian; 4-bit types two per byte, the first
/// element in the low nibble).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorOut {
    pub name: String,
    pub data_type: i32,
    pub dims: Vec<i64>,
    pub raw: Vec<u8>,
}

/// A `ValueInfoProto` of a tensor: element type and shape (`None`: the symbolic dimension `N`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValueInfoOut {
    pub name: String,
    pub elem_type: i32,
    pub shape: Vec<Option<i64>>,
}

/// A `GraphProto`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct GraphOut {
    pub name: String,
    pub nodes: Vec<NodeOut>,
    pub initializers: Vec<TensorOut>,
    pub inputs: Vec<ValueInfoOut>,
    pub outputs: Vec<ValueInfoOut>,
}

/// A `ModelProto` importing one default-domain opset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelOut {
    pub ir_version: i64,
    pub opset: i64,
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: String,
    pub graph: GraphOut,
}

/// Packs 4-bit codes (each in −8..=7 or 0..=15) two per byte, the first in the low nibble, as ONNX
/// stores `INT4`/`UINT4`; an odd count leaves the last high nibble 0.
pub(crate) fn pack_nibbles(codes: &[i64]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|p| {
            let lo = (p[0] & 0xf) as u8;
            let hi = p.get(1).map_or(0, |&v| (v & 0xf) as u8);
            lo | hi << 4
        })
        .collect()
}

/// Encodes a model.
pub(crate) fn model(m: &ModelOut) -> Vec<u8> {
    let mut w = Writer::new();
    w.int(1, m.ir_version);
    w.string(2, &m.producer_name);
    w.string(3, &m.producer_version);
    if !m.doc_string.is_empty() {
        w.string(6, &m.doc_string);
    }
    w.message(7, |g| graph(g, &m.graph));
    w.message(8, |o| {
        o.string(1, "");
        o.int(2, m.opset);
    });
    w.into_bytes()
}

fn graph(w: &mut Writer, g: &GraphOut) {
    for n in &g.nodes {
        w.message(1, |w| node(w, n));
    }
    w.string(2, &g.name);
    for t in &g.initializers {
        w.message(5, |w| tensor(w, t));
    }
    for v in &g.inputs {
        w.message(11, |w| value_info(w, v));
    }
    for v in &g.outputs {
        w.message(12, |w| value_info(w, v));
    }
}

fn node(w: &mut Writer, n: &NodeOut) {
    for i in &n.inputs {
        w.string(1, i);
    }
    for o in &n.outputs {
        w.string(2, o);
    }
    w.string(3, &n.name);
    w.string(4, &n.op_type);
    for (name, value) in &n.attributes {
        w.message(5, |a| {
            a.string(1, name);
            match value {
                AttrValue::Int(i) => {
                    a.int(3, *i);
                    a.int(20, 2);
                }
                AttrValue::String(s) => {
                    a.string(4, s);
                    a.int(20, 3);
                }
                AttrValue::Ints(v) => {
                    a.packed_ints(8, v);
                    a.int(20, 7);
                }
            }
        });
    }
}

fn tensor(w: &mut Writer, t: &TensorOut) {
    w.packed_ints(1, &t.dims);
    w.int(2, i64::from(t.data_type));
    w.string(8, &t.name);
    w.bytes(9, &t.raw);
}

fn value_info(w: &mut Writer, v: &ValueInfoOut) {
    w.string(1, &v.name);
    w.message(2, |tp| {
        tp.message(1, |tt| {
            tt.int(1, i64::from(v.elem_type));
            tt.message(2, |shape| {
                for d in &v.shape {
                    shape.message(1, |dim| match d {
                        Some(n) => dim.int(1, *n),
                        None => dim.string(2, "N"),
                    });
                }
            });
        });
    });
}

#[cfg(test)]
mod tests {
    use super::super::proto;
    use super::*;

    fn sample() -> ModelOut {
        let w: Vec<u8> = [3i8, -5, 127, -128].iter().map(|&c| c as u8).collect();
        ModelOut {
            ir_version: 7,
            opset: 13,
            producer_name: "fixq".into(),
            producer_version: "0.1.0".into(),
            doc_string: "test".into(),
            graph: GraphOut {
                name: "g".into(),
                nodes: vec![
                    NodeOut {
                        name: "w_dq".into(),
                        op_type: "DequantizeLinear".into(),
                        inputs: vec!["w_q".into(), "w_scale".into(), String::new()],
                        outputs: vec!["w".into()],
                        attributes: vec![("axis".into(), AttrValue::Int(-1))],
                    },
                    NodeOut {
                        name: "conv".into(),
                        op_type: "Conv".into(),
                        inputs: vec!["x".into(), "w".into()],
                        outputs: vec!["y".into()],
                        attributes: vec![
                            ("pads".into(), AttrValue::Ints(vec![1, 0, 1, 300])),
                            ("auto_pad".into(), AttrValue::String("NOTSET".into())),
                        ],
                    },
                ],
                initializers: vec![
                    TensorOut {
                        name: "w_q".into(),
                        data_type: data_type::INT8,
                        dims: vec![4, 1, 1, 1],
                        raw: w,
                    },
                    TensorOut {
                        name: "w_scale".into(),
                        data_type: data_type::FLOAT,
                        dims: vec![],
                        raw: 0.25f32.to_le_bytes().to_vec(),
                    },
                ],
                inputs: vec![ValueInfoOut {
                    name: "x".into(),
                    elem_type: data_type::FLOAT,
                    shape: vec![None, Some(1), Some(8), Some(8)],
                }],
                outputs: vec![ValueInfoOut {
                    name: "y".into(),
                    elem_type: data_type::FLOAT,
                    shape: vec![None, Some(4), Some(8), Some(8)],
                }],
            },
        }
    }

    #[test]
    fn a_model_round_trips_through_the_reader() {
        let bytes = model(&sample());
        let m = proto::model(&bytes).unwrap();
        assert_eq!(m.opset, Some(13));
        let g = m.graph.unwrap();
        assert_eq!(g.nodes.len(), 2);
        let dq = &g.nodes[0];
        assert_eq!(dq.op_type, "DequantizeLinear");
        assert_eq!(dq.name, "w_dq");
        assert_eq!(dq.inputs, ["w_q", "w_scale", ""]);
        assert_eq!(dq.outputs, ["w"]);
        assert_eq!(dq.attributes[0].name, "axis");
        assert_eq!(dq.attributes[0].kind, proto::attr_type::INT);
        assert_eq!(dq.attributes[0].i, -1);
        let conv = &g.nodes[1];
        assert_eq!(conv.attributes[0].ints, [1, 0, 1, 300]);
        assert_eq!(conv.attributes[0].kind, proto::attr_type::INTS);
        assert_eq!(conv.attributes[1].s, b"NOTSET");
        assert_eq!(conv.attributes[1].kind, proto::attr_type::STRING);
        assert_eq!(g.initializers.len(), 2);
        let w = &g.initializers[0];
        assert_eq!((w.name.as_str(), w.data_type), ("w_q", data_type::INT8));
        assert_eq!(w.dims, [4, 1, 1, 1]);
        assert_eq!(w.raw_data.unwrap().0, &[3, 0xfb, 0x7f, 0x80]);
        let s = &g.initializers[1];
        assert!(s.dims.is_empty());
        assert_eq!(s.raw_data.unwrap().0, &0.25f32.to_le_bytes());
        assert_eq!(g.inputs[0].name, "x");
        assert_eq!(g.inputs[0].elem_type, data_type::FLOAT);
        assert_eq!(
            g.inputs[0].shape.as_deref(),
            Some(&[None, Some(1), Some(8), Some(8)][..])
        );
        assert_eq!(
            g.outputs[0].shape.as_deref(),
            Some(&[None, Some(4), Some(8), Some(8)][..])
        );
    }

    #[test]
    fn nibbles_pack_low_first() {
        assert_eq!(pack_nibbles(&[1, -1, -8, 7, 5]), [0xf1, 0x78, 0x05]);
        assert_eq!(pack_nibbles(&[15, 0]), [0x0f]);
        assert!(pack_nibbles(&[]).is_empty());
    }
}
