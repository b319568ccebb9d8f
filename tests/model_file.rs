//! The `.fixq` model file (`docs/format.md`): save and load bit-exact on the shipped digits CNN, the
//! shipped ResNet-8 and hand-built graphs; every corruption, truncation, wrong magic or version
//! refused with `Malformed` at the right byte; atomic replacement of an existing file.

mod shipped;

use std::sync::OnceLock;

use fixq::graph::{Graph, Node, Op, TensorInfo};
use fixq::model_file::FIXED_OVERHEAD_BYTES;
use fixq::plan::Granularity;
use fixq::{Budget, Error, QuantizeOptions, QuantizedModel, pack, quantize};
use ndarray::{Array2, ArrayD, IxDyn};

/// The digits CNN at 4 bits per weight (default method, per channel), from 300 training images.
fn digits_model() -> &'static (QuantizedModel, Vec<u8>) {
    static MODEL: OnceLock<(QuantizedModel, Vec<u8>)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let graph = shipped::digits_graph();
        let calib = shipped::digits("train", Some(300));
        let options = QuantizeOptions {
            probe_images: 100,
            ..QuantizeOptions::default()
        };
        let model = quantize(
            &graph,
            calib.images.view().into_dyn(),
            Budget::AvgBitsPerParam(4.0),
            &options,
        )
        .unwrap();
        let bytes = model.to_bytes().unwrap();
        (model, bytes)
    })
}

/// The `f32` bits of every value, for comparing outputs exactly.
fn bits(a: &ArrayD<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

/// Asserts that `loaded` is `model`: the same plan, weights, report and file bytes, and
/// bit-identical outputs on `images`.
fn assert_same(model: &QuantizedModel, loaded: &QuantizedModel, images: &ArrayD<f32>) {
    assert_eq!(loaded.plan(), model.plan());
    // The codes and formats (a code tensor's count of weights clipped when it was quantized is not
    // stored: loaded codes count 0).
    let (a, b) = (loaded.network().weights(), model.network().weights());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.node, y.node);
        assert_eq!(x.codes.codes(), y.codes.codes());
        assert_eq!(x.codes.formats(), y.codes.formats());
    }
    assert_eq!(
        loaded.network().input_format(),
        model.network().input_format()
    );
    assert_eq!(loaded.to_bytes().unwrap(), model.to_bytes().unwrap());
    let a = model.run(images.view()).unwrap();
    let b = loaded.run(images.view()).unwrap();
    assert_eq!(a.shape(), b.shape());
    assert_eq!(bits(&a), bits(&b));
}

/// Section boundaries of a file, from the layout in docs/format.md: the end of the header, then
/// for each section the start of its header, the start of its body and its end; the checksum's
/// offset last.
fn boundaries(bytes: &[u8]) -> Vec<(String, usize)> {
    assert_eq!(&bytes[..8], b"FIXQMODL");
    let mut out = vec![("header".to_string(), 20)];
    let mut pos = 20;
    for tag in ["GRPH", "CNST", "PLAN", "CODE", "REPT"] {
        assert_eq!(&bytes[pos..pos + 4], tag.as_bytes());
        let len = u64::from_le_bytes(bytes[pos + 4..pos + 12].try_into().unwrap()) as usize;
        out.push((format!("{tag} length"), pos + 4));
        out.push((format!("{tag} body"), pos + 12));
        pos += 12 + len;
        out.push((format!("{tag} end"), pos));
    }
    assert_eq!(
        pos,
        bytes.len() - 4,
        "the checksum follows the last section"
    );
    out
}

/// Recomputes the trailing CRC-32 (and the declared length), as a writer would, so that a test
/// reaches the checks behind the checksum.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() as u64;
    bytes[12..20].copy_from_slice(&n.to_le_bytes());
    let end = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn malformed(r: fixq::Result<QuantizedModel>) -> (u64, String) {
    match r {
        Err(Error::Malformed {
            format,
            offset,
            reason,
        }) => {
            assert_eq!(format, "fixq model file");
            (offset, reason)
        }
        Err(other) => panic!("expected Malformed, got {other:?}"),
        Ok(_) => panic!("expected Malformed, got a model"),
    }
}

#[test]
fn digits_model_reloads_bit_exact() {
    let (model, bytes) = digits_model();
    let loaded = QuantizedModel::from_bytes(bytes).unwrap();
    let test = shipped::digits("test", None);
    let images = test.images.clone().into_dyn();
    assert_same(model, &loaded, &images);
    // The report comes back as it was measured.
    assert_eq!(loaded.report(), model.report());
    assert_eq!(loaded.report().probe_images, 100);
    // The same kernels are chosen on this CPU.
    assert_eq!(loaded.network().kernels(), model.network().kernels());
    // And the loaded model is as accurate as the original (it is the same model).
    let acc = fixq::eval::accuracy(&loaded.run(images.view()).unwrap(), &test.labels).unwrap();
    assert!(acc >= 0.95, "accuracy {acc}");
}

#[test]
fn digits_file_size_is_the_payload_plus_a_small_overhead() {
    let (model, bytes) = digits_model();
    let payload_bits = pack::payload_bits(model.network().weights());
    assert_eq!(payload_bits, model.plan().model_bits());
    let payload_bytes = payload_bits.div_ceil(8) as usize;
    let overhead = bytes.len() - payload_bytes;
    println!(
        "digits at {:.3} bits per weight: {} weight bits = {payload_bytes} bytes; file {} bytes, overhead {overhead} bytes",
        model.plan().avg_bits_per_param(),
        payload_bits,
        bytes.len()
    );
    let b = boundaries(bytes);
    for k in 0..5 {
        println!(
            "  {}: {} bytes",
            b[3 * k + 2].0,
            b[3 * k + 3].1 - b[3 * k + 2].1
        );
    }
    // The overhead holds the topology, the biases as f32, every format (plan and codes), the
    // predicted and measured figures and the 84 bytes of container. Measured: 3,408 bytes beside
    // 6,791 of codes (docs/format.md); the bound is 3.5 KiB.
    assert!(overhead >= FIXED_OVERHEAD_BYTES);
    assert!(overhead <= 3584, "overhead {overhead} bytes");
}

#[test]
fn resnet8_model_reloads_bit_exact_on_the_cifar10_subset() {
    let graph = shipped::resnet8_graph();
    let data = shipped::cifar10_subset();
    let options = QuantizeOptions {
        probe_images: 32,
        operating_point_rounds: 1,
        ..QuantizeOptions::default()
    };
    let model = quantize(
        &graph,
        data.images.view().into_dyn(),
        Budget::AvgBitsPerParam(6.0),
        &options,
    )
    .unwrap();
    let dir = scratch("resnet8");
    let path = dir.join("resnet8.fixq");
    model.save(&path).unwrap();
    let loaded = QuantizedModel::load(&path).unwrap();
    assert_same(&model, &loaded, &data.images.clone().into_dyn());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// y = MatMul(Gemm(x; W as [in, out], α = 0.5, β = 2), M): the weights rebuilt in their stored
/// layouts, per-tensor two's complement codes.
fn small_dense_graph() -> Graph {
    let w = Array2::from_shape_fn((6, 5), |(i, o)| ((i * 5 + o) as f32 * 0.61).sin()).into_dyn();
    let c = ArrayD::from_shape_vec(IxDyn(&[5]), vec![0.3f32, -0.1, 0.0, 0.25, -0.5]).unwrap();
    let m = Array2::from_shape_fn((5, 3), |(i, o)| ((i * 3 + o) as f32 * 1.3).cos()).into_dyn();
    let gemm = Node {
        name: "fc".into(),
        op: Op::Gemm {
            alpha: 0.5,
            beta: 2.0,
            trans_a: false,
            trans_b: false,
        },
        inputs: vec!["x".into(), "w".into(), "c".into()],
        output: "h".into(),
    };
    let relu = Node {
        name: "relu".into(),
        op: Op::Relu,
        inputs: vec!["h".into()],
        output: "r".into(),
    };
    let mm = Node {
        name: "proj".into(),
        op: Op::MatMul,
        inputs: vec!["r".into(), "m".into()],
        output: "y".into(),
    };
    let input = TensorInfo {
        name: "x".into(),
        shape: vec![None, Some(6)],
    };
    Graph::new(
        input,
        "y",
        vec![gemm, relu, mm],
        vec![("w".into(), w), ("c".into(), c), ("m".into(), m)],
    )
    .unwrap()
}

fn small_model() -> (QuantizedModel, ArrayD<f32>) {
    let graph = small_dense_graph();
    let images =
        Array2::from_shape_fn((40, 6), |(n, i)| ((n * 6 + i) as f32 * 0.77).sin()).into_dyn();
    let model = quantize(
        &graph,
        images.view(),
        Budget::AvgBitsPerParam(5.0),
        &QuantizeOptions::per_tensor(),
    )
    .unwrap();
    assert_eq!(model.plan().weights().len(), 2);
    (model, images)
}

#[test]
fn hand_built_gemm_and_matmul_reload_bit_exact() {
    let (model, images) = small_model();
    let loaded = QuantizedModel::from_bytes(&model.to_bytes().unwrap()).unwrap();
    assert_same(&model, &loaded, &images);
    // Per channel too.
    let options = QuantizeOptions {
        granularity: Granularity::PerChannel,
        ..QuantizeOptions::default()
    };
    let m = quantize(
        &small_dense_graph(),
        images.view(),
        Budget::AvgBitsPerParam(4.0),
        &options,
    )
    .unwrap();
    assert!(m.plan().weights()[0].formats.len() > 1);
    let loaded = QuantizedModel::from_bytes(&m.to_bytes().unwrap()).unwrap();
    assert_same(&m, &loaded, &images);
}

#[test]
fn every_flipped_bit_of_a_file_is_refused() {
    let (model, _) = small_model();
    let bytes = model.to_bytes().unwrap();
    let n = bytes.len();
    for i in 0..n {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        let (offset, reason) = malformed(QuantizedModel::from_bytes(&bad));
        match i {
            0..8 => assert_eq!(
                (offset, reason.as_str()),
                (0, "header: not a fixq model file (bad magic)")
            ),
            8..12 => assert_eq!(offset, 8, "{reason}"),
            12..20 => assert!(reason.contains("bytes"), "{i}: {reason}"),
            _ => {
                assert_eq!(offset as usize, n - 4, "byte {i}: {reason}");
                assert!(
                    reason.starts_with("checksum mismatch: the file stores CRC-32 0x"),
                    "{reason}"
                );
            }
        }
    }
}

#[test]
fn a_corrupt_byte_in_the_digits_file_is_a_checksum_error() {
    let (_, bytes) = digits_model();
    let mut bad = bytes.clone();
    let at = bytes.len() / 2;
    bad[at] = bad[at].wrapping_add(1);
    let (offset, reason) = malformed(QuantizedModel::from_bytes(&bad));
    assert_eq!(offset as usize, bytes.len() - 4);
    let stored = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    let computed = crc32fast::hash(&bad[..bad.len() - 4]);
    assert_eq!(
        reason,
        format!(
            "checksum mismatch: the file stores CRC-32 {stored:#010x}, its bytes give {computed:#010x} (the file is corrupt)"
        )
    );
    println!("{}", QuantizedModel::from_bytes(&bad).unwrap_err());
}

#[test]
fn truncation_at_every_section_boundary_names_the_missing_bytes() {
    let (_, bytes) = digits_model();
    let n = bytes.len();
    let cuts = boundaries(bytes);
    assert_eq!(cuts.len(), 1 + 5 * 3);
    for (what, cut) in cuts.iter().chain([&("checksum".to_string(), n - 4)]) {
        let (offset, reason) = malformed(QuantizedModel::from_bytes(&bytes[..*cut]));
        assert_eq!(offset as usize, *cut, "{what}");
        assert_eq!(
            reason,
            format!("truncated: the header declares {n} bytes, the file has {cut}"),
            "{what}"
        );
    }
    // Inside the header: what is missing is named.
    for (cut, need) in [
        (0, "8 needed for the magic"),
        (5, "8 needed for the magic"),
        (10, "12 needed for the version"),
        (15, "20 needed for the file length"),
    ] {
        let (offset, reason) = malformed(QuantizedModel::from_bytes(&bytes[..cut]));
        assert_eq!(offset as usize, cut);
        assert_eq!(reason, format!("header: truncated: {cut} bytes, {need}"));
    }
    // Every other cut is refused too (a short file is never read as a model).
    for cut in (0..n).step_by(97) {
        malformed(QuantizedModel::from_bytes(&bytes[..cut]));
    }
}

#[test]
fn a_resealed_truncated_section_is_refused_where_it_ends() {
    // Cut the plan section's last 8 bytes and fix up its length, the file length and the checksum:
    // the plan's reader runs out of bytes inside the section.
    let (_, bytes) = digits_model();
    let cuts = boundaries(bytes);
    let find = |name: &str| cuts.iter().find(|(w, _)| w == name).unwrap().1;
    let (len_at, end) = (find("PLAN length"), find("PLAN end"));
    let mut v = bytes[..end - 8].to_vec();
    v.extend_from_slice(&bytes[end..]);
    let old = u64::from_le_bytes(v[len_at..len_at + 8].try_into().unwrap());
    v[len_at..len_at + 8].copy_from_slice(&(old - 8).to_le_bytes());
    let (offset, reason) = malformed(QuantizedModel::from_bytes(&reseal(v)));
    assert_eq!(offset as usize, end - 8, "{reason}");
    assert_eq!(
        reason,
        "plan section: truncated: 8 more bytes needed, 0 left"
    );
    // A section that claims more bytes than the file holds.
    let mut v = bytes.clone();
    v[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let (offset, reason) = malformed(QuantizedModel::from_bytes(&reseal(v)));
    assert_eq!(offset as usize, len_at);
    assert!(
        reason.starts_with("section table: the plan section claims 18446744073709551615 bytes, "),
        "{reason}"
    );
}

#[test]
fn wrong_magic_and_version_are_refused_before_the_checksum() {
    let (_, bytes) = digits_model();
    let mut v = bytes.clone();
    v[..8].copy_from_slice(b"FIXQPACK");
    assert_eq!(
        malformed(QuantizedModel::from_bytes(&v)),
        (0, "header: not a fixq model file (bad magic)".into())
    );
    for version in [0u32, 2, u32::MAX] {
        let mut v = bytes.clone();
        v[8..12].copy_from_slice(&version.to_le_bytes());
        // Resealed or not, the version is the error.
        for file in [v.clone(), reseal(v)] {
            assert_eq!(
                malformed(QuantizedModel::from_bytes(&file)),
                (
                    8,
                    format!(
                        "header: version {version} is not supported (this fixq reads version 1)"
                    )
                )
            );
        }
    }
    // Bytes after the checksum.
    let mut v = bytes.clone();
    v.push(0);
    assert_eq!(
        malformed(QuantizedModel::from_bytes(&v)),
        (
            bytes.len() as u64,
            format!(
                "1 bytes after the checksum (the header declares {} bytes)",
                bytes.len()
            )
        )
    );
}

#[test]
fn resealed_invalid_content_is_refused_at_its_byte() {
    let (_, bytes) = digits_model();
    let cuts = boundaries(bytes);
    let find = |name: &str| cuts.iter().find(|(w, _)| w == name).unwrap().1;
    // A section tag out of place.
    let at = find("PLAN length") - 4;
    let mut v = bytes.clone();
    v[at..at + 4].copy_from_slice(b"XXXX");
    assert_eq!(
        malformed(QuantizedModel::from_bytes(&reseal(v))),
        (
            at as u64,
            "section table: expected the plan section (tag \"PLAN\"), found tag \"XXXX\"".into()
        )
    );
    // The graph input's name length claims 2^32 - 1 bytes.
    let at = find("GRPH body");
    let mut v = bytes.clone();
    v[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (offset, reason) = malformed(QuantizedModel::from_bytes(&reseal(v)));
    assert_eq!(offset as usize, at);
    assert!(
        reason.starts_with("graph section: name length: 4294967295 entries"),
        "{reason}"
    );
    // The codes section's packed magic.
    let at = find("CODE body");
    let mut v = bytes.clone();
    v[at] = b'X';
    assert_eq!(
        malformed(QuantizedModel::from_bytes(&reseal(v))),
        (
            at as u64,
            "weight codes section: packed weights: not a fixq packed weight file (bad magic)"
                .into()
        )
    );
    // The report's last field, a flag byte of the first row set to 2.
    let at = find("REPT body") + 4;
    let name_len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let flag = at + 4 + name_len;
    let mut v = bytes.clone();
    v[flag] = 2;
    assert_eq!(
        malformed(QuantizedModel::from_bytes(&reseal(v))),
        (
            flag as u64,
            "report section: flag byte 2, expected 0 or 1".into()
        )
    );
}

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fixq-model-file-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn save_replaces_an_existing_file_atomically() {
    let (model, images) = small_model();
    let dir = scratch("replace");
    let path = dir.join("model.fixq");
    std::fs::write(&path, b"an older, unrelated file").unwrap();
    model.save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), model.to_bytes().unwrap());
    // Nothing but the file is left in the directory (no temporary file).
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("model.fixq")]);
    let loaded = QuantizedModel::load(&path).unwrap();
    assert_same(&model, &loaded, &images);
    // A failed save (the target is a non-empty directory) leaves it as it was.
    let blocked = dir.join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("inside"), b"kept").unwrap();
    match model.save(&blocked) {
        Err(Error::Io { path, .. }) => assert_eq!(path, blocked.display().to_string()),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(blocked.join("inside")).unwrap(), b"kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loading_a_missing_file_is_an_io_error_naming_it() {
    let path = std::env::temp_dir().join("fixq-no-such-model.fixq");
    match QuantizedModel::load(&path) {
        Err(Error::Io { path: p, source }) => {
            assert_eq!(p, path.display().to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
