//! Progress on stderr: a bar per stage, drawn only when stderr is a terminal (hidden in pipes, logs
//! and tests).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use fixq::quantize::Stage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps labelled `msg` (a spinner when `len` is `None`).
pub fn bar(len: Option<u64>, msg: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = match len {
        Some(n) => {
            let pb = ProgressBar::with_draw_target(Some(n), target);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:<24} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        }
        None => {
            let pb = ProgressBar::with_draw_target(None, target);
            if let Ok(style) = ProgressStyle::with_template("{msg:<24} {spinner} {elapsed_precise}")
            {
                pb.set_style(style);
            }
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        }
    };
    pb.set_message(msg.to_string());
    pb
}

/// The bars of [`fixq::quantize_with_progress`]: calibration with a count, then one spinner per
/// later stage; each finishes with its time.
#[derive(Default)]
pub struct Stages {
    current: Option<(ProgressBar, &'static str, Instant)>,
}

impl Stages {
    /// Reports `stage`.
    pub fn on(&mut self, stage: Stage) {
        let name = match stage {
            Stage::Calibrating { done, total } => {
                match &self.current {
                    Some((pb, "calibrating", _)) => pb.set_position(done),
                    _ => {
                        self.start(Some(total), "calibrating");
                        if let Some((pb, _, _)) = &self.current {
                            pb.set_position(done);
                        }
                    }
                }
                return;
            }
            Stage::NoiseGains => "noise gains",
            Stage::Planning => "planning",
            Stage::Measuring => "measuring",
            _ => "working",
        };
        self.start(None, name);
    }

    fn start(&mut self, len: Option<u64>, name: &'static str) {
        self.finish();
        self.current = Some((bar(len, name), name, Instant::now()));
    }

    /// Finishes the running bar.
    pub fn finish(&mut self) {
        if let Some((pb, name, t)) = self.current.take() {
            pb.finish_with_message(format!("{name} ({:.1} s)", t.elapsed().as_secs_f64()));
        }
    }
}
