//! The subset of `onnx.proto` that import needs, decoded from the wire format.
//!
//! Field numbers follow `onnx/onnx.proto` (IR version 3 and later). Fields not listed here are
//! skipped without being decoded; subgraph attributes (`g`, `graphs`) are never decoded, so the
//! nesting depth is fixed by the message types and additionally capped by [`super::wire::MAX_DEPTH`].

use super::wire::{Reader, Value};
use crate::error::Result;

/// `TensorProto.DataType` values that import handles.
pub(crate) const DT_FLOAT: i32 = 1;
/// 64-bit signed integer.
pub(crate) const DT_INT64: i32 = 7;
pub(crate) const DT_BOOL: i32 = 9;

/// `AttributeProto.AttributeType` values that import reads.
pub(crate) mod attr_type {
    pub(crate) const FLOAT: i64 = 1;
    pub(crate) const INT: i64 = 2;
    pub(crate) const STRING: i64 = 3;
    pub(crate) const TENSOR: i64 = 4;
    pub(crate) const INTS: i64 = 7;
}

#[derive(Debug, Default)]
pub(crate) struct Model<'a> {
    pub graph: Option<GraphProto<'a>>,
    /// Version of the default (`""` / `"ai.onnx"`) operator set, if imported.
    pub opset: Option<i64>,
}

#[derive(Debug, Default)]
pub(crate) struct GraphProto<'a> {
    pub nodes: Vec<NodeProto<'a>>,
    pub initializers: Vec<TensorProto<'a>>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

#[derive(Debug, Default)]
pub(crate) struct NodeProto<'a> {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub attributes: Vec<AttributeProto<'a>>,
}

#[derive(Debug, Default)]
pub(crate) struct AttributeProto<'a> {
    pub name: String,
    pub kind: i64,
    pub f: f32,
    pub i: i64,
    pub s: Vec<u8>,
    pub t: Option<TensorProto<'a>>,
    pub floats: Vec<f32>,
    pub ints: Vec<i64>,
}

#[derive(Debug, Default)]
pub(crate) struct TensorProto<'a> {
    pub dims: Vec<i64>,
    pub data_type: i32,
    pub float_data: Vec<f32>,
    pub int64_data: Vec<i64>,
    pub name: String,
    /// Raw little-endian bytes and their absolute offset.
    pub raw_data: Option<(&'a [u8], u64)>,
    /// Data stored outside the file (`data_location = EXTERNAL` or `external_data` present).
    pub external: bool,
    /// Absolute offset of the message, for errors.
    pub offset: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ValueInfo {
    pub name: String,
    /// `TypeProto.Tensor.elem_type`, 0 if absent.
    pub elem_type: i32,
    /// Dimensions (`None` for `dim_param` or missing values); `None` if no shape was given.
    pub shape: Option<Vec<Option<i64>>>,
}

/// Decodes a `ModelProto`.
pub(crate) fn model(bytes: &[u8]) -> Result<Model<'_>> {
    let mut r = Reader::new(bytes);
    let mut m = Model::default();
    while let Some((field, v, at)) = next(&mut r)? {
        match field {
            7 => {
                let (b, off) = v.as_bytes(at, "ModelProto.graph")?;
                m.graph = Some(graph(&r.nested(b, off)?)?);
            }
            8 => {
                // OperatorSetIdProto { domain = 1, version = 2 }
                let (b, off) = v.as_bytes(at, "ModelProto.opset_import")?;
                let mut o = r.nested(b, off)?;
                let (mut domain, mut version) = (String::new(), 0);
                while let Some((f, v, at)) = next(&mut o)? {
                    match f {
                        1 => domain = v.as_string(at, "OperatorSetIdProto.domain")?,
                        2 => version = v.as_i64(at, "OperatorSetIdProto.version")?,
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == "ai.onnx" {
                    m.opset = Some(version);
                }
            }
            _ => {}
        }
    }
    Ok(m)
}

/// The next record with the absolute offset of its key.
fn next<'a>(r: &mut Reader<'a>) -> Result<Option<(u32, Value<'a>, u64)>> {
    let at = r.offset();
    Ok(r.next_field()?.map(|(f, v)| (f, v, at)))
}

fn graph<'a>(r0: &Reader<'a>) -> Result<GraphProto<'a>> {
    let mut r = r0.clone();
    let mut g = GraphProto::default();
    while let Some((field, v, at)) = next(&mut r)? {
        match field {
            1 => {
                let (b, off) = v.as_bytes(at, "GraphProto.node")?;
                g.nodes.push(node(&r.nested(b, off)?)?);
            }
            5 => {
                let (b, off) = v.as_bytes(at, "GraphProto.initializer")?;
                g.initializers.push(tensor(&r.nested(b, off)?)?);
            }
            11 | 12 => {
                let (b, off) = v.as_bytes(at, "GraphProto.input/output")?;
                let vi = value_info(&r.nested(b, off)?)?;
                if field == 11 {
                    g.inputs.push(vi)
                } else {
                    g.outputs.push(vi)
                }
            }
            _ => {}
        }
    }
    Ok(g)
}

fn node<'a>(r0: &Reader<'a>) -> Result<NodeProto<'a>> {
    let mut r = r0.clone();
    let mut n = NodeProto::default();
    while let Some((field, v, at)) = next(&mut r)? {
        match field {
            1 => n.inputs.push(v.as_string(at, "NodeProto.input")?),
            2 => n.outputs.push(v.as_string(at, "NodeProto.output")?),
            3 => n.name = v.as_string(at, "NodeProto.name")?,
            4 => n.op_type = v.as_string(at, "NodeProto.op_type")?,
            7 => n.domain = v.as_string(at, "NodeProto.domain")?,
            5 => {
                let (b, off) = v.as_bytes(at, "NodeProto.attribute")?;
                n.attributes.push(attribute(&r.nested(b, off)?)?);
            }
            _ => {}
        }
    }
    Ok(n)
}

fn attribute<'a>(r0: &Reader<'a>) -> Result<AttributeProto<'a>> {
    let mut r = r0.clone();
    let mut a = AttributeProto::default();
    while let Some((field, v, at)) = next(&mut r)? {
        match field {
            1 => a.name = v.as_string(at, "AttributeProto.name")?,
            20 => a.kind = v.as_i64(at, "AttributeProto.type")?,
            2 => a.f = v.as_f32(at, "AttributeProto.f")?,
            3 => a.i = v.as_i64(at, "AttributeProto.i")?,
            4 => a.s = v.as_bytes(at, "AttributeProto.s")?.0.to_vec(),
            5 => {
                let (b, off) = v.as_bytes(at, "AttributeProto.t")?;
                a.t = Some(tensor(&r.nested(b, off)?)?);
            }
            7 => v.push_f32s(at, "AttributeProto.floats", &mut a.floats)?,
            8 => v.push_i64s(at, "AttributeProto.ints", &mut a.ints)?,
            _ => {}
        }
    }
    Ok(a)
}

fn tensor<'a>(r0: &Reader<'a>) -> Result<TensorProto<'a>> {
    let mut r = r0.clone();
    let mut t = TensorProto {
        offset: r.offset(),
        ..TensorProto::default()
    };
    while let Some((field, v, at)) = next(&mut r)? {
        match field {
            1 => v.push_i64s(at, "TensorProto.dims", &mut t.dims)?,
            2 => t.data_type = v.as_i64(at, "TensorProto.data_type")? as i32,
            4 => v.push_f32s(at, "TensorProto.float_data", &mut t.float_data)?,
            7 => v.push_i64s(at, "TensorProto.int64_data", &mut t.int64_data)?,
            8 => t.name = v.as_string(at, "TensorProto.name")?,
            9 => t.raw_data = Some(v.as_bytes(at, "TensorProto.raw_data")?),
            13 => t.external = true,
            14 => t.external |= v.as_i64(at, "TensorProto.data_location")? == 1,
            _ => {}
        }
    }
    Ok(t)
}

fn value_info(r0: &Reader<'_>) -> Result<ValueInfo> {
    let mut r = r0.clone();
    let mut vi = ValueInfo::default();
    while let Some((field, v, at)) = next(&mut r)? {
        match field {
            1 => vi.name = v.as_string(at, "ValueInfoProto.name")?,
            2 => {
                // TypeProto { tensor_type = 1: Tensor { elem_type = 1, shape = 2 } }
                let (b, off) = v.as_bytes(at, "ValueInfoProto.type")?;
                let mut tp = r.nested(b, off)?;
                while let Some((f, v, at)) = next(&mut tp)? {
                    if f != 1 {
                        continue;
                    }
                    let (b, off) = v.as_bytes(at, "TypeProto.tensor_type")?;
                    let mut tt = tp.nested(b, off)?;
                    while let Some((f, v, at)) = next(&mut tt)? {
                        match f {
                            1 => vi.elem_type = v.as_i64(at, "TypeProto.Tensor.elem_type")? as i32,
                            2 => {
                                let (b, off) = v.as_bytes(at, "TypeProto.Tensor.shape")?;
                                vi.shape = Some(shape(&tt.nested(b, off)?)?);
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(vi)
}

fn shape(r0: &Reader<'_>) -> Result<Vec<Option<i64>>> {
    let mut r = r0.clone();
    let mut dims = Vec::new();
    while let Some((field, v, at)) = next(&mut r)? {
        if field != 1 {
            continue;
        }
        // Dimension { dim_value = 1 (int64), dim_param = 2 (string) }
        let (b, off) = v.as_bytes(at, "TensorShapeProto.dim")?;
        let mut d = r.nested(b, off)?;
        let mut value = None;
        while let Some((f, v, at)) = next(&mut d)? {
            match f {
                1 => value = Some(v.as_i64(at, "Dimension.dim_value")?),
                2 => value = None,
                _ => {}
            }
        }
        dims.push(value);
    }
    Ok(dims)
}
