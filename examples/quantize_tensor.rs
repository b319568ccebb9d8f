//! Prints the optimal uniform quantizer table (the paper's Table 1, computed) and quantizes a sample
//! tensor with each step rule, reporting predicted and measured SQNR.
//!
//! `cargo run --release --example quantize_tensor`

use fixq::{Family, Grid, QFormat, Quantizer, dist, sqnr, table};
use ndarray::Array1;

fn main() -> fixq::Result<()> {
    println!(
        "Optimal mid-rise step (unit variance; Uniform column for U[-1,1] as in Table 1) and SQNR"
    );
    println!(
        "{:>4} | {:>16} | {:>16} | {:>16} | {:>16}",
        "bits", "uniform", "gaussian", "laplacian", "gamma"
    );
    for bits in 1..=8 {
        let mut row = format!("{bits:>4}");
        for f in Family::ALL {
            let mut s = table::optimal_step(f, bits)?;
            if f == Family::Uniform {
                s /= 3f64.sqrt();
            }
            row += &format!(" | {s:>7.4} {:>6.2} dB", table::optimal_sqnr_db(f, bits)?);
        }
        println!("{row}");
    }
    println!(
        "\nkappa (dB per bit at 6 bits): {}",
        Family::ALL
            .iter()
            .map(|&f| Ok(format!("{f} {:.2}", table::kappa_db_per_bit(f, 6)?)))
            .collect::<fixq::Result<Vec<_>>>()?
            .join(", ")
    );

    // A sample "weight tensor": Laplacian-distributed, scale 0.05, 10 000 values, seeded.
    let mut state = 0x5EED_u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let data: Vec<f32> = (0..10_000)
        .map(|_| (Family::Laplacian.from_uniforms(1.0 - uniform(), uniform()) * 0.05) as f32)
        .collect();
    let fit = dist::fit(&data)?;
    println!(
        "\nSample tensor: n = {}, std = {:.4}, excess kurtosis = {:.2}, best family = {}, xi = {:.4}",
        fit.count(),
        fit.std(),
        fit.excess_kurtosis(),
        fit.best_family(),
        fit.effective_std()
    );
    println!(
        "{:>4} | {:>28} | {:>28} | {:>28}",
        "bits", "paper rule (3 sigma)", "min expected MSE", "min data MSE"
    );
    let x = Array1::from(data.clone());
    for bits in [2u32, 4, 6, 8] {
        let rules = [
            QFormat::paper_rule(3.0 * fit.std(), bits, true)?,
            QFormat::min_expected_mse(&fit, bits, true, Grid::MidTread)?,
            QFormat::min_data_mse(&data, bits, true, Grid::MidTread)?,
        ];
        let mut row = format!("{bits:>4}");
        for fmt in rules {
            let q = Quantizer::<i8>::new(fmt)?.quantize(x.view())?;
            let measured = sqnr::measure_db(&data, q.dequantize().as_slice().unwrap_or(&[]))?;
            let predicted = sqnr::predict_db(&fit, fmt)?;
            row += &format!(" | {fmt:>7} {measured:>6.2} dB ({predicted:>5.2})");
        }
        println!("{row}");
    }
    println!("(format, measured SQNR, predicted SQNR in parentheses)");
    Ok(())
}
