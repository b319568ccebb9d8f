//! The float executor's backward pass ([`FloatExecutor::backward`]) against central differences of
//! its forward pass, on every per-op fixture of `tests/fixtures/ops/` that imports and on the three
//! test networks: for a random output weighting `dy` and a random input direction `d`,
//! ⟨∂L/∂x, d⟩ must equal (L(x + h·d) − L(x − h·d)) / 2h with L(x) = ⟨dy, f(x)⟩.

mod shipped;

use std::fs;

use fixq::exec::FloatExecutor;
use fixq::io::npy;
use fixq::{Error, Graph};
use ndarray::{ArrayD, Zip};

/// SplitMix64, for reproducible test data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn normal(rng: &mut SplitMix64, shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_fn(shape, |_| {
        // Box–Muller from two uniforms in (0, 1].
        let u1 = 1.0 - rng.next_unit();
        let u2 = rng.next_unit();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    })
}

fn dot(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let mut s = 0f64;
    Zip::from(a)
        .and(b)
        .for_each(|&x, &y| s += f64::from(x) * f64::from(y));
    s
}

/// Relative disagreement of the backward pass with central differences on `x`.
fn check(graph: &Graph, x: &ArrayD<f32>, seed: u64) -> Result<f64, Error> {
    let exec = FloatExecutor::new(graph);
    let mut rng = SplitMix64::new(seed);
    // Some fixtures hold near-ties on purpose (max pooling); a small jitter moves the point off them.
    let rms0 = (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let x = &(x + &(normal(&mut rng, x.shape()) * (1e-2 * rms0) as f32));
    let tape = exec.run_taped(x.view())?;
    let y = exec.tape_output(&tape)?.clone();
    let dy = normal(&mut rng, y.shape());
    let g = exec.backward(&tape, dy.view())?;
    // Along a random direction half aligned with the gradient: the quotient's signal stays well
    // above f32 rounding in deep networks, and a wrong gradient still moves ⟨∂L/∂x, d⟩ off it.
    let mut d = normal(&mut rng, x.shape());
    if let Some(gx) = &g.input {
        let norm = dot(gx, gx).sqrt();
        if norm > 0.0 {
            d = &d + &(gx * ((x.len() as f64).sqrt() / norm) as f32);
        }
    }
    let analytic = g.input.as_ref().map_or(0.0, |gx| dot(gx, &d));
    let rms = (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    // Piecewise-linear ops (ReLU, max pooling) have kinks that a step can cross, which changes the
    // difference quotient by O(1): the best of three step sizes is compared (a wrong gradient
    // matches at none of them).
    let mut best = f64::INFINITY;
    for rel in [1e-3, 1e-4, 1e-5] {
        let h = (rel * rms.max(1e-3)) as f32;
        let plus = exec.run((x + &(&d * h)).view())?;
        let minus = exec.run((x - &(&d * h)).view())?;
        let numeric = (dot(&dy, &plus) - dot(&dy, &minus)) / (2.0 * f64::from(h));
        let scale = analytic.abs().max(numeric.abs()).max(1e-6);
        best = best.min((analytic - numeric).abs() / scale);
    }
    Ok(best)
}

#[test]
fn backward_matches_central_differences_on_every_op_fixture() {
    let dir = shipped::path("tests/fixtures/ops");
    let mut cases: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".onnx").map(str::to_string)
        })
        .collect();
    cases.sort();
    let (mut checked, mut failures) = (0, Vec::new());
    for case in &cases {
        let base = format!("{dir}/{case}");
        // Import refusals are the op tests' business (tests/ops.rs).
        let Ok(graph) = Graph::from_onnx_file(format!("{base}.onnx")) else {
            continue;
        };
        let x = npy::read(format!("{base}.input.npy"))
            .unwrap()
            .into_f32()
            .unwrap();
        match check(&graph, &x, 11) {
            Ok(e) if e <= 1e-2 => checked += 1,
            Ok(e) => failures.push(format!("{case}: relative error {e:.3e}")),
            Err(e) => failures.push(format!("{case}: {e}")),
        }
    }
    assert!(checked >= 110, "only {checked} fixtures checked");
    assert!(
        failures.is_empty(),
        "{} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gradients_reach_every_node_of_a_residual_network_and_only_the_output_seeds_them() {
    let dir = shipped::path("tests/fixtures/ops");
    let graph = Graph::from_onnx_file(format!("{dir}/resnet_a.onnx")).unwrap();
    let x = npy::read(format!("{dir}/resnet_a.input.npy"))
        .unwrap()
        .into_f32()
        .unwrap();
    let exec = FloatExecutor::new(&graph);
    let tape = exec.run_taped(x.view()).unwrap();
    let y = exec.tape_output(&tape).unwrap().clone();
    // The taped pass computes what the plain one does.
    assert_eq!(y, exec.run(x.view()).unwrap());
    let zero = ArrayD::<f32>::zeros(y.shape());
    let g = exec.backward(&tape, zero.view()).unwrap();
    assert!(
        g.nodes
            .iter()
            .all(|n| n.as_ref().is_some_and(|a| a.iter().all(|&v| v == 0.0)))
    );
    let wrong = ArrayD::<f32>::zeros(vec![y.shape()[0], y.shape()[1] + 1]);
    assert!(matches!(
        exec.backward(&tape, wrong.view()),
        Err(Error::ShapeMismatch { .. })
    ));
}
