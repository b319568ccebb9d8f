//! Loading images and labels: IDX (optionally gzip), NumPy `.npy` (u8 or f32, NCHW or NHWC) and
//! image folders (one subfolder per class, PNG and JPEG), then `x = (raw / scale - mean[c]) / std[c]`
//! per channel, into the `[N, C, H, W]` float batch the model takes.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use fixq::io::{idx, npy};
use ndarray::{ArrayD, Axis, IxDyn, Slice};

use crate::error::{CliError, CliResult};

/// Memory layout of 4-D `.npy` images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// `[N, C, H, W]`.
    Nchw,
    /// `[N, H, W, C]` (e.g. images saved from PIL or TensorFlow), transposed on load.
    Nhwc,
}

/// How raw values become model inputs; shared by every data flag of a command.
#[derive(Debug, Clone, Args)]
pub struct Preprocess {
    /// Layout of 4-D .npy images (IDX and image folders need none).
    #[arg(long, value_enum, default_value_t = Layout::Nchw)]
    pub layout: Layout,
    /// Divide raw values by this (255 maps 8-bit pixels to 0..1; the digits CNN takes 16) [default: 1].
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Subtract per channel after scaling: one value, or one per channel (comma-separated).
    #[arg(
        long,
        value_name = "M[,M...]",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub mean: Vec<f32>,
    /// Divide per channel after subtracting the mean: one value, or one per channel.
    #[arg(long, value_name = "S[,S...]", value_delimiter = ',')]
    pub std: Vec<f32>,
}

/// Images ready for the model and their labels, if known.
#[derive(Debug, Clone)]
pub struct Data {
    /// `[N, C, H, W]` (or `[N, F]` for 2-D `.npy` data), preprocessed.
    pub images: ArrayD<f32>,
    /// One label per image: from `--labels`, the IDX file beside the images, or the class folders.
    pub labels: Option<Vec<u8>>,
    /// Class names of an image folder, in label order.
    pub classes: Vec<String>,
}

impl Data {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.shape().first().copied().unwrap_or(0)
    }

    /// The labels, or an error naming `flag` and `path` when there are none.
    pub fn require_labels(&self, flag: &str, path: &Path) -> CliResult<&[u8]> {
        self.labels.as_deref().ok_or_else(|| {
            CliError::input(
                format!("{flag} {}", path.display()),
                "no labels: pass --labels FILE (IDX or .npy), or use an image folder",
            )
        })
    }
}

/// What to read: `path` (given as `flag` on the command line), with labels or not.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The flag that named the path, for messages (`--calib`, `--data`).
    pub flag: &'a str,
    /// File or folder.
    pub path: &'a Path,
    /// `--labels`, if given.
    pub labels: Option<&'a Path>,
    /// Whether labels are wanted (then an IDX file's sibling labels file is found by name).
    pub want_labels: bool,
    /// Leave out the first N images (before `limit`).
    pub skip: usize,
    /// Keep only the first N images (after `skip`).
    pub limit: Option<usize>,
    /// Channels the model takes, if known (image folders decode to it: 1 gray, 3 RGB).
    pub channels: Option<usize>,
}

impl Source<'_> {
    fn what(&self) -> String {
        format!("{} {}", self.flag, self.path.display())
    }
}

/// The channel count of a graph input `[N, C, H, W]`, if static.
pub fn input_channels(graph: &fixq::Graph) -> Option<usize> {
    let shape = &graph.input().shape;
    if shape.len() == 4 { shape[1] } else { None }
}

/// Reads `src` and preprocesses it with `pre` (the scale defaults to `default_scale`).
///
/// # Errors
/// Bad input (exit 2) naming the flag and path: unreadable or malformed files, unsupported
/// element types or ranks, labels that do not match the images, bad preprocessing values.
pub fn load(src: &Source<'_>, pre: &Preprocess, default_scale: f32) -> CliResult<Data> {
    let scale = pre.scale.unwrap_or(default_scale);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(CliError::input(
            format!("--scale {scale}"),
            "must be a positive number",
        ));
    }
    if let Some(s) = pre.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(CliError::input(
            format!("--std {s}"),
            "every value must be positive",
        ));
    }
    if let Some(m) = pre.mean.iter().find(|m| !m.is_finite()) {
        return Err(CliError::input(format!("--mean {m}"), "must be finite"));
    }
    if src.limit == Some(0) {
        return Err(CliError::input("--limit 0", "must be at least 1"));
    }
    let what = src.what();
    let (raw, labels, classes) = if src.path.is_dir() {
        if let Some(l) = src.labels {
            return Err(CliError::input(
                format!("--labels {}", l.display()),
                "an image folder takes its labels from its class subfolders",
            ));
        }
        let (raw, labels, classes) =
            read_folder(src.path, src.channels, src.skip, src.limit, &what)?;
        (raw, Some(labels), classes)
    } else {
        let raw = if is_npy(src.path) {
            read_npy(src.path, pre.layout, src.skip, src.limit, &what)?
        } else {
            read_idx(src.path, src.skip, src.limit, &what)?
        };
        let labels = if src.want_labels || src.labels.is_some() {
            read_labels_for(src, raw.total)?
        } else {
            None
        };
        (raw, labels, Vec::new())
    };
    let n = raw.values.len_of(Axis(0));
    if n == 0 {
        let why = if raw.total == 0 {
            "no images".to_string()
        } else {
            format!("no images left after --skip {} of {}", src.skip, raw.total)
        };
        return Err(CliError::input(&what, why));
    }
    // Folder labels are already selected; file labels cover the whole file.
    let labels = labels.map(|l| {
        let skip = if src.path.is_dir() { 0 } else { src.skip };
        l.into_iter().skip(skip).take(n).collect()
    });
    let images = normalise(raw.values, scale, &pre.mean, &pre.std)?;
    Ok(Data {
        images,
        labels,
        classes,
    })
}

/// Raw values (already limited and in NCHW), and the image count before the limit.
struct Raw {
    values: ArrayD<f32>,
    total: usize,
}

fn is_npy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

fn read_idx(path: &Path, skip: usize, limit: Option<usize>, what: &str) -> CliResult<Raw> {
    let a = idx::read(path).map_err(|e| CliError::from_lib(what, e))?;
    let total = a.shape().first().copied().unwrap_or(0);
    let a = selected(a, skip, limit);
    let values = match a.ndim() {
        // [N, H, W] images: one channel.
        3 => a.insert_axis(Axis(1)),
        2 | 4 => a,
        _ => {
            return Err(CliError::input(
                what,
                format!(
                    "IDX data of shape {:?}: expected images [N, H, W]",
                    a.shape()
                ),
            ));
        }
    };
    Ok(Raw {
        values: values.mapv(f32::from),
        total,
    })
}

fn read_npy(
    path: &Path,
    layout: Layout,
    skip: usize,
    limit: Option<usize>,
    what: &str,
) -> CliResult<Raw> {
    let array = npy::read(path).map_err(|e| CliError::from_lib(what, e))?;
    // The count before the limit is what a labels file must match.
    let total = array.shape().first().copied().unwrap_or(0);
    let a = match array {
        npy::NpyArray::U8(a) => selected(a, skip, limit).mapv(f32::from),
        npy::NpyArray::F32(a) => selected(a, skip, limit),
        other => {
            return Err(CliError::input(
                what,
                format!(
                    "element type {}: expected |u1 (u8) or <f4 (f32)",
                    other.dtype()
                ),
            ));
        }
    };
    let values = match (a.ndim(), layout) {
        (2, _) | (4, Layout::Nchw) => a,
        (3, _) => a.insert_axis(Axis(1)),
        (4, Layout::Nhwc) => a
            .permuted_axes(IxDyn(&[0, 3, 1, 2]))
            .as_standard_layout()
            .into_owned(),
        (_, _) => {
            return Err(CliError::input(
                what,
                format!(
                    "array of shape {:?}: expected [N, C, H, W], [N, H, W, C] (--layout nhwc), [N, H, W] or [N, F]",
                    a.shape()
                ),
            ));
        }
    };
    Ok(Raw { values, total })
}

/// Entries `skip..skip + limit` along axis 0 (possibly none).
fn selected<T: Clone>(a: ArrayD<T>, skip: usize, limit: Option<usize>) -> ArrayD<T> {
    let Some(&len) = a.shape().first() else {
        return a;
    };
    let start = skip.min(len);
    let end = limit.map_or(len, |n| start.saturating_add(n).min(len));
    if (start, end) == (0, len) {
        a
    } else {
        a.slice_axis(Axis(0), Slice::from(start..end)).to_owned()
    }
}

/// Labels from `--labels` or, for IDX images, the labels file beside them (`*-images-idx3-*` →
/// `*-labels-idx1-*`, the MNIST naming), checked against the image count `total`.
fn read_labels_for(src: &Source<'_>, total: usize) -> CliResult<Option<Vec<u8>>> {
    let (path, flag) = match src.labels {
        Some(p) => (p.to_path_buf(), "--labels"),
        None => match sibling_labels(src.path) {
            Some(p) => (p, "labels"),
            None => return Ok(None),
        },
    };
    let what = format!("{flag} {}", path.display());
    let labels: Vec<u8> = if is_npy(&path) {
        match npy::read(&path).map_err(|e| CliError::from_lib(&what, e))? {
            npy::NpyArray::U8(a) => a.iter().copied().collect(),
            npy::NpyArray::I64(a) => a
                .iter()
                .map(|&v| {
                    u8::try_from(v).map_err(|_| {
                        CliError::input(&what, format!("label {v} is outside 0..=255"))
                    })
                })
                .collect::<CliResult<_>>()?,
            other => {
                return Err(CliError::input(
                    &what,
                    format!("element type {}: expected |u1 or <i8", other.dtype()),
                ));
            }
        }
    } else {
        idx::read_labels(&path)
            .map_err(|e| CliError::from_lib(&what, e))?
            .to_vec()
    };
    if labels.len() != total {
        return Err(CliError::input(
            &what,
            format!(
                "{} labels for the {total} images of {}",
                labels.len(),
                src.path.display()
            ),
        ));
    }
    Ok(Some(labels))
}

/// `dir/x-images-idx3-ubyte[.gz]` → `dir/x-labels-idx1-ubyte[.gz]`, if that file exists.
fn sibling_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    if !name.contains("images-idx3") {
        return None;
    }
    let p = images.with_file_name(name.replace("images-idx3", "labels-idx1"));
    p.is_file().then_some(p)
}

/// Decodes an image folder: one subfolder per class (sorted by name: label 0, 1, ...), PNG and
/// JPEG files in each (sorted by name); all images the same size.
fn read_folder(
    dir: &Path,
    channels: Option<usize>,
    skip: usize,
    limit: Option<usize>,
    what: &str,
) -> CliResult<(Raw, Vec<u8>, Vec<String>)> {
    let read_dir = |d: &Path| -> CliResult<Vec<PathBuf>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d)
            .map_err(|e| CliError::input(what, format!("{}: {e}", d.display())))?
        {
            let e = e.map_err(|e| CliError::input(what, format!("{}: {e}", d.display())))?;
            let name = e.file_name();
            if !name.to_string_lossy().starts_with('.') {
                v.push(e.path());
            }
        }
        v.sort();
        Ok(v)
    };
    let classes: Vec<PathBuf> = read_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(CliError::input(
            what,
            "an image folder needs one subfolder per class",
        ));
    }
    if classes.len() > 256 {
        return Err(CliError::input(
            what,
            format!(
                "{} class subfolders: at most 256 are supported",
                classes.len()
            ),
        ));
    }
    let mut files: Vec<(PathBuf, u8)> = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let images: Vec<PathBuf> = read_dir(class)?
            .into_iter()
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        if images.is_empty() {
            return Err(CliError::input(
                what,
                format!(
                    "class folder {} has no .png or .jpg images",
                    class.display()
                ),
            ));
        }
        // At most 256 classes, checked above.
        let label = u8::try_from(label).unwrap_or(u8::MAX);
        files.extend(images.into_iter().map(|p| (p, label)));
    }
    let total = files.len();
    files.drain(..skip.min(total));
    files.truncate(limit.unwrap_or(usize::MAX));
    if files.is_empty() {
        return Err(CliError::input(
            what,
            format!("no images left after --skip {skip} of {total}"),
        ));
    }
    let mut decoded = Vec::with_capacity(files.len());
    for (p, _) in &files {
        let img =
            image::open(p).map_err(|e| CliError::input(what, format!("{}: {e}", p.display())))?;
        decoded.push(img);
    }
    let c = match channels {
        Some(c @ (1 | 3)) => c,
        Some(c) => {
            return Err(CliError::input(
                what,
                format!("the model takes {c} channels: image folders give 1 (gray) or 3 (RGB)"),
            ));
        }
        None if decoded.iter().all(|i| !i.color().has_color()) => 1,
        None => 3,
    };
    let (w, h) = (decoded[0].width() as usize, decoded[0].height() as usize);
    let mut values = ndarray::Array4::<f32>::zeros((decoded.len(), c, h, w));
    for (n, (img, (p, _))) in decoded.iter().zip(&files).enumerate() {
        if (img.width() as usize, img.height() as usize) != (w, h) {
            return Err(CliError::input(
                what,
                format!(
                    "{} is {}x{}, the first image {w}x{h}: all images must be the same size",
                    p.display(),
                    img.width(),
                    img.height()
                ),
            ));
        }
        let mut out = values.index_axis_mut(Axis(0), n);
        if c == 1 {
            for (x, y, px) in img.to_luma8().enumerate_pixels() {
                out[[0, y as usize, x as usize]] = f32::from(px.0[0]);
            }
        } else {
            for (x, y, px) in img.to_rgb8().enumerate_pixels() {
                for (k, &v) in px.0.iter().enumerate() {
                    out[[k, y as usize, x as usize]] = f32::from(v);
                }
            }
        }
    }
    let labels = files.iter().map(|(_, l)| *l).collect();
    let names = classes
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    Ok((
        Raw {
            values: values.into_dyn(),
            total,
        },
        labels,
        names,
    ))
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["png", "jpg", "jpeg"]
            .iter()
            .any(|k| e.eq_ignore_ascii_case(k))
    })
}

/// `(x / scale - mean[c]) / std[c]` along axis 1.
fn normalise(mut x: ArrayD<f32>, scale: f32, mean: &[f32], std: &[f32]) -> CliResult<ArrayD<f32>> {
    let channels = x.shape().get(1).copied().unwrap_or(1);
    let per_channel = |flag: &str, v: &[f32], default: f32| -> CliResult<Vec<f32>> {
        match v.len() {
            0 => Ok(vec![default; channels]),
            1 => Ok(vec![v[0]; channels]),
            n if n == channels => Ok(v.to_vec()),
            n => Err(CliError::input(
                format!("--{flag}"),
                format!("{n} values for data with {channels} channels: give 1 or {channels}"),
            )),
        }
    };
    let mean = per_channel("mean", mean, 0.0)?;
    let std = per_channel("std", std, 1.0)?;
    if x.ndim() < 2 {
        x.mapv_inplace(|v| (v / scale - mean[0]) / std[0]);
        return Ok(x);
    }
    for (c, mut lane) in x.axis_iter_mut(Axis(1)).enumerate() {
        let (m, s) = (mean[c], std[c]);
        lane.mapv_inplace(|v| (v / scale - m) / s);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fixq-cli-data-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pre(layout: Layout) -> Preprocess {
        Preprocess {
            layout,
            scale: None,
            mean: vec![],
            std: vec![],
        }
    }

    fn source(path: &Path) -> Source<'_> {
        Source {
            flag: "--data",
            path,
            labels: None,
            want_labels: false,
            skip: 0,
            limit: None,
            channels: None,
        }
    }

    /// `[N, H, W, C]` = `[2, 2, 3, 3]` with value n·100 + h·10 + w + c/10.
    fn nhwc() -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(&[2, 2, 3, 3]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as f32 + i[3] as f32 / 10.0
        })
    }

    #[test]
    fn nhwc_npy_is_transposed_to_nchw_and_normalised_per_channel() {
        let d = scratch("nhwc");
        let p = d.join("x.npy");
        fixq::io::write_atomic(&p, &crate::output::npy_bytes(&nhwc())).unwrap();
        let x = load(&source(&p), &pre(Layout::Nhwc), 1.0).unwrap().images;
        assert_eq!(x.shape(), &[2, 3, 2, 3]);
        let raw = nhwc();
        for n in 0..2 {
            for c in 0..3 {
                for h in 0..2 {
                    for w in 0..3 {
                        assert_eq!(x[[n, c, h, w]], raw[[n, h, w, c]]);
                    }
                }
            }
        }
        // Per-channel mean and std after the scale; --limit keeps the first images.
        let mut pp = pre(Layout::Nhwc);
        pp.scale = Some(2.0);
        pp.mean = vec![1.0, 2.0, 3.0];
        pp.std = vec![1.0, 0.5, 0.25];
        let mut src = source(&p);
        src.limit = Some(1);
        let y = load(&src, &pp, 1.0).unwrap().images;
        assert_eq!(y.shape(), &[1, 3, 2, 3]);
        for c in 0..3 {
            let expected = (raw[[0, 1, 2, c]] / 2.0 - pp.mean[c]) / pp.std[c];
            assert_eq!(y[[0, c, 1, 2]], expected);
        }
        // The same array read as NCHW keeps its shape.
        let z = load(&source(&p), &pre(Layout::Nchw), 1.0).unwrap().images;
        assert_eq!(z.shape(), &[2, 2, 3, 3]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_rgb_folder_decodes_to_three_channels_with_sorted_class_labels() {
        let d = scratch("rgb");
        for (class, files) in [("b_cat", 2u8), ("a_dog", 1)] {
            std::fs::create_dir_all(d.join(class)).unwrap();
            for k in 0..files {
                let img = image::RgbImage::from_fn(4, 2, |x, y| {
                    image::Rgb([k * 10 + x as u8, y as u8 * 50, 200])
                });
                let ext = if k == 0 { "png" } else { "PNG" };
                img.save_with_format(
                    d.join(class).join(format!("{k}.{ext}")),
                    image::ImageFormat::Png,
                )
                .unwrap();
            }
        }
        let data = load(&source(&d), &pre(Layout::Nchw), 1.0).unwrap();
        assert_eq!(data.images.shape(), &[3, 3, 2, 4]);
        // Classes in name order: a_dog = 0, b_cat = 1.
        assert_eq!(data.classes, vec!["a_dog", "b_cat"]);
        assert_eq!(data.labels, Some(vec![0, 1, 1]));
        // Image 2 is b_cat/1.PNG: red = 10 + x, green = 50 y, blue = 200.
        assert_eq!(data.images[[2, 0, 1, 3]], 13.0);
        assert_eq!(data.images[[2, 1, 1, 3]], 50.0);
        assert_eq!(data.images[[2, 2, 0, 0]], 200.0);
        // A model that takes one channel gets gray images.
        let mut src = source(&d);
        src.channels = Some(1);
        assert_eq!(
            load(&src, &pre(Layout::Nchw), 1.0).unwrap().images.shape(),
            &[3, 1, 2, 4]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
