//! Integer kernels against a float baseline (im2col + `matrixmultiply::sgemm`) on the same shapes.
//!
//! Ids are `{kernel}/{shape}`; throughput is 2·MACs elements, so reports read in ops/s.
//! Run: `taskset -c 0 cargo bench --bench kernels` (add `--features rayon` for the threaded path).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fixq::kernels::{Conv2d, Conv2dParams, Dense, KernelChoice, OutputStage, Scratch};
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
            // Integer: u8 activations (post-ReLU), i8 weights, u8 output with fused ReLU.
            let fin = QFormat::unsigned(8, 4).unwrap();
            let fw = QFormat::signed(8, 7).unwrap();
            let wc: Vec<i8> = bytes(c * c * 9, 1)
                .into_iter()
                .map(|v| v as u8 as i8)
                .collect();
            let w =
                QTensor::from_codes(Array4::from_shape_vec((c, c, 3, 3), wc).unwrap(), fw).unwrap();
            let stage = OutputStage::new(QFormat::unsigned(8, 3).unwrap())
                .with_activation(fixq::kernels::Activation::Relu);
            let p = Conv2dParams::new().with_padding(1);
            let layer = Conv2d::<u8, u8>::new(&w, None, fin, stage, p, KernelChoice::Auto).unwrap();
            let xc: Vec<u8> = bytes(n * c * hw * hw, 2)
                .into_iter()
                .map(|v| v as u8)
                .collect();
            let x = Array4::from_shape_vec((n, c, hw, hw), xc).unwrap();
            let mut out = Array4::<u8>::zeros((n, c, hw, hw));
            let mut scratch = Scratch::new();
            group.bench_function(format!("{}/{shape}", layer.kernel()), |b| {
                b.iter(|| {
                    layer
                        .forward_into(black_box(x.view()), out.view_mut(), &mut scratch)
                        .unwrap()
                })
            });
            let x_nhwc = x
                .view()
                .permuted_axes([0, 2, 3, 1])
                .as_standard_layout()
                .into_owned();
            let mut out_nhwc = Array4::<u8>::zeros((n, hw, hw, c));
            group.bench_function(format!("{}-nhwc/{shape}", layer.kernel()), |b| {
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
            // Float baseline: im2col + sgemm per image.
            let xf: Vec<f32> = x.iter().map(|&v| f32::from(v) / 16.0).collect();
            let wf: Vec<f32> = w.codes().iter().map(|&v| f32::from(v) / 128.0).collect();
            let mut cols = vec![0.0f32; c * 9 * hw * hw];
            let mut of = vec![0.0f32; n * c * hw * hw];
            group.bench_function(format!("f32-im2col-sgemm/{shape}"), |b| {
                b.iter(|| {
                    for i in 0..n {
                        im2col_3x3(&xf[i * c * hw * hw..][..c * hw * hw], c, hw, hw, &mut cols);
                        sgemm(
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

criterion_group!(benches, conv, dense);
criterion_main!(benches);
