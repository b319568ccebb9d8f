//! Findings from fuzzing and review, each kept as a named test with its input inline, and the rule that
//! a header claiming a huge tensor is refused before anything of that size is allocated, for every
//! reader. A counting global allocator records the largest single allocation, so "before allocating"
//! is checked, not assumed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use fixq::Error;

mod common;

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Serialises the tests that read [`LARGEST`], so one test's allocations do not show in another's.
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards to the system allocator unchanged; only records the size asked for.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as for `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// 2^40 elements.
const HUGE: u64 = 1 << 40;

/// Runs `f` and returns its result with the largest single allocation made meanwhile.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    LARGEST.store(0, Ordering::Relaxed);
    let r = f();
    (r, LARGEST.load(Ordering::Relaxed))
}

/// Asserts that `r` is an error and that nothing over 1 MiB was allocated for it.
fn refused<T: std::fmt::Debug>(what: &str, (r, largest): (fixq::Result<T>, usize)) -> Error {
    assert!(largest < 1 << 20, "{what}: allocated {largest} bytes");
    match r {
        Err(e) => e,
        Ok(v) => panic!("{what}: accepted {v:?}"),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

/// An ONNX model whose one float initializer claims `dims` and holds `raw` bytes.
fn onnx_with_initializer(dims: &[u64], raw: &[u8]) -> Vec<u8> {
    common::model("Relu", &[], &[common::tensor("w", 1, dims, raw)])
}

#[test]
fn every_reader_refuses_a_header_claiming_2_pow_40_elements_before_allocating() {
    let e = refused(
        "idx",
        largest_allocation(|| {
            let mut b = vec![0, 0, 8, 2];
            b.extend(1u32.to_be_bytes());
            b.extend(u32::MAX.to_be_bytes()); // 2^32 - 1 per row, and 2^40 in rank 3 below
            b.extend([0; 16]);
            fixq::io::idx::parse(&b)
        }),
    );
    assert!(e.to_string().contains("malformed idx data"), "{e}");
    let e = refused(
        "idx rank 3",
        largest_allocation(|| {
            let mut b = vec![0, 0, 8, 3];
            for d in [1u32 << 20, 1 << 10, 1 << 10] {
                b.extend(d.to_be_bytes());
            }
            b.extend([0; 16]);
            fixq::io::idx::parse(&b)
        }),
    );
    match e {
        Error::Malformed {
            format,
            offset,
            reason,
        } => {
            assert_eq!((format, offset), ("idx", 16));
            assert_eq!(
                reason,
                "dimensions [1048576, 1024, 1024] need 1099511627776 bytes but 16 follow the header"
            );
        }
        other => panic!("{other:?}"),
    }
    let e = refused(
        "npy",
        largest_allocation(|| {
            fixq::io::npy::parse(&npy(
                &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({HUGE},), }}"),
                &[0; 8],
            ))
        }),
    );
    assert!(e.to_string().contains("malformed npy data"), "{e}");
    let e = refused(
        "safetensors",
        largest_allocation(|| {
            fixq::io::safetensors::parse(&safetensors(
                &format!(r#"{{"w":{{"dtype":"F32","shape":[{HUGE}],"data_offsets":[0,8]}}}}"#),
                &[0; 8],
            ))
        }),
    );
    assert!(e.to_string().contains("does not match 8 data bytes"), "{e}");
    let e = refused(
        "pack",
        largest_allocation(|| {
            let mut b = b"FIXQPACK".to_vec();
            b.extend(1u32.to_le_bytes()); // version
            b.extend(1u32.to_le_bytes()); // one tensor
            b.extend(1u16.to_le_bytes());
            b.push(b'w');
            b.push(1); // rank
            b.extend(HUGE.to_le_bytes());
            b.extend(1u32.to_le_bytes()); // one format
            b.extend([8, 0, 0, 1]); // 8 bits, frac 0, signed
            b.extend((HUGE * 8).to_le_bytes()); // payload bits
            b.extend([0; 64]);
            fixq::pack::from_bytes(&b)
        }),
    );
    assert!(e.to_string().contains("malformed"), "{e}");
    let e = refused(
        "onnx",
        largest_allocation(|| {
            fixq::Graph::from_onnx_bytes(&onnx_with_initializer(&[HUGE], &[0; 16]))
        }),
    );
    assert!(e.to_string().contains("1099511627776"), "{e}");
    // 10 KiB of gzip: an IDX header claiming 2^40 bytes, then 8 MiB of zeros.
    let mut plain = vec![0, 0, 8, 3];
    for d in [1u32 << 20, 1 << 10, 1 << 10] {
        plain.extend(d.to_be_bytes());
    }
    plain.resize(plain.len() + (8 << 20), 0);
    let gz = gzip(&plain);
    drop(plain);
    assert!(gz.len() < 64 << 10);
    let e = refused("gzip idx", largest_allocation(|| fixq::io::idx::parse(&gz)));
    assert_eq!(
        e.to_string(),
        "malformed idx data at byte 4: the header claims more than 1073741824 bytes of data"
    );
}

/// Review finding while writing the plan fuzz target: `QFormat`'s derived `Deserialize` skipped
/// `QFormat::new`'s checks, so `{"bits":0,..}` made a format whose `min_code` shifts by `0 - 1`
/// (an overflow panic in debug builds, nonsense in release) once the plan reached the network.
#[test]
fn plan_json_with_a_zero_bit_format_is_refused() {
    let text = plan_json(
        r#"{"bits":0,"frac_bits":0,"signed":true,"grid":"MidTread"}"#,
        "[0]",
    );
    let e = fixq::plan::QuantPlan::from_json(&text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "malformed plan json data at byte 150: invalid bits: 0 is outside 1..=32 at line 1 column 151"
    );
    let text = plan_json(
        r#"{"bits":4,"frac_bits":500,"signed":true,"grid":"MidTread"}"#,
        "[4]",
    );
    assert!(fixq::plan::QuantPlan::from_json(&text).is_err());
    let text = plan_json(
        r#"{"bits":4,"frac_bits":1,"signed":false,"grid":"MidRise"}"#,
        "[4]",
    );
    assert!(fixq::plan::QuantPlan::from_json(&text).is_err());
}

/// Review finding: a weight plan with no formats (`"formats":[]`) parsed, then
/// `WeightPlan::format_of_channel` and the fixed-point network indexed `formats[0]` and panicked.
#[test]
fn plan_json_with_no_formats_or_mismatched_widths_is_refused() {
    let e = fixq::plan::QuantPlan::from_json(&plan_json_formats("[]", "[]")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid plan: weight plan of node 'conv1': needs one or more formats, one per width (found 0 formats, 0 widths)"
    );
    let f4 = r#"{"bits":4,"frac_bits":3,"signed":true,"grid":"MidTread"}"#;
    let e = fixq::plan::QuantPlan::from_json(&plan_json(f4, "[5]")).unwrap_err();
    assert!(e.to_string().contains("width 5 with format"), "{e}");
    let e = fixq::plan::QuantPlan::from_json(&plan_json_formats(&format!("[{f4},{f4}]"), "[4,4]"))
        .unwrap_err();
    assert!(
        e.to_string().contains("2 formats for 16 output channels"),
        "{e}"
    );
}

/// Review finding: `model_bits` multiplied and summed in plain `u64`, so a plan file claiming
/// `params = u64::MAX` overflowed (a panic in debug builds). It now saturates.
#[test]
fn plan_model_bits_saturate_instead_of_overflowing() {
    let f4 = r#"{"bits":4,"frac_bits":3,"signed":true,"grid":"MidTread"}"#;
    let text = plan_json(f4, "[4]").replace("\"params\":144", &format!("\"params\":{}", u64::MAX));
    let p = fixq::plan::QuantPlan::from_json(&text).unwrap();
    assert_eq!(p.model_bits(), u64::MAX);
    assert_eq!(p.weights()[0].format_of_channel(99).bits(), 4);
}

fn plan_json(format: &str, bits: &str) -> String {
    plan_json_formats(&format!("[{format}]"), bits)
}

fn plan_json_formats(formats: &str, bits: &str) -> String {
    format!(
        r#"{{"weights":[{{"node":"conv1","weight":"w","params":144,"out_channels":16,"bits":{bits},"formats":{formats},"predicted_sqnr_db":20.0,"gain_db":0.0}}],"activations":[],"predicted_output_sqnr_db":20.0}}"#
    )
}

/// Found by tests/no_panic.rs (`formats_and_rules`): `QFormat::new(1, i32::MIN, ..)` checked the range
/// with `frac_bits.abs()`, which overflows for `i32::MIN` (a panic in debug builds, and in release a
/// negative value that passed the check).
#[test]
fn qformat_with_i32_min_fractional_bits_is_refused() {
    let e = fixq::QFormat::unsigned(1, i32::MIN).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid frac_bits: -2147483648 is outside -100..=100"
    );
    assert!(fixq::QFormat::signed(8, i32::MAX).is_err());
}

/// An ONNX model: input `x` of `dims`, one node `n0` of `op_type` with integer-list attributes
/// `ints`, output `y` of `out_dims`.
fn onnx_one_node(
    op_type: &str,
    dims: &[u64],
    out_dims: &[u64],
    ints: &[(&str, &[i64])],
) -> Vec<u8> {
    use common::{field_bytes, field_varint, value_info};
    let mut node = Vec::new();
    field_bytes(1, b"x", &mut node);
    field_bytes(2, b"y", &mut node);
    field_bytes(3, b"n0", &mut node);
    field_bytes(4, op_type.as_bytes(), &mut node);
    for (name, values) in ints {
        let mut a = Vec::new();
        field_bytes(1, name.as_bytes(), &mut a);
        field_varint(20, 7, &mut a); // INTS
        for &v in *values {
            field_varint(8, v as u64, &mut a); // two's complement, as protobuf encodes int64
        }
        field_bytes(5, &a, &mut node);
    }
    let mut graph = Vec::new();
    field_bytes(1, &node, &mut graph);
    field_bytes(11, &value_info("x", dims), &mut graph);
    field_bytes(12, &value_info("y", out_dims), &mut graph);
    let mut opset = Vec::new();
    field_varint(2, 13, &mut opset);
    let mut m = Vec::new();
    field_varint(1, 8, &mut m);
    field_bytes(7, &graph, &mut m);
    field_bytes(8, &opset, &mut m);
    m
}

/// Outside audit, issue 15 item 1: shape inference accepted a begin pad past the data together with
/// an end crop (pads [10, -10] on a length-5 axis gives length 5), and the float executor then
/// panicked copying a range that starts past the axis. Import now refuses it, naming node, axis,
/// pads and axis length.
#[test]
fn pad_whose_end_crop_reaches_into_its_begin_padding_is_refused_at_import() {
    let bytes = onnx_one_node("Pad", &[1, 5], &[1, 5], &[("pads", &[0, 10, 0, -10])]);
    match fixq::Graph::from_onnx_bytes(&bytes) {
        Err(Error::ShapeMismatch {
            what,
            expected,
            found,
        }) => {
            assert_eq!(
                what,
                "node 'n0' (Pad): pads [0, 10, 0, -10] on axis 1 (length 5)"
            );
            assert_eq!(
                expected,
                "crops (negative pads) that remove at most the axis's 5 elements in total"
            );
            assert_eq!(found, "begin 10, end -10: 10 elements cropped");
        }
        other => panic!("{other:?}"),
    }
    // Crops that stay within the data import, and the executor runs them: a begin pad of 2 with
    // an end crop of 3, and an end crop of the whole axis.
    let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 5]), vec![1.0f32, 2., 3., 4., 5.])
        .unwrap();
    for (pads, out) in [
        ([0, 2, 0, -3], vec![0.0f32, 0., 1., 2.]),
        ([0, 3, 0, -5], vec![0.0, 0., 0.]),
    ] {
        let n = out.len() as u64;
        let g = fixq::Graph::from_onnx_bytes(&onnx_one_node(
            "Pad",
            &[1, 5],
            &[1, n],
            &[("pads", &pads)],
        ))
        .unwrap();
        let y = fixq::exec::FloatExecutor::new(&g).run(x.view()).unwrap();
        assert_eq!(y.as_slice().unwrap(), &out[..], "pads {pads:?}");
    }
}

/// Outside audit, issue 15 item 1: pads near `i64::MAX` were added to the axis length unchecked.
#[test]
fn pad_near_i64_max_is_refused_at_import() {
    let bytes = onnx_one_node("Pad", &[1, 4], &[1, 4], &[("pads", &[0, 0, 0, i64::MAX])]);
    match fixq::Graph::from_onnx_bytes(&bytes) {
        Err(Error::Unsupported(m)) => assert_eq!(
            m,
            "node 'n0' (Pad): pads [0, 0, 0, 9223372036854775807] on axis 1 (length 4): begin 0, \
             end 9223372036854775807 give 9223372036854775811 elements, more than 2147483648"
        ),
        other => panic!("{other:?}"),
    }
    let bytes = onnx_one_node(
        "Pad",
        &[1, 4],
        &[1, 4],
        &[("pads", &[0, i64::MIN, 0, i64::MIN])],
    );
    match fixq::Graph::from_onnx_bytes(&bytes) {
        Err(Error::ShapeMismatch { what, found, .. }) => {
            assert_eq!(
                what,
                "node 'n0' (Pad): pads [0, -9223372036854775808, 0, -9223372036854775808] on axis \
                 1 (length 4)"
            );
            assert_eq!(
                found,
                "begin -9223372036854775808, end -9223372036854775808: 18446744073709551616 \
                 elements cropped"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Outside audit, issue 15 item 2: a model declaring input [1, 2^32, 2^32] imported without
/// complaint. Declared dimensions are now bounded by `graph::MAX_INPUT_DIM` (2^24) each and
/// `graph::MAX_SAMPLE_ELEMENTS` (2^28) per sample.
#[test]
fn declared_input_dimensions_beyond_the_limits_are_refused_at_import() {
    let relu = |dims: &[u64]| fixq::Graph::from_onnx_bytes(&onnx_one_node("Relu", dims, dims, &[]));
    match relu(&[1, 1 << 32, 1 << 32]) {
        Err(Error::Unsupported(m)) => assert_eq!(
            m,
            "input 'x' of shape [1, 4294967296, 4294967296]: dimension 1 is 4294967296, more than \
             the 16777216 fixq accepts"
        ),
        other => panic!("{other:?}"),
    }
    match relu(&[1, 1 << 15, 1 << 15]) {
        Err(Error::Unsupported(m)) => assert_eq!(
            m,
            "input 'x' of shape [1, 32768, 32768]: one sample (every dimension but the first) has \
             more than the 268435456 elements fixq accepts"
        ),
        other => panic!("{other:?}"),
    }
    // At the limits: 2^24 per dimension, 2^28 per sample.
    let g = relu(&[1, 1 << 24, 1 << 4]).unwrap();
    assert_eq!(g.input().shape, vec![Some(1), Some(1 << 24), Some(1 << 4)]);
    // A batch given at run time is bounded too.
    let g = fixq::Graph::new(
        fixq::graph::TensorInfo {
            name: "x".into(),
            shape: vec![None, Some(1 << 8)],
        },
        "y",
        vec![fixq::graph::Node {
            name: "r".into(),
            op: fixq::graph::Op::Relu,
            inputs: vec!["x".into()],
            output: "y".into(),
        }],
        vec![],
    )
    .unwrap();
    assert_eq!(
        g.infer_shapes(&[1 << 23, 1 << 8]).unwrap(),
        vec![vec![1 << 23, 1 << 8]]
    );
    match g.infer_shapes(&[1 << 24, 1 << 8]) {
        Err(Error::Unsupported(m)) => assert_eq!(
            m,
            "input 'x' of shape [16777216, 256] has more than 2147483648 elements"
        ),
        other => panic!("{other:?}"),
    }
    match g.infer_shapes(&[1 << 25, 1 << 8]) {
        Err(Error::Unsupported(m)) => assert!(m.contains("dimension 0 is 33554432"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Outside audit, issue 15 item 2: Flatten multiplied dimensions unchecked (an overflow panic with
/// overflow checks, a wrapped shape without). Three axes of 2^31 padded onto a zero-size batch hold
/// no elements, so only Flatten's product sees the 2^93.
#[test]
fn flatten_of_dimensions_whose_product_overflows_is_refused() {
    use fixq::graph::{Node, Op, TensorInfo};
    let m = (1i64 << 31) - 1;
    let nodes = vec![
        Node {
            name: "p".into(),
            op: Op::Pad {
                pads: vec![0, 0, 0, 0, 0, m, m, m],
                value: 0.0,
            },
            inputs: vec!["x".into()],
            output: "padded".into(),
        },
        Node {
            name: "f".into(),
            op: Op::Flatten { axis: 1 },
            inputs: vec!["padded".into()],
            output: "y".into(),
        },
    ];
    let input = TensorInfo {
        name: "x".into(),
        shape: vec![Some(0), Some(1), Some(1), Some(1)],
    };
    match fixq::Graph::new(input, "y", nodes, vec![]) {
        Err(Error::Unsupported(m)) => assert_eq!(
            m,
            "node 'f' (Flatten): the dimensions from the axis on [2147483648, 2147483648, \
             2147483648] hold more than 2147483648 elements"
        ),
        other => panic!("{other:?}"),
    }
}

/// Outside audit, issue 15 item 2: Reshape's literal dimensions and Concat's sum were unbounded; a
/// zero-size tensor reshaped to [0, i64::MAX] was accepted, and Concat then summed past `usize`.
#[test]
fn reshape_and_concat_sizes_beyond_the_tensor_limit_are_refused() {
    use fixq::graph::{Node, Op, TensorInfo};
    let input = || TensorInfo {
        name: "x".into(),
        shape: vec![Some(0), Some(4)],
    };
    let reshape = Node {
        name: "r".into(),
        op: Op::Reshape {
            shape: vec![0, i64::MAX],
            allow_zero: true,
        },
        inputs: vec!["x".into()],
        output: "y".into(),
    };
    match fixq::Graph::new(input(), "y", vec![reshape], vec![]) {
        Err(Error::Unsupported(m)) => assert_eq!(
            m,
            "node 'r' (Reshape): output dimension 1 of [0, 9223372036854775807] is \
             9223372036854775807, more than 2147483648"
        ),
        other => panic!("{other:?}"),
    }
    let pad = Node {
        name: "p".into(),
        op: Op::Pad {
            pads: vec![0, (1 << 30) - 4, 0, 1 << 30],
            value: 0.0,
        },
        inputs: vec!["x".into()],
        output: "wide".into(),
    };
    let concat = Node {
        name: "c".into(),
        op: Op::Concat { axis: 1 },
        inputs: vec!["wide".into(), "wide".into(), "x".into()],
        output: "y".into(),
    };
    match fixq::Graph::new(input(), "y", vec![pad, concat], vec![]) {
        Err(Error::Unsupported(m)) => assert_eq!(
            m,
            "node 'c' (Concat): the inputs' sizes along axis 1 add up to more than 2147483648"
        ),
        other => panic!("{other:?}"),
    }
}

/// Outside audit, issue 15 item 4: `QTensor::from_codes_per_channel` accepted an empty axis with no
/// formats, and `format()` / `format_of_channel` then panicked indexing `formats[0]` (evaluated
/// eagerly even for a channel that exists).
#[test]
fn per_channel_qtensor_over_an_empty_axis_is_refused() {
    use fixq::{QFormat, QTensor};
    use ndarray::{ArrayD, IxDyn};
    let empty = ArrayD::<i8>::zeros(IxDyn(&[0, 3]));
    match QTensor::from_codes_per_channel(empty.clone(), 0, vec![]) {
        Err(Error::InvalidArgument { name, reason }) => {
            assert_eq!(name, "axis");
            assert_eq!(
                reason,
                "axis 0 of shape [0, 3] has length 0: per-channel formats need at least one \
                 channel (use QTensor::from_codes for an empty tensor)"
            );
        }
        other => panic!("{other:?}"),
    }
    // A format count that differs from the axis length, either way.
    let f = QFormat::signed(4, 2).unwrap();
    match QTensor::from_codes_per_channel(empty.clone(), 0, vec![f]) {
        Err(Error::ShapeMismatch {
            what,
            expected,
            found,
        }) => {
            assert_eq!(what, "per-channel formats along axis 0");
            assert_eq!(expected, "0 formats");
            assert_eq!(found, "1 formats");
        }
        other => panic!("{other:?}"),
    }
    let codes = ArrayD::<i8>::zeros(IxDyn(&[2, 3]));
    match QTensor::from_codes_per_channel(codes.clone(), 1, vec![]) {
        Err(Error::ShapeMismatch {
            expected, found, ..
        }) => assert_eq!(
            (expected.as_str(), found.as_str()),
            ("3 formats", "0 formats")
        ),
        other => panic!("{other:?}"),
    }
    // The empty tensor itself is fine per tensor, and every accessor answers.
    let t = QTensor::from_codes(empty, f).unwrap();
    assert_eq!(
        (t.format(), t.format_of_channel(0), t.format_of_channel(7)),
        (f, f, f)
    );
    let g = QFormat::signed(8, 0).unwrap();
    let t = QTensor::from_codes_per_channel(codes, 0, vec![f, g]).unwrap();
    assert_eq!(
        (t.format(), t.format_of_channel(1), t.format_of_channel(2)),
        (f, g, f)
    );
}

/// Outside audit, issue 15 item 3: `pack::to_bytes` never checked that the channel axis is 0, so a
/// tensor quantized per channel along axis 1 was written with row `c`'s codes at channel `c`'s
/// format: for a square tensor, wrong codes that read back without complaint.
#[test]
fn pack_refuses_per_channel_formats_along_another_axis() {
    use fixq::pack::{self, WeightCodes};
    use fixq::{QFormat, QTensor};
    use ndarray::{ArrayD, IxDyn};
    let (s2, s8) = (
        QFormat::signed(2, 0).unwrap(),
        QFormat::signed(8, 0).unwrap(),
    );
    // Column 0 at 2 bits, column 1 at 8 bits.
    let codes = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![-2i8, 100, 1, -100]).unwrap();
    let w = WeightCodes {
        node: "fc".into(),
        codes: QTensor::from_codes_per_channel(codes, 1, vec![s2, s8]).unwrap(),
    };
    match pack::to_bytes(std::slice::from_ref(&w)) {
        Err(Error::InvalidArgument { name, reason }) => {
            assert_eq!(name, "weights");
            assert_eq!(
                reason,
                "tensor 'fc': per-channel formats along axis 1 of shape [2, 2]; packed weights \
                 hold them along axis 0 (the output channel)"
            );
        }
        other => panic!("{other:?}"),
    }
    // Its size is still counted per channel along its own axis: 2 elements x (2 + 8) bits.
    assert_eq!(pack::payload_bits(&[w]), 20);
}

/// Outside audit, issue 15 item 3: an empty tensor was written, and then refused on read. It is now
/// refused at write, naming the tensor.
#[test]
fn pack_refuses_an_empty_tensor_at_write() {
    use fixq::pack::{self, WeightCodes};
    use fixq::{QFormat, QTensor};
    use ndarray::{ArrayD, IxDyn};
    let w = WeightCodes {
        node: "conv0".into(),
        codes: QTensor::from_codes(
            ArrayD::<i8>::zeros(IxDyn(&[0, 3, 3, 3])),
            QFormat::signed(4, 2).unwrap(),
        )
        .unwrap(),
    };
    match pack::to_bytes(&[w]) {
        Err(Error::InvalidArgument { name, reason }) => {
            assert_eq!(name, "weights");
            assert_eq!(
                reason,
                "tensor 'conv0': shape [0, 3, 3, 3] has no elements; packed weights hold \
                 non-empty tensors"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Outside audit, issue 15 item 6: the IDX and npy readers showed Rust debug text to users
/// ("need Some(28800) bytes", "need None bytes"). They now print plain numbers.
#[test]
fn reader_size_messages_are_plain_numbers() {
    let mut b = vec![0, 0, 8, 3];
    for _ in 0..3 {
        b.extend(u32::MAX.to_be_bytes());
    }
    match fixq::io::idx::parse(&b) {
        Err(Error::Malformed {
            format,
            offset,
            reason,
        }) => {
            assert_eq!((format, offset), ("idx", 16));
            assert_eq!(
                reason,
                "dimensions [4294967295, 4294967295, 4294967295] need more than \
                 9223372036854775807 bytes but 0 follow the header"
            );
        }
        other => panic!("{other:?}"),
    }
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 4), }}",
        1u64 << 62
    );
    match fixq::io::npy::parse(&npy(&header, &[0; 8])) {
        Err(Error::Malformed { format, reason, .. }) => {
            assert_eq!(format, "npy");
            assert_eq!(
                reason,
                "shape [4611686018427387904, 4] of <f4 needs more than 9223372036854775807 bytes \
                 but 8 follow the header"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fixed_network_refuses_an_input_of_another_height_and_width() {
    let graph = fixq::Graph::from_onnx_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/digits_cnn.onnx"
    ))
    .unwrap();
    let x = ndarray::Array4::<f32>::from_shape_fn((4, 1, 8, 8), |(n, _, h, w)| {
        ((n + h * 8 + w) % 16) as f32 / 16.0
    })
    .into_dyn();
    let exec = fixq::exec::FloatExecutor::new(&graph);
    let mut cal = fixq::calib::Calibration::new();
    cal.observe(&exec, x.view()).unwrap();
    let plan = fixq::plan::plan(&graph, &cal, &fixq::plan::PlanConfig::equal(8)).unwrap();
    let net = fixq::exec::FixedNetwork::new(&graph, &plan).unwrap();
    // Another batch size is fine.
    assert_eq!(
        net.run(x.slice(ndarray::s![..1, .., .., ..]).into_dyn().view())
            .unwrap()
            .shape()[0],
        1
    );
    let wrong = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 1, 9, 8]));
    match net.run(wrong.view()).unwrap_err() {
        fixq::Error::ShapeMismatch {
            what,
            expected,
            found,
        } => {
            assert!(
                what.contains(&format!("input '{}'", graph.input().name)),
                "{what}"
            );
            assert!(expected.ends_with("1, 8, 8]"), "{expected}");
            assert_eq!(found, "[1, 1, 9, 8]");
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

// ---- Issue 15 item 5: the kernel API's size arithmetic (padding, dilation, stride, window) ----

mod kernel_sizes {
    use super::common::{invalid, shape_mismatch as mismatch};
    use fixq::kernels::{
        self, Conv2d, Conv2dParams, Dense, KernelChoice, MAX_ELEMENTS, MAX_EXTENT, OutputStage,
        Pool2dParams,
    };
    use fixq::{Error, QFormat, QTensor};
    use ndarray::{Array2, Array4};

    fn u8f() -> QFormat {
        QFormat::unsigned(8, 0).unwrap()
    }

    fn weights(k: usize) -> QTensor<i8, ndarray::Ix4> {
        QTensor::from_codes(
            Array4::<i8>::ones((2, 1, k, k)),
            QFormat::signed(8, 0).unwrap(),
        )
        .unwrap()
    }

    fn conv(k: usize, params: Conv2dParams) -> fixq::Result<Conv2d<u8, u8>> {
        Conv2d::new(
            &weights(k),
            None,
            u8f(),
            OutputStage::new(u8f()),
            params,
            KernelChoice::Auto,
        )
    }

    fn image(h: usize, w: usize) -> QTensor<u8, ndarray::Ix4> {
        QTensor::from_codes(Array4::<u8>::from_elem((1, 1, h, w), 3), u8f()).unwrap()
    }

    fn unsupported(e: Error) -> String {
        match e {
            Error::Unsupported(m) => m,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    /// Padding past `MAX_EXTENT` on a side is refused when the layer is built; `MAX_EXTENT` itself is
    /// accepted, and a call whose padded image would pass `MAX_ELEMENTS` is refused before anything is
    /// allocated (before issue 15, `h + pad` was plain `usize` arithmetic: an overflow panic in debug
    /// builds, a wrapped size in release).
    #[test]
    fn conv_with_huge_padding_is_refused() {
        let p = Conv2dParams {
            padding: [usize::MAX, 0, 0, 0],
            ..Conv2dParams::new()
        };
        let e = conv(3, p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid padding: expected at most {MAX_EXTENT} pixels on each side (top, left, bottom, right), found [18446744073709551615, 0, 0, 0]"
            )
        );
        assert_eq!(invalid(e).0, "padding");
        let c = conv(3, Conv2dParams::new().with_padding(MAX_EXTENT)).unwrap();
        let m = unsupported(c.forward(&image(8, 8)).unwrap_err());
        assert_eq!(
            m,
            format!(
                "convolution of input [1, 1, 8, 8] padded by [16777216, 16777216, 16777216, \
                 16777216]: a padded image would hold more than {MAX_ELEMENTS} elements"
            )
        );
    }

    /// A dilation whose window, (k - 1)·dilation + 1, overflows `usize` or passes `MAX_EXTENT` is
    /// refused when the layer is built.
    #[test]
    fn conv_with_overflowing_dilation_is_refused() {
        for dilation in [[usize::MAX, 1], [1, MAX_EXTENT / 2 + 1]] {
            let e = conv(
                3,
                Conv2dParams {
                    dilation,
                    ..Conv2dParams::new()
                },
            )
            .unwrap_err();
            let (name, reason) = invalid(e);
            assert_eq!(name, "dilation");
            assert_eq!(
                reason,
                format!(
                    "expected a dilated kernel, (k - 1)·dilation + 1, of at most {MAX_EXTENT} \
                     pixels per axis, found dilation {dilation:?} on a 3x3 kernel"
                )
            );
        }
        // On a 2x2 kernel, the largest dilation that fits gives a window of exactly MAX_EXTENT
        // pixels; one more is refused.
        let dil = |d: usize| Conv2dParams {
            dilation: [1, d],
            ..Conv2dParams::new()
        };
        conv(2, dil(MAX_EXTENT - 1)).unwrap();
        assert_eq!(invalid(conv(2, dil(MAX_EXTENT)).unwrap_err()).0, "dilation");
    }

    /// Zero strides (and dilations, groups, windows) are refused, naming the argument and the value.
    #[test]
    fn zero_stride_is_refused_by_conv_and_pools() {
        let e = conv(
            3,
            Conv2dParams {
                stride: [0, 1],
                ..Conv2dParams::new()
            },
        )
        .unwrap_err();
        assert_eq!(
            invalid(e),
            (
                "stride",
                "expected at least 1 in each direction, found [0, 1]".into()
            )
        );
        let e = conv(3, Conv2dParams::new().with_groups(0)).unwrap_err();
        assert_eq!(
            invalid(e),
            ("groups", "expected at least 1, found 0".into())
        );
        let x = image(4, 4);
        let e = kernels::max_pool2d(&x, Pool2dParams::new(2, 0)).unwrap_err();
        assert_eq!(
            invalid(e),
            (
                "pool stride",
                "expected at least 1 in each direction, found [0, 0]".into()
            )
        );
        let e = kernels::avg_pool2d::<u8, u8>(
            &x,
            Pool2dParams::new(0, 1),
            true,
            OutputStage::new(u8f()),
        )
        .unwrap_err();
        assert_eq!(
            invalid(e),
            (
                "pool window",
                "expected at least 1 in each direction, found [0, 0]".into()
            )
        );
    }

    /// A kernel or window larger than the padded input is a shape mismatch naming both sizes and the
    /// padding.
    #[test]
    fn kernel_larger_than_the_padded_input_is_a_shape_mismatch() {
        let c = conv(5, Conv2dParams::new().with_padding(1)).unwrap();
        assert_eq!(
            mismatch(c.forward(&image(2, 2)).unwrap_err()),
            (
                "convolution input size".into(),
                "a padded input of at least 5x5 (the dilated kernel)".into(),
                "4x4 (input 2x2 padded by [1, 1, 1, 1])".into()
            )
        );
        let e =
            kernels::max_pool2d(&image(1, 2), Pool2dParams::new(3, 1).with_padding(0)).unwrap_err();
        assert_eq!(
            mismatch(e),
            (
                "pool input size".into(),
                "a padded input of at least 3x3 (the window)".into(),
                "1x2 (input 1x2 padded by [0, 0, 0, 0])".into()
            )
        );
    }

    /// A pool window and padding near `usize::MAX` (padding smaller than the window, so allowed)
    /// overflowed `h + pad` (a panic in debug builds); now the padded plane is refused as too large.
    #[test]
    fn pool_window_and_padding_near_usize_max_are_refused() {
        let p = Pool2dParams {
            kernel: [usize::MAX; 2],
            stride: [1, 1],
            padding: [usize::MAX - 1; 4],
        };
        let m = unsupported(kernels::max_pool2d(&image(1, 1), p).unwrap_err());
        assert!(
            m.ends_with(&format!(
                "a padded plane would hold more than {MAX_ELEMENTS} elements"
            )),
            "{m}"
        );
        assert!(
            m.starts_with("pooling of input [1, 1, 1, 1] padded by [18446744073709551614"),
            "{m}"
        );
    }

    /// Zero-size weights are refused by both constructors, with the shape.
    #[test]
    fn zero_size_weights_are_refused_by_conv_and_dense() {
        let w = QTensor::from_codes(
            Array4::<i8>::ones((2, 0, 3, 3)),
            QFormat::signed(8, 0).unwrap(),
        )
        .unwrap();
        let e = Conv2d::<u8, u8>::new(
            &w,
            None,
            u8f(),
            OutputStage::new(u8f()),
            Conv2dParams::new(),
            KernelChoice::Auto,
        )
        .unwrap_err();
        assert_eq!(
            invalid(e),
            (
                "weights shape",
                "expected no zero size, found [2, 0, 3, 3]".into()
            )
        );
        let d = QTensor::from_codes(Array2::<i8>::ones((0, 3)), QFormat::signed(8, 0).unwrap())
            .unwrap();
        let e = Dense::<u8, u8>::new(&d, None, u8f(), OutputStage::new(u8f()), KernelChoice::Auto)
            .unwrap_err();
        assert_eq!(
            invalid(e),
            (
                "weights shape",
                "expected no zero size, found [0, 3]".into()
            )
        );
    }

    /// Found while writing the proptest (`kernels_at_extreme_params`, by probing an image of 0 rows):
    /// the packed kernels split the input by image with `chunks_exact(C·H·W)`, which panics for
    /// H = 0; the reference computed bias-only windows of padding. Both now refuse an empty image
    /// plane, as do the pools (whose windows would hold no pixel).
    #[test]
    fn conv_and_pools_refuse_an_image_of_zero_rows() {
        for choice in [KernelChoice::Reference, KernelChoice::Auto] {
            let c = Conv2d::<u8, u8>::new(
                &weights(1),
                None,
                u8f(),
                OutputStage::new(u8f()),
                Conv2dParams::new().with_padding(1),
                choice,
            )
            .unwrap();
            let x = QTensor::from_codes(Array4::<u8>::zeros((1, 1, 0, 3)), u8f()).unwrap();
            assert_eq!(
                mismatch(c.forward(&x).unwrap_err()),
                (
                    "convolution input size".into(),
                    "an image of at least 1x1 pixels".into(),
                    "0x3".into()
                )
            );
            let e = kernels::max_pool2d(&x, Pool2dParams::new(2, 1).with_padding(1)).unwrap_err();
            assert_eq!(mismatch(e).2, "0x3");
        }
        // An empty batch is not an empty image: it gives an empty output.
        let c = conv(1, Conv2dParams::new()).unwrap();
        let x = QTensor::from_codes(Array4::<u8>::zeros((0, 1, 3, 3)), u8f()).unwrap();
        assert_eq!(c.forward(&x).unwrap().codes().shape(), &[0, 2, 3, 3]);
        let d = QTensor::from_codes(Array2::<i8>::ones((2, 3)), QFormat::signed(8, 0).unwrap())
            .unwrap();
        let dense =
            Dense::<u8, u8>::new(&d, None, u8f(), OutputStage::new(u8f()), KernelChoice::Auto)
                .unwrap();
        let x = QTensor::from_codes(Array2::<u8>::zeros((0, 3)), u8f()).unwrap();
        assert_eq!(dense.forward(&x).unwrap().codes().shape(), &[0, 2]);
    }
}

/// Found by tests/no_panic.rs (`kernels_at_extreme_params`): `Conv2d::bias_formats` on a zero-size
/// weight tensor claiming 2^40 output channels built one format per channel (an allocation of
/// terabytes, so an abort, not even a panic). Zero-size weights are now refused first.
#[test]
fn bias_formats_of_zero_size_weights_claiming_2_pow_40_channels_are_refused_before_allocating() {
    let w = fixq::QTensor::from_codes(
        ndarray::Array4::<i8>::zeros((1 << 40, 0, 1, 1)),
        fixq::QFormat::signed(8, 0).unwrap(),
    )
    .unwrap();
    let e = refused(
        "bias_formats",
        largest_allocation(|| {
            fixq::kernels::Conv2d::<u8, u8>::bias_formats(
                &w,
                fixq::QFormat::unsigned(8, 0).unwrap(),
            )
        }),
    );
    match e {
        Error::InvalidArgument { name, reason } => {
            assert_eq!(name, "weights shape");
            assert_eq!(
                reason,
                "expected no zero size, found [1099511627776, 0, 1, 1]"
            );
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Found by tests/no_panic.rs (`kernels_at_extreme_params`): `max_pool2d` on a zero-size tensor held
/// channels-last with 2^40 channels allocated a row buffer of W·C codes (an abort). A call with no
/// output now returns the empty output at once.
#[test]
fn max_pool_of_a_zero_size_tensor_claiming_2_pow_40_channels_does_not_allocate() {
    let f = fixq::QFormat::unsigned(8, 0).unwrap();
    let codes = ndarray::Array4::<u8>::zeros((0, 2, 2, 1 << 40)).permuted_axes([0, 3, 1, 2]);
    let x = fixq::QTensor::from_codes(codes, f).unwrap();
    let (r, largest) = largest_allocation(|| {
        fixq::kernels::max_pool2d(&x, fixq::kernels::Pool2dParams::new(2, 1))
    });
    assert!(largest < 1 << 20, "allocated {largest} bytes");
    assert_eq!(r.unwrap().codes().shape(), &[0, 1 << 40, 1, 1]);
}
