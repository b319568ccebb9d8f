//! Bit-allocation solver times for per-channel problems: 10^2, 10^4 and 10^6 specs with 16 widths
//! each (irregular measured-like tables), for both budget kinds.
//!
//! Run: `taskset -c 0 cargo bench --bench alloc`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fixq::{Budget, LayerSpec, SqnrCurve, allocate_bits};
use std::hint::black_box;
use std::time::Duration;

/// splitmix64, so the instances are the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` channels, each with 16 widths (1..=16 bits): 3 to 6 dB per bit with +-1.5 dB of measurement
/// noise (neither concave nor always monotone), offset by `10 log10(n)` dB, and 50 to 5049 params.
fn channels(n: usize) -> Vec<LayerSpec> {
    let mut rng = Rng(n as u64);
    let share_db = 10.0 * (n as f64).log10();
    (0..n)
        .map(|i| {
            let slope = 3.0 + 3.0 * rng.unit();
            let start = share_db - 2.0 + 4.0 * rng.unit();
            let sqnr_db = (0..16)
                .map(|b| start + slope * b as f64 + 3.0 * (rng.unit() - 0.5))
                .collect();
            LayerSpec::new(
                format!("ch{i}"),
                50 + rng.next() % 5000,
                SqnrCurve::Table {
                    min_bits: 1,
                    sqnr_db,
                },
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate_bits");
    for n in [100usize, 10_000, 1_000_000] {
        let layers = channels(n);
        group.throughput(Throughput::Elements(n as u64));
        if n >= 1_000_000 {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(8));
        } else {
            group
                .sample_size(30)
                .measurement_time(Duration::from_secs(3));
        }
        group.bench_with_input(BenchmarkId::new("min_sqnr", n), &layers, |b, layers| {
            b.iter(|| allocate_bits(black_box(layers), Budget::MinSqnrDb(20.0)))
        });
        group.bench_with_input(
            BenchmarkId::new("max_model_bits", n),
            &layers,
            |b, layers| b.iter(|| allocate_bits(black_box(layers), Budget::AvgBitsPerParam(4.0))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
