//! Configuration shared by the examples.

use fixq::plan::{Granularity, NoiseGains, PlanConfig};
use fixq::{Budget, Grid};

/// fixq's method: per-tensor two's complement weights in 2..=8 bits, or per-channel mid-rise weights in
/// 1..=7 bits; measured curves with noise gains; exact allocation.
pub fn fixq_config(budget: Budget, gains: &NoiseGains, per_channel: bool) -> PlanConfig {
    let mut c = PlanConfig::fixq(budget).with_gains(gains.clone());
    if per_channel {
        c.granularity = Granularity::PerChannel;
        c.weight_grid = Grid::MidRise;
        c.weight_bits = 1..=7;
    } else {
        c.weight_bits = 2..=8;
    }
    c
}
