//! Throughput of the numerics hot paths: streaming fit statistics and quantization to i8.
//!
//! `taskset -c 0 cargo bench --bench numerics`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fixq::{Family, QFormat, Quantizer, dist::FitAccumulator};
use ndarray::Array1;
use std::hint::black_box;

fn data(n: usize) -> Vec<f32> {
    let mut s = 0x1234_5678_u64;
    let mut u = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| (Family::Laplacian.from_uniforms(1.0 - u(), u()) * 0.05) as f32)
        .collect()
}

fn bench(c: &mut Criterion) {
    let n = 1 << 20;
    let xs = data(n);
    let mut g = c.benchmark_group("numerics");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("fit_accumulator/1M_f32", |b| {
        b.iter(|| {
            let mut acc = FitAccumulator::new();
            acc.push_slice(black_box(&xs)).unwrap();
            black_box(acc.count())
        })
    });
    let x = Array1::from(xs.clone());
    let q = Quantizer::<i8>::new(QFormat::signed(8, 9).unwrap()).unwrap();
    g.bench_function("quantize_i8/1M_f32", |b| {
        b.iter(|| black_box(q.quantize(black_box(x.view())).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
