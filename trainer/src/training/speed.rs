//! Speed of the reference network: training steps (forward, backward, AdamW update) and
//! inference, in images per second, for `trainer bench train`.

use std::time::Instant;

use anyhow::Result;
use rand::Rng;
use serde::Serialize;

use super::config::ModelConfig;
use super::model::{Arch, Backbone, ConvKernel};
use super::optim::AdamW;
use super::rng_for;

/// Measured speeds (after one warm-up step / pass each).
#[derive(Clone, Debug, Serialize)]
pub struct SpeedReport {
    pub kernel: String,
    pub side: usize,
    pub batch: usize,
    /// Training images/s: forward in training mode (dropout), loss `mean(e^2)`, backward,
    /// AdamW update.
    pub train_images_per_sec: f64,
    /// Inference images/s at `batch`.
    pub forward_images_per_sec: f64,
    /// Inference latency of one image, milliseconds (median of `steps` runs).
    pub latency_b1_ms: f64,
    /// Where a training step's time goes, milliseconds per step (means): forward in
    /// training mode + loss, backward, optimiser update. Absent for other tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<StepTimes>,
}

/// Milliseconds per training step by phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepTimes {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

/// Times `steps` training steps and `steps` forward passes of the network `model` on
/// random images in the current thread pool.
pub fn measure(
    kernel: ConvKernel,
    model: &ModelConfig,
    side: usize,
    batch: usize,
    steps: usize,
) -> Result<SpeedReport> {
    let dev = super::device()?;
    let mut rng = rng_for(0, None);
    let mut net = Backbone::new(Arch::new(side, model)?, &dev, &mut rng)?;
    net.set_kernel(kernel);
    let mut opt = AdamW::new(net.params(), 1e-4)?;
    let data: Vec<f32> = (0..batch * 3 * side * side)
        .map(|_| rng.random_range(-0.5f32..0.5))
        .collect();
    let x = candle_core::Tensor::from_vec(data, (batch, 3, side, side), net.device())?;
    let x1 = x.narrow(0, 0, 1)?;
    let steps = steps.max(1);
    let mut train_s = 0.0;
    let mut phases = StepTimes::default();
    for i in 0..=steps {
        let t0 = Instant::now();
        let e = net.forward_train(&x, &mut rng)?;
        let loss = e.sqr()?.mean_all()?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&g, 1e-4)?;
        if i > 0 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3 / steps as f64;
            phases.forward += ms(t0, t1);
            phases.backward += ms(t1, t2);
            phases.optimizer += ms(t2, Instant::now());
            train_s += t0.elapsed().as_secs_f64();
        }
    }
    let mut fwd_s = 0.0;
    let mut lat = Vec::with_capacity(steps);
    for i in 0..=steps {
        let t0 = Instant::now();
        net.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        if i > 0 {
            fwd_s += t0.elapsed().as_secs_f64();
        }
        let t0 = Instant::now();
        net.forward(&x1)?.flatten_all()?.to_vec1::<f32>()?;
        if i > 0 {
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(SpeedReport {
        kernel: format!("{:?}", net.kernel()),
        side,
        batch,
        train_images_per_sec: (steps * batch) as f64 / train_s,
        forward_images_per_sec: (steps * batch) as f64 / fwd_s,
        latency_b1_ms: lat[lat.len() / 2],
        step_ms: Some(phases),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_report_is_positive() {
        let r = measure(ConvKernel::Fused, &ModelConfig::default(), 8, 4, 1).unwrap();
        assert!(r.train_images_per_sec > 0.0 && r.forward_images_per_sec > 0.0);
        assert!(r.latency_b1_ms > 0.0);
    }
}
