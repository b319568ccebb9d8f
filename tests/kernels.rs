//! Every kernel this CPU can run against the scalar reference (bit-exact, `assert_eq!`), the float
//! agreement of the integer arithmetic, and the ISA paths that must have run on this machine.

use std::collections::BTreeSet;
use std::sync::Mutex;

use fixq::kernels::{
    Activation, Activation8or16, Conv2d, Conv2dParams, Dense, KernelChoice, KernelId, OutputStage,
    Scratch, WeightStorage,
};
use fixq::{Error, QFormat, QTensor, Storage};
use ndarray::{Array1, Array2, Array4};
use proptest::prelude::*;

/// Kernels that produced a compared result in this test binary.
static RAN: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

fn note(id: KernelId) {
    if let Ok(mut s) = RAN.lock() {
        s.insert(id.name());
    }
}

/// A small deterministic generator for codes (the geometry comes from proptest).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A code in [lo, hi], one in four at an extreme.
    fn code(&mut self, lo: i64, hi: i64) -> i64 {
        match self.next() % 8 {
            0 => lo,
            1 => hi,
            _ => lo + (self.next() % (hi - lo + 1) as u64) as i64,
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    groups: usize,
    cig: usize,
    cog: usize,
    k: [usize; 2],
    stride: usize,
    dil: usize,
    pad: [usize; 4],
    h: usize,
    w: usize,
    in_bits: u32,
    in_frac: i32,
    w_bits: u32,
    w_fracs: Vec<i32>,
    mid_rise: bool,
    out_bits: u32,
    out_frac: i32,
    act: u8,
    bias: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            1usize..=2,
            1usize..=3,
            1usize..=6,
            1usize..=7,
            1usize..=3,
            1usize..=3,
        ),
        (
            1usize..=2,
            1usize..=2,
            proptest::array::uniform4(0usize..=2),
            0usize..=5,
            0usize..=5,
        ),
        (
            2u32..=16,
            -3i32..=6,
            2u32..=16,
            proptest::collection::vec(-2i32..=7, 1..=4),
            any::<bool>(),
        ),
        (2u32..=16, -4i32..=10, 0u8..=2, any::<bool>(), any::<u64>()),
    )
        .prop_map(|(a, b, c, d)| {
            let (n, groups, cig, cog, kh, kw) = a;
            let (stride, dil, pad, dh, dw) = b;
            let (in_bits, in_frac, w_bits, w_fracs, mid_rise) = c;
            let (out_bits, out_frac, act, bias, seed) = d;
            let eh = dil * (kh - 1) + 1;
            let ew = dil * (kw - 1) + 1;
            Case {
                n,
                groups,
                cig,
                cog,
                k: [kh, kw],
                stride,
                dil,
                pad,
                h: eh.saturating_sub(pad[0] + pad[2]).max(1) + dh,
                w: ew.saturating_sub(pad[1] + pad[3]).max(1) + dw,
                in_bits,
                in_frac,
                w_bits,
                w_fracs,
                mid_rise,
                out_bits,
                out_frac,
                act,
                bias,
                seed,
            }
        })
}

/// `bits` capped to what storage `T` holds (16 or 8), at least 2.
fn storage_bits<T: Storage>(bits: u32) -> u32 {
    bits.min(if T::MAX > 255 { 16 } else { 8 }).max(2)
}

fn act_format<A: Storage>(bits: u32, frac: i32) -> QFormat {
    if A::MIN == 0 {
        QFormat::unsigned(bits.min(8), frac).unwrap()
    } else {
        QFormat::signed(storage_bits::<A>(bits), frac).unwrap()
    }
}

fn random_codes<T: Storage>(g: &mut Gen, len: usize, f: &QFormat) -> Vec<T> {
    (0..len)
        .map(|_| T::from_code(g.code(f.min_code(), f.max_code())))
        .collect()
}

/// Builds the layer with every kernel that can run it and checks they all equal the reference.
fn check_conv<A: Activation8or16, W: WeightStorage, O: Activation8or16 + PartialEq>(c: &Case) {
    let mut g = Gen(c.seed);
    let c_in = c.cig * c.groups;
    let c_out = c.cog * c.groups;
    let fin = act_format::<A>(c.in_bits, c.in_frac);
    let wbits = storage_bits::<W>(c.w_bits);
    let wfmts: Vec<QFormat> = (0..c_out)
        .map(|o| {
            let fr = c.w_fracs[o % c.w_fracs.len()];
            if c.mid_rise {
                QFormat::mid_rise(wbits, fr).unwrap()
            } else {
                QFormat::signed(wbits, fr).unwrap()
            }
        })
        .collect();
    let per = c.cig * c.k[0] * c.k[1];
    let mut wcodes = Vec::with_capacity(c_out * per);
    for f in &wfmts {
        wcodes.extend(random_codes::<W>(&mut g, per, f));
    }
    let wt = QTensor::from_codes_per_channel(
        Array4::from_shape_vec((c_out, c.cig, c.k[0], c.k[1]), wcodes).unwrap(),
        0,
        wfmts,
    )
    .unwrap();
    let bias = c.bias.then(|| {
        let bf = Conv2d::<A, O>::bias_formats(&wt, fin).unwrap();
        let codes: Vec<i32> = (0..c_out).map(|_| g.code(-5000, 5000) as i32).collect();
        QTensor::from_codes_per_channel(Array1::from(codes), 0, bf).unwrap()
    });
    let fout = act_format::<O>(c.out_bits, c.out_frac);
    let act = match c.act {
        0 => Activation::Identity,
        1 => Activation::Relu,
        _ => Activation::Clip {
            min: fout.min_code() / 2,
            max: fout.max_code() / 2 + 1,
        },
    };
    let stage = OutputStage::new(fout).with_activation(act);
    let params = Conv2dParams {
        stride: [c.stride, c.stride],
        padding: c.pad,
        dilation: [c.dil, c.dil],
        groups: c.groups,
    };
    let xs = random_codes::<A>(&mut g, c.n * c_in * c.h * c.w, &fin);
    let x = QTensor::from_codes(
        Array4::from_shape_vec((c.n, c_in, c.h, c.w), xs).unwrap(),
        fin,
    )
    .unwrap();
    let reference = Conv2d::<A, O>::new(
        &wt,
        bias.as_ref(),
        fin,
        stage,
        params,
        KernelChoice::Reference,
    )
    .unwrap();
    let want = reference.forward(&x).unwrap();
    note(KernelId::Reference);
    let x_nhwc = x
        .codes()
        .view()
        .permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .into_owned();
    let mut scratch = Scratch::new();
    for id in KernelId::ALL {
        let layer = match Conv2d::<A, O>::new(
            &wt,
            bias.as_ref(),
            fin,
            stage,
            params,
            KernelChoice::Force(id),
        ) {
            Ok(l) => l,
            Err(Error::Unsupported(_)) => continue,
            Err(e) => panic!("{id}: {e}"),
        };
        assert_eq!(layer.kernel(), id);
        let got = layer.forward(&x).unwrap();
        assert_eq!(got.codes(), want.codes(), "kernel {id}, case {c:?}");
        // NHWC entry point, same scratch reused across kernels.
        let s = want.codes().shape();
        let mut out = Array4::<O>::default((s[0], s[2], s[3], s[1]));
        layer
            .forward_nhwc_into(x_nhwc.view(), out.view_mut(), &mut scratch)
            .unwrap();
        assert_eq!(
            out.permuted_axes([0, 3, 1, 2]),
            want.codes(),
            "NHWC kernel {id}"
        );
        note(id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn conv_u8_i8(c in case()) { check_conv::<u8, i8, u8>(&c); }
    #[test]
    fn conv_i8_i8(c in case()) { check_conv::<i8, i8, i8>(&c); }
    #[test]
    fn conv_i16_i8(c in case()) { check_conv::<i16, i8, i16>(&c); }
    #[test]
    fn conv_u8_i16(c in case()) { check_conv::<u8, i16, i8>(&c); }
    #[test]
    fn conv_i8_i16(c in case()) { check_conv::<i8, i16, u8>(&c); }
    #[test]
    fn conv_i16_i16(c in case()) { check_conv::<i16, i16, i16>(&c); }

    #[test]
    fn dense_matches_reference(n in 1usize..=9, k in 1usize..=70, m in 1usize..=40, seed in any::<u64>(),
                               out_frac in -2i32..=9) {
        let mut g = Gen(seed);
        let fin = QFormat::unsigned(8, 4).unwrap();
        let fw = QFormat::signed(8, 6).unwrap();
        let w = QTensor::from_codes(Array2::from_shape_vec((m, k), random_codes::<i8>(&mut g, m * k, &fw)).unwrap(), fw).unwrap();
        let x = QTensor::from_codes(Array2::from_shape_vec((n, k), random_codes::<u8>(&mut g, n * k, &fin)).unwrap(), fin).unwrap();
        let stage = OutputStage::new(QFormat::signed(8, out_frac).unwrap());
        let want = Dense::<u8, i8>::new(&w, None, fin, stage, KernelChoice::Reference).unwrap().forward(&x).unwrap();
        for id in KernelId::ALL {
            let Ok(d) = Dense::<u8, i8>::new(&w, None, fin, stage, KernelChoice::Force(id)) else { continue };
            let got = d.forward(&x).unwrap();
            prop_assert_eq!(got.codes(), want.codes(), "kernel {}", id);
            note(id);
        }
    }
}

/// Named regression cases: the extremes, depthwise, dilation with stride 2, a 16-channel tail.
#[test]
fn named_cases() {
    let base = Case {
        n: 2,
        groups: 1,
        cig: 5,
        cog: 19,
        k: [3, 3],
        stride: 2,
        dil: 2,
        pad: [1, 2, 0, 1],
        h: 9,
        w: 7,
        in_bits: 8,
        in_frac: 3,
        w_bits: 8,
        w_fracs: vec![5, 6, 7],
        mid_rise: false,
        out_bits: 8,
        out_frac: 2,
        act: 0,
        bias: true,
        seed: 42,
    };
    check_conv::<u8, i8, u8>(&base);
    check_conv::<i8, i8, i8>(&base);
    let depthwise = Case {
        groups: 8,
        cig: 1,
        cog: 1,
        stride: 1,
        dil: 1,
        ..base.clone()
    };
    check_conv::<u8, i8, u8>(&depthwise);
    check_conv::<i16, i16, i16>(&depthwise);
    let mid_rise = Case {
        mid_rise: true,
        w_bits: 4,
        out_frac: -3,
        ..base.clone()
    };
    check_conv::<i8, i8, i16>(&mid_rise);
    // Negative shift (left shift) and a 4-bit output saturating at -8..=7.
    let left = Case {
        in_frac: -2,
        w_fracs: vec![-2],
        out_frac: 1,
        out_bits: 4,
        ..base
    };
    check_conv::<i8, i8, i8>(&left);
}

/// All-extreme inputs: every activation and weight at its most negative / most positive code.
#[test]
fn extremes_are_exact() {
    for (xv, wv) in [(255u8, 127i8), (255, -128), (0, -128)] {
        let fin = QFormat::unsigned(8, 0).unwrap();
        let fw = QFormat::signed(8, 0).unwrap();
        let w = QTensor::from_codes(Array4::from_elem((33, 17, 3, 3), wv), fw).unwrap();
        let x = QTensor::from_codes(Array4::from_elem((1, 17, 5, 6), xv), fin).unwrap();
        let stage = OutputStage::new(QFormat::signed(16, -8).unwrap());
        let p = Conv2dParams::new().with_padding(1);
        let want = Conv2d::<u8, i16>::new(&w, None, fin, stage, p, KernelChoice::Reference)
            .unwrap()
            .forward(&x)
            .unwrap();
        // Centre pixel: 17·9 taps of xv·wv, shifted right by 8, ties toward +inf.
        let exact = 17 * 9 * i64::from(xv) * i64::from(wv);
        assert_eq!(
            i64::from(want.codes()[[0, 0, 2, 2]]),
            (exact + 128).div_euclid(256)
        );
        for id in KernelId::ALL {
            let Ok(l) = Conv2d::<u8, i16>::new(&w, None, fin, stage, p, KernelChoice::Force(id))
            else {
                continue;
            };
            assert_eq!(l.forward(&x).unwrap().codes(), want.codes(), "{id}");
        }
    }
}

/// The `vpmaddubsw` kernel at the edges of its proven bound (docs/kernels.md, section 3): every
/// activation at the top of its packed range and every weight at ±w_max, over long reductions
/// (C_in = 70, 3×3: 158 k-steps, so many full i16 groups and a partial last one), for u8 and i8
/// (biased +128) activations. A pair sum reaches 2·255·64 = 32,640 at w_max = 64 (one step per
/// group), and a group of 8 steps reaches 8·2·255·8 = 32,640 at w_max = 8.
#[test]
fn maddubs_at_its_bound_is_exact() {
    let id = KernelId::Avx2U8I8I16;
    let cases: [(i64, i64); 6] = [
        (255, 64),
        (255, -64),
        (255, 8),
        (255, -8),
        (0, -64),
        (255, 1),
    ];
    for (xv, wv) in cases {
        let fw = QFormat::signed(8, 0).unwrap();
        let w = QTensor::from_codes(Array4::from_elem((19, 70, 3, 3), wv as i8), fw).unwrap();
        let stage = OutputStage::new(QFormat::signed(16, -10).unwrap());
        let p = Conv2dParams::new().with_padding(1);
        // u8 activations: x = xv.
        let fin = QFormat::unsigned(8, 0).unwrap();
        let x = QTensor::from_codes(Array4::from_elem((2, 70, 4, 5), xv as u8), fin).unwrap();
        let want = Conv2d::<u8, i16>::new(&w, None, fin, stage, p, KernelChoice::Reference)
            .unwrap()
            .forward(&x)
            .unwrap();
        let exact = 70 * 9 * xv * wv;
        assert_eq!(
            i64::from(want.codes()[[0, 0, 2, 2]]),
            (exact + 512).div_euclid(1024)
        );
        match Conv2d::<u8, i16>::new(&w, None, fin, stage, p, KernelChoice::Force(id)) {
            Ok(l) => {
                assert_eq!(l.kernel(), id);
                assert_eq!(l.forward(&x).unwrap().codes(), want.codes(), "u8 {xv}·{wv}");
                note(id);
            }
            Err(Error::Unsupported(m)) => {
                assert!(!id.is_supported(), "{m}");
                assert!(m.contains("instruction set"), "{m}");
            }
            Err(e) => panic!("{e}"),
        }
        // i8 activations: packed as x + 128, so 127 packs to 255 and -128 to 0.
        let fin8 = QFormat::signed(8, 0).unwrap();
        let x8 =
            QTensor::from_codes(Array4::from_elem((2, 70, 4, 5), (xv - 128) as i8), fin8).unwrap();
        let want8 = Conv2d::<i8, i16>::new(&w, None, fin8, stage, p, KernelChoice::Reference)
            .unwrap()
            .forward(&x8)
            .unwrap();
        if let Ok(l) = Conv2d::<i8, i16>::new(&w, None, fin8, stage, p, KernelChoice::Force(id)) {
            assert_eq!(
                l.forward(&x8).unwrap().codes(),
                want8.codes(),
                "i8 {xv}·{wv}"
            );
        }
    }
}

/// The `vpmaddubsw` kernel is chosen from the layer's actual codes: one weight of 65 against 8-bit
/// activations could saturate a pair (2·255·65 = 33,150 > 32,767), so it is refused and `Auto` takes
/// the `vpmaddwd` kernel; 4-bit activations (x ≤ 15) make even |w| = 128 safe.
#[test]
fn maddubs_is_chosen_from_the_actual_codes() {
    let id = KernelId::Avx2U8I8I16;
    let fw = QFormat::signed(8, 0).unwrap();
    let mut codes = Array4::<i8>::from_elem((16, 8, 3, 3), 3);
    codes[[5, 2, 1, 1]] = 65;
    let w = QTensor::from_codes(codes.clone(), fw).unwrap();
    let st = OutputStage::new(QFormat::signed(16, 0).unwrap());
    let p = Conv2dParams::new();
    let fin = QFormat::unsigned(8, 0).unwrap();
    let err = Conv2d::<u8, i16>::new(&w, None, fin, st, p, KernelChoice::Force(id)).unwrap_err();
    let Error::Unsupported(m) = err else {
        panic!("{err}")
    };
    assert!(m.contains("x86_64-u8i8i16-avx2"), "{m}");
    assert!(m.contains("too wide"), "{m}");
    let auto = Conv2d::<u8, i16>::new(&w, None, fin, st, p, KernelChoice::Auto).unwrap();
    assert_ne!(auto.kernel(), id);
    // 64 fits; 4-bit activations let -128 fit too.
    codes[[5, 2, 1, 1]] = 64;
    let w64 = QTensor::from_codes(codes.clone(), fw).unwrap();
    let fin4 = QFormat::unsigned(4, 0).unwrap();
    codes[[5, 2, 1, 1]] = -128;
    let w128 = QTensor::from_codes(codes, fw).unwrap();
    for (w, fin) in [(&w64, fin), (&w128, fin4)] {
        let x = QTensor::from_codes(
            Array4::from_shape_fn((1, 8, 6, 6), |(_, c, y, x)| {
                (fin.max_code() - ((c + 3 * y + 5 * x) % 7) as i64) as u8
            }),
            fin,
        )
        .unwrap();
        let want = Conv2d::<u8, i16>::new(w, None, fin, st, p, KernelChoice::Reference)
            .unwrap()
            .forward(&x)
            .unwrap();
        match Conv2d::<u8, i16>::new(w, None, fin, st, p, KernelChoice::Force(id)) {
            Ok(l) => assert_eq!(l.forward(&x).unwrap().codes(), want.codes()),
            Err(e) => assert!(!id.is_supported(), "{e}"),
        }
    }
}

/// Float agreement: the dequantized output is within half an output LSB (one rounding) of the float
/// convolution of the dequantized inputs, when nothing saturates.
#[test]
fn agrees_with_float_within_one_lsb() {
    let mut g = Gen(7);
    let (n, ci, co, h, w) = (2, 6, 10, 7, 8);
    let fin = QFormat::unsigned(8, 5).unwrap();
    let fws: Vec<QFormat> = (0..co)
        .map(|o| QFormat::signed(6, 5 + (o % 3) as i32).unwrap())
        .collect();
    let mut wc = Vec::new();
    for f in &fws {
        wc.extend(random_codes::<i8>(&mut g, ci * 9, f));
    }
    let wt = QTensor::from_codes_per_channel(
        Array4::from_shape_vec((co, ci, 3, 3), wc).unwrap(),
        0,
        fws,
    )
    .unwrap();
    let bf = Conv2d::<u8, i16>::bias_formats(&wt, fin).unwrap();
    let bias = QTensor::from_codes_per_channel(
        Array1::from_iter((0..co).map(|o| (o as i32 - 5) * 1000)),
        0,
        bf,
    )
    .unwrap();
    let x = QTensor::from_codes(
        Array4::from_shape_vec(
            (n, ci, h, w),
            random_codes::<u8>(&mut g, n * ci * h * w, &fin),
        )
        .unwrap(),
        fin,
    )
    .unwrap();
    let fout = QFormat::signed(16, 6).unwrap();
    let p = Conv2dParams::new().with_padding(1).with_stride(2);
    let conv = Conv2d::<u8, i16>::new(
        &wt,
        Some(&bias),
        fin,
        OutputStage::new(fout),
        p,
        KernelChoice::Auto,
    )
    .unwrap();
    let y = conv.forward(&x).unwrap().dequantize();
    let (xd, wd, bd) = (x.dequantize(), wt.dequantize(), bias.dequantize());
    let lsb = fout.step();
    for ((b, o, oy, ox), &yv) in y.indexed_iter() {
        let mut s = f64::from(bd[o]);
        for c in 0..ci {
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                        s += f64::from(xd[[b, c, iy as usize, ix as usize]])
                            * f64::from(wd[[o, c, ky, kx]]);
                    }
                }
            }
        }
        assert!(s.abs() < fout.max_value(), "test must not saturate");
        assert!(
            (f64::from(yv) - s).abs() <= 0.5 * lsb + 1e-12,
            "{yv} vs {s}"
        );
    }
}

/// The accumulator rule: a layer whose bound exceeds i32 runs the 64-bit reference, and stays exact.
#[test]
fn wide_accumulator_falls_back_to_i64() {
    let fin = QFormat::signed(16, 0).unwrap();
    let fw = QFormat::signed(16, 0).unwrap();
    let w = QTensor::from_codes(Array4::from_elem((2, 4, 3, 3), i16::MIN), fw).unwrap();
    let x = QTensor::from_codes(Array4::from_elem((1, 4, 3, 3), i16::MIN), fin).unwrap();
    let stage = OutputStage::new(QFormat::signed(16, -30).unwrap());
    let conv = Conv2d::<i16, i16>::new(
        &w,
        None,
        fin,
        stage,
        Conv2dParams::new(),
        KernelChoice::Auto,
    )
    .unwrap();
    assert_eq!(conv.kernel(), KernelId::Reference);
    assert_eq!(conv.accumulator_bound(), 36 * (1i64 << 30));
    // 36 · 2^30 · 2^-30 = 36.
    assert_eq!(conv.forward(&x).unwrap().codes()[[0, 0, 0, 0]], 36);
    let forced = Conv2d::<i16, i16>::new(
        &w,
        None,
        fin,
        stage,
        Conv2dParams::new(),
        KernelChoice::Force(KernelId::PortableI16I16),
    );
    assert!(matches!(forced, Err(Error::Unsupported(_))));
}

#[test]
fn errors_are_reported() {
    let fin = QFormat::unsigned(8, 0).unwrap();
    let fw = QFormat::signed(8, 0).unwrap();
    let w = QTensor::from_codes(Array4::<i8>::ones((4, 3, 3, 3)), fw).unwrap();
    let st = OutputStage::new(QFormat::unsigned(8, 0).unwrap());
    let p = Conv2dParams::new();
    // Groups that do not divide C_out.
    assert!(matches!(
        Conv2d::<u8, u8>::new(&w, None, fin, st, p.with_groups(3), KernelChoice::Auto),
        Err(Error::ShapeMismatch { .. })
    ));
    // Zero stride.
    assert!(matches!(
        Conv2d::<u8, u8>::new(&w, None, fin, st, p.with_stride(0), KernelChoice::Auto),
        Err(Error::InvalidArgument { .. })
    ));
    // Output format wider than storage.
    let wide = OutputStage::new(QFormat::signed(16, 0).unwrap());
    assert!(Conv2d::<u8, i8>::new(&w, None, fin, wide, p, KernelChoice::Auto).is_err());
    // Bias in the wrong format.
    let b = QTensor::from_codes(Array1::<i32>::zeros(4), QFormat::signed(32, 3).unwrap()).unwrap();
    assert!(matches!(
        Conv2d::<u8, u8>::new(&w, Some(&b), fin, st, p, KernelChoice::Auto),
        Err(Error::ShapeMismatch { .. })
    ));
    let conv = Conv2d::<u8, u8>::new(&w, None, fin, st, p, KernelChoice::Auto).unwrap();
    // Wrong channel count, too small an input, wrong input format.
    let x = QTensor::from_codes(Array4::<u8>::zeros((1, 2, 5, 5)), fin).unwrap();
    assert!(matches!(conv.forward(&x), Err(Error::ShapeMismatch { .. })));
    let x = QTensor::from_codes(Array4::<u8>::zeros((1, 3, 2, 5)), fin).unwrap();
    assert!(matches!(conv.forward(&x), Err(Error::ShapeMismatch { .. })));
    let x = QTensor::from_codes(
        Array4::<u8>::zeros((1, 3, 5, 5)),
        QFormat::unsigned(8, 1).unwrap(),
    )
    .unwrap();
    assert!(matches!(conv.forward(&x), Err(Error::ShapeMismatch { .. })));
    // Codes outside a 4-bit input format are rejected at run time.
    let fin4 = QFormat::unsigned(4, 0).unwrap();
    let conv4 = Conv2d::<u8, u8>::new(&w, None, fin4, st, p, KernelChoice::Auto).unwrap();
    let mut out = Array4::<u8>::zeros((1, 4, 3, 3));
    let xs = Array4::<u8>::from_elem((1, 3, 5, 5), 200);
    assert!(matches!(
        conv4.forward_into(xs.view(), out.view_mut(), &mut Scratch::new()),
        Err(Error::InvalidArgument { .. })
    ));
    // Wrong output shape.
    let mut bad = Array4::<u8>::zeros((1, 4, 3, 4));
    let xs = Array4::<u8>::zeros((1, 3, 5, 5));
    assert!(matches!(
        conv.forward_into(xs.view(), bad.view_mut(), &mut Scratch::new()),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// The ISA paths that must run on this machine really ran (CI cannot silently skip them).
///
/// Every kernel the CPU supports is exercised here against the reference. `FIXQ_REQUIRE_KERNELS`
/// (comma-separated names, e.g. `x86_64-u8i8i32-avx512vnni`) makes the test fail if a listed kernel
/// is not supported, so a CI runner that lost its ISA fails instead of skipping.
#[test]
fn isa_paths_ran() {
    let c = Case {
        n: 1,
        groups: 1,
        cig: 20,
        cog: 40,
        k: [3, 3],
        stride: 1,
        dil: 1,
        pad: [1; 4],
        h: 6,
        w: 7,
        in_bits: 8,
        in_frac: 0,
        w_bits: 8,
        w_fracs: vec![6],
        mid_rise: false,
        out_bits: 8,
        out_frac: 0,
        act: 1,
        bias: true,
        seed: 3,
    };
    check_conv::<u8, i8, u8>(&c);
    check_conv::<i16, i16, i16>(&Case {
        in_bits: 12,
        w_bits: 12,
        out_bits: 16,
        ..c.clone()
    });
    let ran = RAN.lock().map(|s| s.clone()).unwrap_or_default();
    for id in KernelId::ALL {
        if id.is_supported() {
            assert!(ran.contains(id.name()), "{id} is supported but did not run");
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        assert_eq!(KernelId::Avx2I16I16.is_supported(), avx2);
        assert_eq!(KernelId::Avx2U8I8.is_supported(), avx2);
        let vnni = std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw");
        assert_eq!(KernelId::Avx512VnniU8I8.is_supported(), vnni);
        // Auto takes the best path this CPU has.
        let fin = QFormat::unsigned(8, 0).unwrap();
        let w = QTensor::from_codes(
            Array4::<i8>::ones((4, 3, 3, 3)),
            QFormat::signed(8, 0).unwrap(),
        )
        .unwrap();
        let st = OutputStage::new(QFormat::unsigned(8, 0).unwrap());
        let auto =
            Conv2d::<u8, u8>::new(&w, None, fin, st, Conv2dParams::new(), KernelChoice::Auto)
                .unwrap();
        assert_eq!(KernelId::Avx2U8I8I16.is_supported(), avx2);
        let expect = if vnni {
            KernelId::Avx512VnniU8I8
        } else if avx2 {
            // Weights of ones: 2·255·1 ≤ 32,767, so the `vpmaddubsw` kernel fits.
            KernelId::Avx2U8I8I16
        } else {
            KernelId::PortableU8I8
        };
        if std::env::var("FIXQ_KERNEL").is_err() {
            assert_eq!(auto.kernel(), expect);
        }
        eprintln!("kernels run on this CPU: {ran:?}");
    }
    if let Ok(req) = std::env::var("FIXQ_REQUIRE_KERNELS") {
        for name in req.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let id = KernelId::ALL
                .iter()
                .find(|k| k.name() == name)
                .unwrap_or_else(|| panic!("unknown kernel {name}"));
            assert!(
                id.is_supported(),
                "required kernel {name} is not supported on this CPU"
            );
            assert!(ran.contains(name), "required kernel {name} did not run");
        }
    }
}

/// Scratch reuse across calls and layers does not change results.
#[test]
fn scratch_reuse() {
    let fin = QFormat::signed(8, 0).unwrap();
    let w = QTensor::from_codes(
        Array4::<i8>::from_elem((8, 4, 3, 3), -3),
        QFormat::signed(8, 0).unwrap(),
    )
    .unwrap();
    let st = OutputStage::new(QFormat::signed(8, 2).unwrap());
    let conv = Conv2d::<i8, i8>::new(
        &w,
        None,
        fin,
        st,
        Conv2dParams::new().with_padding(1),
        KernelChoice::Auto,
    )
    .unwrap();
    let mut s = Scratch::new();
    let mut first = None;
    for hw in [9usize, 4, 9] {
        let x = Array4::<i8>::from_elem((1, 4, hw, hw), -7);
        let mut out = Array4::<i8>::zeros((1, 8, hw, hw));
        conv.forward_into(x.view(), out.view_mut(), &mut s).unwrap();
        if hw == 9 {
            match &first {
                None => first = Some(out),
                Some(f) => assert_eq!(f, &out),
            }
        }
    }
}

/// A layer above the threading threshold (4M MACs): with `--features rayon` the Auto kernel runs the
/// parallel split (NCHW by channel block, NHWC by pixel range) and must still equal the reference.
#[test]
fn large_layer_parallel_split_is_exact() {
    let mut g = Gen(11);
    let (ci, co, h, w) = (64, 64, 11, 10);
    let fin = QFormat::unsigned(8, 3).unwrap();
    let fw = QFormat::signed(8, 6).unwrap();
    let wt = QTensor::from_codes(
        Array4::from_shape_vec((co, ci, 3, 3), random_codes::<i8>(&mut g, co * ci * 9, &fw))
            .unwrap(),
        fw,
    )
    .unwrap();
    let x = Array4::from_shape_vec((1, ci, h, w), random_codes::<u8>(&mut g, ci * h * w, &fin))
        .unwrap();
    let st = OutputStage::new(QFormat::unsigned(8, 2).unwrap()).with_activation(Activation::Relu);
    let p = Conv2dParams::new().with_padding(1);
    let reference = Conv2d::<u8, u8>::new(&wt, None, fin, st, p, KernelChoice::Reference).unwrap();
    let auto = Conv2d::<u8, u8>::new(&wt, None, fin, st, p, KernelChoice::Auto).unwrap();
    let mut s = Scratch::new();
    let mut want = Array4::<u8>::zeros((1, co, h, w));
    reference
        .forward_into(x.view(), want.view_mut(), &mut s)
        .unwrap();
    let mut got = Array4::<u8>::zeros((1, co, h, w));
    auto.forward_into(x.view(), got.view_mut(), &mut s).unwrap();
    assert_eq!(got, want, "{}", auto.kernel());
    let xn = x
        .view()
        .permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .into_owned();
    let mut got = Array4::<u8>::zeros((1, h, w, co));
    auto.forward_nhwc_into(xn.view(), got.view_mut(), &mut s)
        .unwrap();
    assert_eq!(
        got.permuted_axes([0, 3, 1, 2]),
        want,
        "{} NHWC",
        auto.kernel()
    );
}

/// Batches whose total work crosses the threading threshold are split by images (with the `rayon`
/// feature): bit-exact against the reference, NCHW and NHWC, for a layer too small to split one
/// image (16 channels, 16×16, 13 images: 0.6M MACs each, 7.7M in all) and one large enough
/// (64 channels, 11×10, 5 images), with an image count that does not divide evenly.
#[test]
fn batches_split_by_images_are_exact() {
    for (ci, co, h, w, n, seed) in [(16, 16, 16, 16, 13, 21), (64, 64, 11, 10, 5, 22)] {
        let mut g = Gen(seed);
        let fin = QFormat::unsigned(8, 3).unwrap();
        let fw = QFormat::signed(7, 5).unwrap();
        let wt = QTensor::from_codes(
            Array4::from_shape_vec((co, ci, 3, 3), random_codes::<i8>(&mut g, co * ci * 9, &fw))
                .unwrap(),
            fw,
        )
        .unwrap();
        let x = Array4::from_shape_vec(
            (n, ci, h, w),
            random_codes::<u8>(&mut g, n * ci * h * w, &fin),
        )
        .unwrap();
        let st = OutputStage::new(QFormat::signed(8, 1).unwrap());
        let p = Conv2dParams::new().with_padding(1);
        let reference =
            Conv2d::<u8, i8>::new(&wt, None, fin, st, p, KernelChoice::Reference).unwrap();
        let auto = Conv2d::<u8, i8>::new(&wt, None, fin, st, p, KernelChoice::Auto).unwrap();
        let mut s = Scratch::new();
        let mut want = Array4::<i8>::zeros((n, co, h, w));
        reference
            .forward_into(x.view(), want.view_mut(), &mut s)
            .unwrap();
        let mut got = Array4::<i8>::zeros((n, co, h, w));
        auto.forward_into(x.view(), got.view_mut(), &mut s).unwrap();
        assert_eq!(got, want, "{} n={n}", auto.kernel());
        let xn = x
            .view()
            .permuted_axes([0, 2, 3, 1])
            .as_standard_layout()
            .into_owned();
        let mut got = Array4::<i8>::zeros((n, h, w, co));
        auto.forward_nhwc_into(xn.view(), got.view_mut(), &mut s)
            .unwrap();
        assert_eq!(
            got.permuted_axes([0, 3, 1, 2]),
            want,
            "{} NHWC n={n}",
            auto.kernel()
        );
    }
}
