//! Integer kernels against float baselines (im2col + `matrixmultiply::sgemm`, and im2col + the
//! `gemm` crate) on the same shapes, and each SIMD kernel's peak for its instruction mix.
//!
//! Ids are `{kernel}/{shape}`; throughput is 2·MACs elements, so reports read in ops/s.
//! Run: `taskset -c 0 cargo bench --bench kernels` (add `--features rayon` for the threaded path).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fixq::kernels::{
    Conv2d, Conv2dParams, Dense, KernelChoice, KernelId, OutputStage, Scratch, peak_loop,
};
use fixq::{QFormat, QTensor};
use ndarray::{Array2, Array4};

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: u64) -> Vec<u64> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        })
        .collect()
}

/// im2col of one NCHW image into [C·9, OH·OW] columns (3×3, stride 1, pad 1), then sgemm.
fn im2col_3x3(x: &[f32], c: usize, h: usize, w: usize, cols: &mut [f32]) {
    let hw = h * w;
    for ci in 0..c {
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut cols[((ci * 3 + ky) * 3 + kx) * hw..][..hw];
                for oy in 0..h {
                    let iy = oy as isize + ky as isize - 1;
                    for ox in 0..w {
                        let ix = ox as isize + kx as isize - 1;
                        row[oy * w + ox] =
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                x[(ci * h + iy as usize) * w + ix as usize]
                            } else {
                                0.0
                            };
                    }
                }
            }
        }
    }
}

/// C[m×n] = A[m×k] · B[k×n], row-major.
fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    // SAFETY: slices hold m·k, k·n and m·n elements with the row-major strides given.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// C[m×n] = A[m×k] · B[k×n], row-major, with the `gemm` crate (the GEMM under faer).
fn sgemm_gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: slices hold m·k, k·n and m·n elements (checked above) with the row-major strides
    // given (column stride 1, row stride = row length).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The kernels to time besides `Auto`'s choice: the AVX2 paths, forced, so a CPU with VNNI also
/// reports what a CPU without it would run.
const FORCED: [KernelId; 2] = [KernelId::Avx2U8I8I16, KernelId::Avx2U8I8];

fn conv(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("conv3x3");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &(c, hw) in &[(16usize, 32usize), (32, 16), (64, 8), (128, 28)] {
        for n in [1usize, 8] {
            let shape = format!("c{c}_{hw}x{hw}_n{n}");
            let macs = (n * c * c * 9 * hw * hw) as u64;
            group.throughput(Throughput::Elements(2 * macs));
            let xc: Vec<u8> = bytes(n * c * hw * hw, 2)
                .into_iter()
                .map(|v| v as u8)
                .collect();
            let x = Array4::from_shape_vec((n, c, hw, hw), xc).unwrap();
            let x_nhwc = x
                .view()
                .permuted_axes([0, 2, 3, 1])
                .as_standard_layout()
                .into_owned();
            let mut scratch = Scratch::new();
            // Integer: u8 activations (post-ReLU), 8-bit and 4-bit weights, u8 output with ReLU.
            for wbits in [8u32, 4] {
                let fin = QFormat::unsigned(8, 4).unwrap();
                let fw = QFormat::signed(wbits, wbits as i32 - 1).unwrap();
                let (lo, span) = (fw.min_code(), (fw.max_code() - fw.min_code() + 1) as u64);
                let wc: Vec<i8> = bytes(c * c * 9, 1)
                    .into_iter()
                    .map(|v| (lo + (v % span) as i64) as i8)
                    .collect();
                let w = QTensor::from_codes(Array4::from_shape_vec((c, c, 3, 3), wc).unwrap(), fw)
                    .unwrap();
                let stage = OutputStage::new(QFormat::unsigned(8, 3).unwrap())
                    .with_activation(fixq::kernels::Activation::Relu);
                let p = Conv2dParams::new().with_padding(1);
                let tag = if wbits == 8 {
                    String::new()
                } else {
                    format!("-w{wbits}")
                };
                let auto =
                    Conv2d::<u8, u8>::new(&w, None, fin, stage, p, KernelChoice::Auto).unwrap();
                let mut out = Array4::<u8>::zeros((n, c, hw, hw));
                if wbits == 8 {
                    group.bench_function(format!("{}/{shape}", auto.kernel()), |b| {
                        b.iter(|| {
                            auto.forward_into(black_box(x.view()), out.view_mut(), &mut scratch)
                                .unwrap()
                        })
                    });
                }
                let forced = FORCED
                    .iter()
                    .filter(|&&id| id != auto.kernel())
                    .filter_map(|&id| {
                        Conv2d::<u8, u8>::new(&w, None, fin, stage, p, KernelChoice::Force(id)).ok()
                    });
                let mut out_nhwc = Array4::<u8>::zeros((n, hw, hw, c));
                for layer in std::iter::once(auto.clone()).chain(forced) {
                    let id = format!("{}-nhwc{tag}/{shape}", layer.kernel());
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            layer
                                .forward_nhwc_into(
                                    black_box(x_nhwc.view()),
                                    out_nhwc.view_mut(),
                                    &mut scratch,
                                )
                                .unwrap()
                        })
                    });
                }
            }
            // Float baselines: im2col + sgemm per image (matrixmultiply, and the `gemm` crate).
            let wf: Vec<f32> = bytes(c * c * 9, 1)
                .into_iter()
                .map(|v| f32::from(v as u8 as i8) / 128.0)
                .collect();
            let xf: Vec<f32> = x.iter().map(|&v| f32::from(v) / 16.0).collect();
            let mut cols = vec![0.0f32; c * 9 * hw * hw];
            let mut of = vec![0.0f32; n * c * hw * hw];
            for (name, mm) in [
                (
                    "f32-im2col-sgemm",
                    sgemm as fn(usize, usize, usize, &[f32], &[f32], &mut [f32]),
                ),
                ("f32-im2col-gemm", sgemm_gemm),
            ] {
                group.bench_function(format!("{name}/{shape}"), |b| {
                    b.iter(|| {
                        for i in 0..n {
                            im2col_3x3(&xf[i * c * hw * hw..][..c * hw * hw], c, hw, hw, &mut cols);
                            mm(
                                c,
                                c * 9,
                                hw * hw,
                                &wf,
                                &cols,
                                &mut of[i * c * hw * hw..][..c * hw * hw],
                            );
                        }
                        black_box(&of);
                    })
                });
            }
        }
    }
    group.finish();
}

/// Each SIMD kernel's instruction mix on register operands ([`fixq::kernels::peak_loop`]): the
/// machine's peak for that mix, in 2·MACs per second, to read the convolutions against.
fn peak(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("peak");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    const ROUNDS: u64 = 100_000;
    for id in KernelId::ALL {
        let Some(macs) = peak_loop(id, 1) else {
            continue;
        };
        group.throughput(Throughput::Elements(2 * macs * ROUNDS));
        group.bench_function(id.name(), |b| b.iter(|| peak_loop(id, black_box(ROUNDS))));
    }
    group.finish();
}

fn dense(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("dense");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &(k, m) in &[(3136usize, 200usize), (200, 10)] {
        for n in [1usize, 64] {
            let shape = format!("{k}x{m}_n{n}");
            group.throughput(Throughput::Elements((2 * n * k * m) as u64));
            let fin = QFormat::unsigned(8, 4).unwrap();
            let fw = QFormat::signed(8, 7).unwrap();
            let wc: Vec<i8> = bytes(m * k, 3).into_iter().map(|v| v as u8 as i8).collect();
            let w = QTensor::from_codes(Array2::from_shape_vec((m, k), wc).unwrap(), fw).unwrap();
            let stage = OutputStage::new(QFormat::signed(16, 2).unwrap());
            let layer = Dense::<u8, i16>::new(&w, None, fin, stage, KernelChoice::Auto).unwrap();
            let x = Array2::from_shape_vec(
                (n, k),
                bytes(n * k, 4).into_iter().map(|v| v as u8).collect(),
            )
            .unwrap();
            let mut out = Array2::<i16>::zeros((n, m));
            let mut scratch = Scratch::new();
            group.bench_function(format!("{}/{shape}", layer.kernel()), |b| {
                b.iter(|| {
                    layer
                        .forward_into(black_box(x.view()), out.view_mut(), &mut scratch)
                        .unwrap()
                })
            });
            let xf: Vec<f32> = x.iter().map(|&v| f32::from(v)).collect();
            // y[n×m] = x[n×k] · wᵀ: pass wᵀ as [k×m].
            let wt: Vec<f32> = (0..k * m)
                .map(|i| f32::from(w.codes()[[i % m, i / m]]))
                .collect();
            let mut of = vec![0.0f32; n * m];
            group.bench_function(format!("f32-sgemm/{shape}"), |b| {
                b.iter(|| {
                    sgemm(n, k, m, black_box(&xf), &wt, &mut of);
                    black_box(&of);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, peak, conv, dense);
criterion_main!(benches);
