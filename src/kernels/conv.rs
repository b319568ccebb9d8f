//! [`Conv2d`]: a prepared 2-D convolution (stride, padding, dilation, groups) over fixed-point codes.

use std::marker::PhantomData;
use std::sync::Arc;

use ndarray::{Array4, ArrayView4, ArrayViewMut4, Ix1, Ix4, RemoveAxis};

use super::packed::{
    CallDims, Geom, Layout, MicroKernel, PackX, Packed, TileGeo, TileOutOfBounds, Unit,
};
use super::portable::{PortableI16, PortableU8};
#[cfg(target_arch = "x86_64")]
use super::x86_64::{Avx2I8, Avx2I16, Avx2Maddubs, Avx512VnniI16, Avx512VnniU8};
use super::{
    Activation8or16, KernelChoice, KernelCodes, KernelId, OutputStage, Requant, Scratch,
    WeightStorage, check_input_format, max_abs_code, reference,
};
use crate::error::{Error, Result};
use crate::fixed::{Grid, QFormat, QTensor, Storage};

/// Convolution attributes (ONNX `Conv` / PyTorch `Conv2d` semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride (vertical, horizontal), each ≥ 1.
    pub stride: [usize; 2],
    /// Zero padding (top, left, bottom, right), in input pixels.
    pub padding: [usize; 4],
    /// Dilation (vertical, horizontal), each ≥ 1.
    pub dilation: [usize; 2],
    /// Groups ≥ 1; C_in and C_out must be multiples. Depthwise: groups = C_in = C_out.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// Stride 1, no padding, no dilation, one group.
    pub fn new() -> Self {
        Self::default()
    }
    /// The same with stride `s` in both directions.
    pub fn with_stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// The same with padding `p` on all four sides.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.padding = [p; 4];
        self
    }
    /// The same with dilation `d` in both directions.
    pub fn with_dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// The same with `g` groups.
    pub fn with_groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// How a layer runs: the scalar reference, or one packed micro-kernel.
#[derive(Debug, Clone)]
enum Engine<A: Activation8or16, O: Activation8or16> {
    Reference,
    Packed(Arc<dyn PackedConv<A, O>>),
}

/// A packed kernel behind one interface, so that the layer holds any of them.
trait PackedConv<A: Activation8or16, O: Activation8or16>: std::fmt::Debug + Send + Sync {
    fn id(&self) -> KernelId;
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        conv: &Conv2d<A, O>,
        x: &[A],
        d: &CallDims,
        layout: Layout,
        range: (i64, i64),
        out: &mut [O],
        scratch: &mut Scratch,
    ) -> Result<()>;
}

#[derive(Debug)]
struct PackedEngine<K: MicroKernel> {
    id: KernelId,
    packed: Packed<K>,
}

impl<A: Activation8or16, O: Activation8or16, K: MicroKernel> PackedConv<A, O> for PackedEngine<K>
where
    K::X: PackX,
{
    fn id(&self) -> KernelId {
        self.id
    }
    fn run(
        &self,
        conv: &Conv2d<A, O>,
        x: &[A],
        d: &CallDims,
        layout: Layout,
        range: (i64, i64),
        out: &mut [O],
        scratch: &mut Scratch,
    ) -> Result<()> {
        conv.run_packed(&self.packed, x, d, layout, range, out, scratch)
    }
}

/// The registration table of the packed kernels: kernel `id` packed for this layer, if this CPU runs
/// it. A new kernel is one line here (plus its [`KernelId`] entry and its micro-kernel).
fn packed_engine<A: Activation8or16, O: Activation8or16>(
    id: KernelId,
    g: &Geom,
    w: &[i64],
    bias: &[i64],
    narrow: NarrowBound,
) -> Option<Arc<dyn PackedConv<A, O>>> {
    fn engine<A: Activation8or16, O: Activation8or16, K: MicroKernel>(
        id: KernelId,
        k: K,
        g: &Geom,
        w: &[i64],
        bias: &[i64],
    ) -> Arc<dyn PackedConv<A, O>> {
        Arc::new(PackedEngine {
            id,
            packed: Packed::new::<A>(k, g, w, bias),
        })
    }
    match id {
        KernelId::PortableU8I8 => Some(engine(id, PortableU8, g, w, bias)),
        KernelId::PortableI16I16 => Some(engine(id, PortableI16, g, w, bias)),
        #[cfg(target_arch = "x86_64")]
        KernelId::Avx2I16I16 => Avx2I16::new().map(|k| engine(id, k, g, w, bias)),
        #[cfg(target_arch = "x86_64")]
        KernelId::Avx2U8I8 => Avx2I8::new().map(|k| engine(id, k, g, w, bias)),
        #[cfg(target_arch = "x86_64")]
        KernelId::Avx2U8I8I16 => {
            Avx2Maddubs::new(narrow.x_max, narrow.w_max).map(|k| engine(id, k, g, w, bias))
        }
        #[cfg(target_arch = "x86_64")]
        KernelId::Avx512VnniU8I8 => Avx512VnniU8::new().map(|k| engine(id, k, g, w, bias)),
        #[cfg(target_arch = "x86_64")]
        KernelId::Avx512VnniI16I16 => Avx512VnniI16::new().map(|k| engine(id, k, g, w, bias)),
        _ => None,
    }
}

/// A prepared fixed-point 2-D convolution: weights packed once, run many times.
///
/// Computes, for every image, output channel o and output pixel,
/// y = sat(round((b_o + Σ x·w) · 2^−(n_x + n_w(o) − n_y))) (module docs, equations 1–3), with
/// activations `A` (`i8`, `u8`, `i16`) in and `O` out. Weights may be per-tensor or per-output-channel
/// (axis 0) and mid-rise (run as 2q+1).
///
/// # Example
/// ```
/// use fixq::kernels::{Conv2d, Conv2dParams, KernelChoice, OutputStage, Activation};
/// use fixq::{QFormat, QTensor};
/// use ndarray::Array4;
/// // 1 -> 1 channel, 3x3 box filter of ones (weights s8.0), padding 1.
/// let w = QTensor::from_codes(Array4::<i8>::ones((1, 1, 3, 3)), QFormat::signed(8, 0)?)?;
/// let conv = Conv2d::<u8, u8>::new(
///     &w, None, QFormat::unsigned(8, 0)?,
///     OutputStage::new(QFormat::unsigned(8, 0)?).with_activation(Activation::Relu),
///     Conv2dParams::new().with_padding(1), KernelChoice::Auto)?;
/// let x = QTensor::from_codes(Array4::<u8>::from_elem((1, 1, 4, 4), 2), QFormat::unsigned(8, 0)?)?;
/// let y = conv.forward(&x)?;
/// assert_eq!(y.codes()[[0, 0, 0, 0]], 8);  // corner: 4 taps of 2
/// assert_eq!(y.codes()[[0, 0, 1, 1]], 18); // interior: 9 taps of 2
/// println!("ran {}", conv.kernel());
/// # Ok::<(), fixq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Conv2d<A: Activation8or16, O: Activation8or16> {
    geom: Geom,
    input_format: QFormat,
    output: OutputStage,
    out_range: (i64, i64),
    w: Vec<i64>,
    bias: Vec<i64>,
    requant: Requant,
    acc_bound: i64,
    engine: Engine<A, O>,
    _t: PhantomData<fn(A) -> O>,
}

/// Minimum multiply-accumulates per call before work is spread over threads (`rayon` feature).
#[cfg(feature = "rayon")]
const PAR_MIN_MACS: usize = 4_000_000;

/// `FIXQ_KERNEL` as `Auto` reads it: `Some(names)` restricts `Auto` to the named kernels
/// (`reference` alone, or an unknown name, leaves only the reference); `None` if unset or empty.
fn env_kernels() -> Option<Vec<KernelId>> {
    kernel_list(&std::env::var("FIXQ_KERNEL").ok()?)
}

/// The kernels a `FIXQ_KERNEL` value names (see [`env_kernels`]).
fn kernel_list(v: &str) -> Option<Vec<KernelId>> {
    let names: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(
        KernelId::ALL
            .into_iter()
            .filter(|id| {
                names.iter().any(|n| {
                    n.eq_ignore_ascii_case(id.name())
                        || (*id == KernelId::Reference && n.eq_ignore_ascii_case("reference"))
                })
            })
            .collect(),
    )
}

impl<A: Activation8or16, O: Activation8or16> Conv2d<A, O> {
    /// Prepares a convolution.
    ///
    /// * `weights`: OIHW codes, shape \[C_out, C_in/groups, k_h, k_w\], per-tensor or per-channel
    ///   along axis 0; mid-tread or mid-rise.
    /// * `bias`: optional codes, shape \[C_out\], in the accumulator formats of
    ///   [`Conv2d::bias_formats`] (n_x + n_w(o) fractional bits).
    /// * `input_format`: the activations' mid-tread format (must fit `A`).
    /// * `output`: output format (must fit `O`) and fused activation.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero sizes, strides, dilations or groups, padding over
    /// [`super::MAX_EXTENT`] on a side or a dilated kernel ((k − 1)·dilation + 1) over it, formats
    /// that do not fit their storage, or an empty activation range; [`Error::ShapeMismatch`] for channel counts not
    /// divisible by `groups`, a bias of the wrong length or format; [`Error::Unsupported`] for mid-rise
    /// activations, a per-channel axis other than 0, or a forced kernel that cannot run here;
    /// [`Error::AccumulatorOverflow`] if even a 64-bit accumulator could overflow.
    pub fn new<W: WeightStorage>(
        weights: &QTensor<W, Ix4>,
        bias: Option<&QTensor<i32, Ix1>>,
        input_format: QFormat,
        output: OutputStage,
        params: Conv2dParams,
        choice: KernelChoice,
    ) -> Result<Self> {
        let s = weights.codes().shape();
        let (c_out, cig, kh, kw) = (s[0], s[1], s[2], s[3]);
        if s.contains(&0) {
            return Err(Error::InvalidArgument {
                name: "weights shape",
                reason: format!("expected no zero size, found {s:?}"),
            });
        }
        let groups = params.groups;
        let geom = Geom {
            // Exact once `groups` divides C_out (checked below): then groups ≤ C_out.
            c_in: cig.saturating_mul(groups),
            c_out,
            kh,
            kw,
            stride: params.stride,
            pad: params.padding,
            dil: params.dilation,
            groups,
        };
        geom.validate()?;
        if c_out % groups != 0 {
            return Err(Error::ShapeMismatch {
                what: "output channels vs groups".into(),
                expected: format!("a multiple of {groups}"),
                found: format!("{c_out}"),
            });
        }
        let (w, wfmt) = effective_weights(weights)?;
        Self::from_parts(geom, w, &wfmt, bias, input_format, output, choice)
    }

    /// The accumulator formats the bias must use: signed 32-bit with n_x + n_w(o) fractional bits, one
    /// per output channel (mid-rise weights count as their 2q+1 format).
    ///
    /// # Errors
    /// As [`QFormat::new`] if a sum of fractional bits is out of range; [`Error::InvalidArgument`] for
    /// weights with a zero size; [`Error::Unsupported`] for a per-channel axis other than 0.
    pub fn bias_formats<W: WeightStorage>(
        weights: &QTensor<W, Ix4>,
        input_format: QFormat,
    ) -> Result<Vec<QFormat>> {
        bias_formats_of(weights, input_format)
    }

    pub(crate) fn from_parts(
        geom: Geom,
        w: Vec<i64>,
        wfmt: &[QFormat],
        bias: Option<&QTensor<i32, Ix1>>,
        input_format: QFormat,
        output: OutputStage,
        choice: KernelChoice,
    ) -> Result<Self> {
        geom.validate()?;
        check_input_format::<A>(input_format)?;
        let out_range = output.code_range::<O>()?;
        let c_out = geom.c_out;
        let k_len = geom.cig() * geom.kh * geom.kw;
        let acc_frac: Vec<i32> = wfmt
            .iter()
            .map(|f| input_format.frac_bits() + f.frac_bits())
            .collect();
        let bias: Vec<i64> = match bias {
            None => vec![0; c_out],
            Some(b) => {
                if b.codes().len() != c_out {
                    return Err(Error::ShapeMismatch {
                        what: "bias length".into(),
                        expected: format!("{c_out} (output channels)"),
                        found: format!("{}", b.codes().len()),
                    });
                }
                for (o, &fr) in acc_frac.iter().enumerate() {
                    let bf = b.format_of_channel(o);
                    if bf.frac_bits() != fr || bf.grid() != Grid::MidTread {
                        return Err(Error::ShapeMismatch {
                            what: format!("bias format of output channel {o}"),
                            expected: format!("mid-tread with {fr} fractional bits (n_x + n_w)"),
                            found: format!("{bf}"),
                        });
                    }
                }
                b.codes().iter().map(|&v| i64::from(v)).collect()
            }
        };
        // Accumulator bound (module docs): B_o = max|x|·Σ|w| + |b|.
        let xmax = i128::from(max_abs_code(&input_format));
        let mut bound: i128 = 0;
        for o in 0..c_out {
            let wsum: i128 = w[o * k_len..(o + 1) * k_len]
                .iter()
                .map(|v| i128::from(v.abs()))
                .sum();
            bound = bound.max(xmax * wsum + i128::from(bias[o].abs()));
        }
        if bound > 1i128 << 62 {
            return Err(Error::AccumulatorOverflow {
                reason: format!(
                    "max|x|·Σ|w| + |b| = {bound} exceeds 2^62 (input {input_format}, K = {k_len})"
                ),
            });
        }
        let acc_bound = bound as i64;
        let shifts: Vec<i32> = acc_frac
            .iter()
            .map(|f| f - output.format.frac_bits())
            .collect();
        let requant = Requant::new(&shifts, out_range.0, out_range.1);
        let narrow = NarrowBound::of::<A>(&input_format, &w);
        let engine = select_engine::<A, O>(choice, &geom, &w, &bias, acc_bound, wfmt, narrow)?;
        Ok(Self {
            geom,
            input_format,
            output,
            out_range,
            w,
            bias,
            requant,
            acc_bound,
            engine,
            _t: PhantomData,
        })
    }

    /// The kernel this layer selected.
    pub fn kernel(&self) -> KernelId {
        match &self.engine {
            Engine::Reference => KernelId::Reference,
            Engine::Packed(p) => p.id(),
        }
    }

    /// The proven bound max_o (max|x|·Σₖ|w_{o,k}| + |b_o|) on every partial sum (module docs).
    pub fn accumulator_bound(&self) -> i64 {
        self.acc_bound
    }
    /// The input format the layer was prepared for.
    pub fn input_format(&self) -> QFormat {
        self.input_format
    }
    /// The output stage.
    pub fn output_stage(&self) -> OutputStage {
        self.output
    }
    /// Input channels C_in.
    pub fn in_channels(&self) -> usize {
        self.geom.c_in
    }
    /// Output channels C_out.
    pub fn out_channels(&self) -> usize {
        self.geom.c_out
    }

    /// NCHW output shape for an NCHW input shape.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the channel count differs from C_in or the padded input is smaller
    /// than the dilated kernel; [`Error::Unsupported`] if a padded image or the output would hold more
    /// than [`super::MAX_ELEMENTS`] elements.
    pub fn output_shape(&self, input: [usize; 4]) -> Result<[usize; 4]> {
        if input[1] != self.geom.c_in {
            return Err(Error::ShapeMismatch {
                what: "input channels".into(),
                expected: format!("{}", self.geom.c_in),
                found: format!("{}", input[1]),
            });
        }
        let (oh, ow) = self.geom.out_hw(input[0], input[2], input[3])?;
        Ok([input[0], self.geom.c_out, oh, ow])
    }

    /// Runs the layer on NCHW codes, allocating the output and scratch.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x`'s format is not the prepared input format (per-tensor) or its
    /// shape does not fit; [`Error::InvalidArgument`] if a code lies outside the input format.
    pub fn forward(&self, x: &QTensor<A, Ix4>) -> Result<QTensor<O, Ix4>> {
        if x.channel_axis().is_some() || x.format() != self.input_format {
            return Err(Error::ShapeMismatch {
                what: "input format".into(),
                expected: format!("per-tensor {}", self.input_format),
                found: format!("{:?}", x.formats()),
            });
        }
        let shape = self.output_shape(nchw(x.codes().shape()))?;
        let mut out = Array4::<O>::default(shape);
        self.forward_into(x.codes().view(), out.view_mut(), &mut Scratch::new())?;
        QTensor::from_codes(out, self.output.format)
    }

    /// Runs the layer on NCHW codes `x` (in the prepared input format) into NCHW `out`, reusing
    /// `scratch`. `out` must be in standard (C-contiguous) layout.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for wrong input or output shapes; [`Error::InvalidArgument`] for a
    /// non-contiguous `out` or input codes outside the input format.
    pub fn forward_into(
        &self,
        x: ArrayView4<'_, A>,
        out: ArrayViewMut4<'_, O>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        self.run(x, out, scratch, Layout::Nchw)
    }

    /// As [`Conv2d::forward_into`] with NHWC input [N, H, W, C_in] and NHWC output [N, OH, OW, C_out],
    /// so an executor can keep activations NHWC between layers (no transposes).
    ///
    /// # Errors
    /// As [`Conv2d::forward_into`].
    pub fn forward_nhwc_into(
        &self,
        x: ArrayView4<'_, A>,
        out: ArrayViewMut4<'_, O>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        self.run(x, out, scratch, Layout::Nhwc)
    }

    fn run(
        &self,
        x: ArrayView4<'_, A>,
        mut out: ArrayViewMut4<'_, O>,
        scratch: &mut Scratch,
        layout: Layout,
    ) -> Result<()> {
        let xs = nchw(x.shape());
        let (n, c, h, w) = match layout {
            Layout::Nchw => (xs[0], xs[1], xs[2], xs[3]),
            Layout::Nhwc => (xs[0], xs[3], xs[1], xs[2]),
        };
        let [_, co, oh, ow] = self.output_shape([n, c, h, w])?;
        let want = match layout {
            Layout::Nchw => [n, co, oh, ow],
            Layout::Nhwc => [n, oh, ow, co],
        };
        if out.shape() != want {
            return Err(Error::ShapeMismatch {
                what: "output shape".into(),
                expected: format!("{want:?}"),
                found: format!("{:?}", out.shape()),
            });
        }
        let Some(out) = out.as_slice_mut() else {
            return Err(Error::InvalidArgument {
                name: "out",
                reason: "must be in standard (C-contiguous) layout".into(),
            });
        };
        let owned;
        let xsl = match x.as_slice() {
            Some(s) => s,
            None => {
                owned = x.as_standard_layout().into_owned();
                owned.as_slice().unwrap_or(&[])
            }
        };
        let d = CallDims { n, h, w, oh, ow };
        let range = (self.input_format.min_code(), self.input_format.max_code());
        match &self.engine {
            Engine::Reference => self.run_reference(xsl, &d, layout, range, out),
            Engine::Packed(p) => p.run(self, xsl, &d, layout, range, out, scratch),
        }
    }

    fn run_reference(
        &self,
        x: &[A],
        d: &CallDims,
        layout: Layout,
        range: (i64, i64),
        out: &mut [O],
    ) -> Result<()> {
        if let Some(bad) = x
            .iter()
            .map(|v| v.to_code())
            .find(|&v| v < range.0 || v > range.1)
        {
            return Err(Error::InvalidArgument {
                name: "input",
                reason: format!(
                    "code {bad} is outside the input format's {}..={}",
                    range.0, range.1
                ),
            });
        }
        let g = &self.geom;
        let shape = match layout {
            Layout::Nchw => [d.n, g.c_in, d.h, d.w],
            Layout::Nhwc => [d.n, d.h, d.w, g.c_in],
        };
        let view = ArrayView4::from_shape(shape, x).map_err(|e| Error::InvalidArgument {
            name: "input",
            reason: e.to_string(),
        })?;
        let view = match layout {
            Layout::Nchw => view,
            Layout::Nhwc => view.permuted_axes([0, 3, 1, 2]),
        };
        let args = (&self.w[..], &self.bias[..], &self.requant.shift[..]);
        match layout {
            Layout::Nchw => reference::conv2d(
                g,
                view,
                args.0,
                args.1,
                args.2,
                self.out_range,
                (d.oh, d.ow),
                out,
            ),
            Layout::Nhwc => {
                let mut tmp = vec![O::default(); out.len()];
                reference::conv2d(
                    g,
                    view,
                    args.0,
                    args.1,
                    args.2,
                    self.out_range,
                    (d.oh, d.ow),
                    &mut tmp,
                );
                let how = d.oh * d.ow;
                for (i, v) in tmp.into_iter().enumerate() {
                    let (b, rest) = (i / (g.c_out * how), i % (g.c_out * how));
                    let (c, j) = (rest / how, rest % how);
                    out[(b * how + j) * g.c_out + c] = v;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_packed<K: MicroKernel>(
        &self,
        p: &Packed<K>,
        x: &[A],
        d: &CallDims,
        layout: Layout,
        range: (i64, i64),
        out: &mut [O],
        scratch: &mut Scratch,
    ) -> Result<()> {
        let g = &self.geom;
        let mut buf = std::mem::take(K::X::buffer(scratch));
        let mut taps = std::mem::take(&mut scratch.taps);
        let mut pixels = std::mem::take(&mut scratch.pixels);
        let res = p.kernel().in_context(
            #[inline(always)]
            || {
                check_range(x, range)?;
                let chunks = p.fill_taps(g, d.w, &mut taps);
                p.fill_pixels(g, d, &mut pixels);
                let geo = TileGeo::new(&taps, chunks, &pixels);
                // One image at a time: its padded copy stays in cache while the tiles read it.
                let one = CallDims { n: 1, ..*d };
                let per_in = g.c_in * d.h * d.w;
                let per_out = g.c_out * d.oh * d.ow;
                // A batch large enough for threads is split by images (each worker packs its own
                // images): layers too small to split one image still use every core.
                #[cfg(feature = "rayon")]
                if d.n > 1 && self.threads(d) > 1 {
                    use rayon::prelude::*;
                    let per_worker = d.n.div_ceil(self.threads(d));
                    let parts: Vec<(&[A], &mut [O])> = x
                        .chunks(per_in * per_worker)
                        .zip(out.chunks_mut(per_out * per_worker))
                        .collect();
                    return Ok(parts.into_par_iter().try_for_each(|(xs, os)| {
                        p.kernel().in_context(
                            #[inline(always)]
                            || {
                                let mut own = Vec::new();
                                for (xi, oi) in
                                    xs.chunks_exact(per_in).zip(os.chunks_exact_mut(per_out))
                                {
                                    p.pack_input(g, xi, &one, layout, &mut own);
                                    self.drive(p, &geo, &own, &one, layout, oi, 1)?;
                                }
                                Ok::<(), TileOutOfBounds>(())
                            },
                        )
                    })?);
                }
                let threads = self.threads(&one);
                for (xi, oi) in x.chunks_exact(per_in).zip(out.chunks_exact_mut(per_out)) {
                    p.pack_input(g, xi, &one, layout, &mut buf);
                    self.drive(p, &geo, &buf, &one, layout, oi, threads)?;
                }
                Ok(())
            },
        );
        *K::X::buffer(scratch) = buf;
        scratch.taps = taps;
        scratch.pixels = pixels;
        res
    }

    /// Splits the call into work units with disjoint output slices and runs them on `threads`
    /// threads.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn drive<K: MicroKernel>(
        &self,
        p: &Packed<K>,
        geo: &TileGeo<'_>,
        buf: &[K::X],
        d: &CallDims,
        layout: Layout,
        out: &mut [O],
        threads: usize,
    ) -> Result<(), TileOutOfBounds> {
        let g = &self.geom;
        let how = d.oh * d.ow;
        let nb = p.n_blocks(g);
        if threads <= 1 {
            // One unit covering the call: no splitting, no allocation.
            let unit = Unit {
                n: 0,
                j0: 0,
                j1: how,
                b0: 0,
                b1: nb,
            };
            for n in 0..d.n {
                let o = &mut out[n * g.c_out * how..][..g.c_out * how];
                p.run_unit(
                    g,
                    geo,
                    &self.requant,
                    buf,
                    d,
                    layout,
                    Unit { n, ..unit },
                    o,
                    n * g.c_out * how,
                )?;
            }
            return Ok(());
        }
        let mut units: Vec<(Unit, &mut [O], usize)> = Vec::new();
        let mut rest = out;
        let mut base = 0;
        match layout {
            Layout::Nchw => {
                // One unit per (image, channel block): its output channels are contiguous.
                let cog = g.cog();
                for n in 0..d.n {
                    let mut b = 0;
                    while b < nb {
                        let b1 = b + 1;
                        let ch: usize = (b..b1)
                            .map(|bb| p.nr().min(cog - (bb % (nb / g.groups)) * p.nr()))
                            .sum();
                        let (head, tail) = rest.split_at_mut(ch * how);
                        units.push((
                            Unit {
                                n,
                                j0: 0,
                                j1: how,
                                b0: b,
                                b1,
                            },
                            head,
                            base,
                        ));
                        base += ch * how;
                        rest = tail;
                        b = b1;
                    }
                }
            }
            Layout::Nhwc => {
                let parts = (threads * 4).min(how.div_ceil(K::MR)).max(1);
                let step = how.div_ceil(parts);
                for n in 0..d.n {
                    let mut j0 = 0;
                    while j0 < how {
                        let j1 = (j0 + step).min(how);
                        let (head, tail) = rest.split_at_mut((j1 - j0) * g.c_out);
                        units.push((
                            Unit {
                                n,
                                j0,
                                j1,
                                b0: 0,
                                b1: nb,
                            },
                            head,
                            base,
                        ));
                        base += (j1 - j0) * g.c_out;
                        rest = tail;
                        j0 = j1;
                    }
                }
            }
        }
        #[cfg(feature = "rayon")]
        if threads > 1 {
            use rayon::prelude::*;
            // Each worker re-enters the ISA context (target features do not cross threads).
            return units.into_par_iter().try_for_each(|(u, o, b)| {
                p.kernel().in_context(
                    #[inline(always)]
                    || p.run_unit(g, geo, &self.requant, buf, d, layout, u, o, b),
                )
            });
        }
        for (u, o, b) in units {
            p.run_unit(g, geo, &self.requant, buf, d, layout, u, o, b)?;
        }
        Ok(())
    }

    #[cfg(feature = "rayon")]
    fn threads(&self, d: &CallDims) -> usize {
        let g = &self.geom;
        let macs = d.n * d.oh * d.ow * g.c_out * g.cig() * g.kh * g.kw;
        if macs >= PAR_MIN_MACS {
            rayon::current_num_threads()
        } else {
            1
        }
    }

    #[cfg(not(feature = "rayon"))]
    fn threads(&self, _: &CallDims) -> usize {
        1
    }
}

/// Chooses and builds the layer's kernel (module docs, "Kernels"): `Auto` takes the first of
/// [`KernelId::AUTO_ORDER`] that this CPU runs and that fits the layer's codes and accumulator bound.
#[allow(clippy::too_many_arguments)]
fn select_engine<A: Activation8or16, O: Activation8or16>(
    choice: KernelChoice,
    g: &Geom,
    w: &[i64],
    bias: &[i64],
    acc_bound: i64,
    wfmt: &[QFormat],
    narrow: NarrowBound,
) -> Result<Engine<A, O>> {
    let fits_i32 = acc_bound <= i64::from(i32::MAX);
    let wmin = wfmt.iter().map(|f| f.min_code()).min().unwrap_or(0);
    let wmax = wfmt.iter().map(|f| f.max_code()).max().unwrap_or(0);
    let fits = |id: KernelId| match id.codes() {
        KernelCodes::Any => true,
        KernelCodes::U8I8 => fits_i32 && A::MAX <= 255 && wmin >= -128 && wmax <= 127,
        KernelCodes::U8I8Narrow => {
            fits_i32 && A::MAX <= 255 && wmin >= -128 && wmax <= 127 && narrow.i16_steps().is_some()
        }
        KernelCodes::I16I16 => fits_i32 && wmin >= -32768 && wmax <= 32767,
    };
    let want = match choice {
        KernelChoice::Reference => KernelId::Reference,
        KernelChoice::Auto => {
            let allowed = env_kernels();
            KernelId::AUTO_ORDER
                .into_iter()
                .filter(|id| allowed.as_ref().is_none_or(|a| a.contains(id)))
                .find(|&id| id.is_supported() && fits(id))
                .unwrap_or(KernelId::Reference)
        }
        KernelChoice::Force(id) => id,
    };
    if want == KernelId::Reference {
        return Ok(Engine::Reference);
    }
    let unfit = |why: &str| {
        Error::Unsupported(format!(
            "kernel {} cannot run this layer: {why}",
            want.name()
        ))
    };
    if !fits(want) {
        return Err(unfit(if fits_i32 {
            "activation or weight codes too wide"
        } else {
            "the accumulator bound exceeds i32"
        }));
    }
    packed_engine(want, g, w, bias, narrow)
        .map(Engine::Packed)
        .ok_or_else(|| unfit("this CPU lacks its instruction set"))
}

/// What the `vpmaddubsw` kernel's exactness rests on (docs/kernels.md, section 3): the largest
/// packed activation code (the format's largest code plus the +128 bias of i8 storage) and the
/// largest |w| among the layer's actual weight codes (mid-rise weights as 2q+1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NarrowBound {
    pub x_max: u64,
    pub w_max: u64,
}

impl NarrowBound {
    fn of<A: Activation8or16>(input_format: &QFormat, w: &[i64]) -> Self {
        let x_max = (input_format.max_code() + i64::from(A::U8_OFFSET)).max(0);
        let w_max = w.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        Self {
            x_max: x_max as u64,
            w_max,
        }
    }

    /// k-steps whose i16 sums are proven exact, ⌊32,767 / (2·x_max·w_max)⌋ capped at 64; `None` if 0.
    pub(crate) fn i16_steps(&self) -> Option<u32> {
        #[cfg(target_arch = "x86_64")]
        {
            Avx2Maddubs::steps_for(self.x_max, self.w_max)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }
}

/// Rejects codes outside the input format (one vectorizable min/max pass), so the accumulator
/// bound holds for every accepted input.
#[inline(always)]
fn check_range<A: Activation8or16>(x: &[A], range: (i64, i64)) -> Result<()> {
    let Some(&first) = x.first() else {
        return Ok(());
    };
    // Folded in the storage type (8- or 16-bit lanes), widened once at the end.
    let (mn, mx) = x
        .iter()
        .fold((first, first), |(mn, mx), &v| (mn.min(v), mx.max(v)));
    let (mn, mx) = (mn.to_code(), mx.to_code());
    if mn < range.0 || mx > range.1 {
        return Err(Error::InvalidArgument {
            name: "input",
            reason: format!(
                "codes span {mn}..={mx}, outside the input format's {}..={}",
                range.0, range.1
            ),
        });
    }
    Ok(())
}

fn nchw(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

/// The accumulator formats a bias must use, one per output channel: signed 32-bit with
/// n_x + n_w(o) fractional bits, mid-rise weights counted as their 2q+1 format. Shared by
/// [`Conv2d::bias_formats`], [`super::Dense::bias_formats`] and the fixed-point network.
pub(crate) fn bias_formats_of<W: Storage, D: RemoveAxis>(
    weights: &QTensor<W, D>,
    input_format: QFormat,
) -> Result<Vec<QFormat>> {
    let shape = weights.codes().shape();
    if shape.contains(&0) {
        // Also bounds the allocation below: a zero-size tensor may claim 2^40 output channels.
        return Err(Error::InvalidArgument {
            name: "weights shape",
            reason: format!("expected no zero size, found {shape:?}"),
        });
    }
    if let Some(axis) = weights.channel_axis()
        && axis != 0
    {
        return Err(Error::Unsupported(format!(
            "per-channel weight formats along axis {axis}; only axis 0 (output channel) is supported"
        )));
    }
    (0..shape[0])
        .map(|o| {
            let f = weights.format_of_channel(o).as_mid_tread_odd()?;
            QFormat::signed(32, input_format.frac_bits() + f.frac_bits())
        })
        .collect()
}

/// Effective weight codes (mid-rise as 2q+1) and formats, one per output channel.
pub(crate) fn effective_weights<W: WeightStorage, D: RemoveAxis>(
    weights: &QTensor<W, D>,
) -> Result<(Vec<i64>, Vec<QFormat>)> {
    let c_out = weights.codes().shape()[0];
    if let Some(axis) = weights.channel_axis()
        && axis != 0
    {
        return Err(Error::Unsupported(format!(
            "per-channel weight formats along axis {axis}; only axis 0 (output channel) is supported"
        )));
    }
    let fmts: Vec<QFormat> = (0..c_out).map(|o| weights.format_of_channel(o)).collect();
    let eff: Vec<QFormat> = fmts
        .iter()
        .map(|f| f.as_mid_tread_odd())
        .collect::<Result<_>>()?;
    let per = weights.codes().len() / c_out.max(1);
    let codes = weights.codes().as_standard_layout();
    let w = codes
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let q = q.to_code();
            if fmts[i / per].grid() == Grid::MidRise {
                2 * q + 1
            } else {
                q
            }
        })
        .collect();
    Ok((w, eff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixq_kernel_lists_name_the_kernels_auto_may_take() {
        assert_eq!(kernel_list(""), None);
        assert_eq!(kernel_list(" , "), None);
        assert_eq!(kernel_list("reference"), Some(vec![KernelId::Reference]));
        assert_eq!(kernel_list("REFERENCE"), Some(vec![KernelId::Reference]));
        assert_eq!(kernel_list("no-such-kernel"), Some(vec![]));
        assert_eq!(
            kernel_list("x86_64-u8i8i16-avx2, x86_64-i16i16i32-avx2,x86_64-u8i8i32-avx2"),
            Some(vec![
                KernelId::Avx2I16I16,
                KernelId::Avx2U8I8,
                KernelId::Avx2U8I8I16
            ])
        );
    }

    #[test]
    fn maddubs_steps_follow_the_bound() {
        let b = |x_max, w_max| NarrowBound { x_max, w_max }.i16_steps();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(b(255, 64), Some(1)); // 2·255·64 = 32,640
            assert_eq!(b(255, 65), None); // 33,150 would saturate
            assert_eq!(b(255, 32), Some(2));
            assert_eq!(b(255, 8), Some(8)); // 8·4,080 = 32,640
            assert_eq!(b(255, 1), Some(64)); // capped
            assert_eq!(b(15, 128), Some(8)); // 4-bit activations, 8-bit weights
            assert_eq!(b(0, 0), Some(64));
            assert_eq!(b(u64::MAX, u64::MAX), None);
        } else {
            assert_eq!(b(255, 8), None);
        }
    }
}
