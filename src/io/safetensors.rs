//! `.safetensors` files holding `F32` tensors.
//!
//! Layout: a little-endian `u64` header size `n`, `n` bytes of JSON mapping each tensor name to
//! `{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}` (offsets relative to the end of
//! the header; an optional `"__metadata__"` entry is ignored), then the data, little-endian.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::json::{self, Json};
use super::{byte_len, malformed, read_file};
use crate::error::{Error, Result};

/// Reads every tensor of a `.safetensors` file, in header order, e.g. to pass to
/// [`crate::Graph::set_initializers`].
///
/// # Errors
/// - `Io` if the file cannot be read.
/// - `Malformed { format: "safetensors", .. }` for a truncated file, invalid JSON, offsets outside
///   the data or not matching the shape, or overlapping tensors.
/// - `Unsupported` for a dtype other than `F32`.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<(String, ArrayD<f32>)>> {
    parse(&read_file(path.as_ref())?)
}

/// Decodes `.safetensors` bytes.
///
/// # Errors
/// As [`read`].
///
/// # Examples
/// ```
/// let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
/// let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
/// bytes.extend(header);
/// bytes.extend(1.0f32.to_le_bytes());
/// bytes.extend(2.0f32.to_le_bytes());
/// let tensors = fixq::io::safetensors::parse(&bytes).unwrap();
/// assert_eq!(tensors[0].0, "w");
/// assert_eq!(tensors[0].1.as_slice().unwrap(), &[1.0, 2.0]);
/// ```
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, ArrayD<f32>)>> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(malformed(
            "safetensors",
            bytes.len(),
            "shorter than the 8-byte header size",
        ));
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(a);
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Err(malformed(
            "safetensors",
            8,
            format!("header claims {n} bytes but the file ends first"),
        ));
    };
    let data_at = 8 + header.len();
    let data = &bytes[data_at..];
    let Json::Object(entries) = json::parse(header, "safetensors", 8)? else {
        return Err(malformed("safetensors", 8, "header is not a JSON object"));
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut spans = Vec::with_capacity(entries.len());
    for (name, info) in &entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |reason: &str| malformed("safetensors", 8, format!("tensor '{name}': {reason}"));
        match info.get("dtype") {
            Some(Json::String(d)) if d == "F32" => {}
            Some(Json::String(d)) => {
                return Err(Error::Unsupported(format!(
                    "safetensors tensor '{name}': dtype {d} (only F32)"
                )));
            }
            _ => return Err(bad("missing dtype")),
        }
        let Some(Json::Array(dims)) = info.get("shape") else {
            return Err(bad("missing shape"));
        };
        let shape = dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("shape holds a non-integer"))?;
        let Some(Json::Array(offsets)) = info.get("data_offsets") else {
            return Err(bad("missing data_offsets"));
        };
        let (begin, end) = match offsets.as_slice() {
            [b, e] => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) => (b, e),
                _ => return Err(bad("data_offsets are not integers")),
            },
            _ => return Err(bad("data_offsets must hold two integers")),
        };
        if begin > end || end > data.len() as u64 {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] outside the {} data bytes",
                data.len()
            )));
        }
        let (begin, end) = (begin as usize, end as usize);
        if byte_len(&shape, 4) != Some(end - begin) {
            return Err(bad(&format!(
                "shape {shape:?} does not match {} data bytes",
                end - begin
            )));
        }
        let values: Vec<f32> = data[begin..end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let array =
            ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| bad(&e.to_string()))?;
        spans.push((begin, end));
        out.push((name.clone(), array));
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(malformed("safetensors", data_at, "tensors overlap"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn reads_two_tensors_and_skips_metadata() {
        let h = r#"{"__metadata__":{"k":"v"},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}"#;
        let data: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = parse(&file(h, &data)).unwrap();
        assert_eq!(t[0].0, "b");
        assert_eq!(t[0].1.as_slice().unwrap(), &[3.0]);
        assert_eq!(t[1].1.shape(), &[1, 2]);
        for cut in 0..data.len() + h.len() + 8 {
            assert!(parse(&file(h, &data)[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn rejects_bad_offsets_dtypes_and_overlaps() {
        let huge = r#"{"a":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse(&file(huge, &[0; 4])),
            Err(Error::Malformed { .. })
        ));
        let f16 = r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse(&file(f16, &[0; 4])),
            Err(Error::Unsupported(_))
        ));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(parse(&file(overlap, &[0; 8])).is_err());
        let mut lying = 1u64.wrapping_shl(62).to_le_bytes().to_vec();
        lying.extend(b"{}");
        assert!(parse(&lying).is_err());
    }
}
