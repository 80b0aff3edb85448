//! AdamW (Loshchilov & Hutter; PyTorch's update rule) with its moments exposed, so that a
//! checkpoint can hold them and a resumed run continues bit for bit. (candle_nn's AdamW
//! keeps its moments private.) The update is one fused loop per variable over host
//! memory: as a chain of candle tensor ops it took 20-25 ms per step for 0.7 M
//! parameters, about 5% of a training step.

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;

/// Optimiser state over a fixed, ordered list of variables.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Updates applied so far.
    t: u64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(vars: &[(String, Var)], weight_decay: f64) -> Result<Self> {
        let m: Vec<Vec<f32>> = vars
            .iter()
            .map(|(_, v)| vec![0f32; v.as_tensor().elem_count()])
            .collect();
        Ok(AdamW {
            vars: vars.to_vec(),
            v: m.clone(),
            m,
            t: 0,
            weight_decay,
        })
    }

    #[cfg(test)]
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - BETA1.powi(t);
        let bc2 = 1.0 - BETA2.powi(t);
        let (b1, b2, eps) = (BETA1 as f32, BETA2 as f32, EPS as f32);
        let (c1, c2) = ((1.0 / bc1) as f32, (1.0 / bc2) as f32);
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let lr = lr as f32;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut theta: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for (((th, &gi), mi), vi) in
                theta.iter_mut().zip(&g).zip(m.iter_mut()).zip(v.iter_mut())
            {
                *mi = b1 * *mi + (1.0 - b1) * gi;
                *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                let update = (*mi * c1) / ((*vi * c2).sqrt() + eps);
                *th = *th * decay - lr * update;
            }
            let t = var.as_tensor();
            var.set(&Tensor::from_vec(theta, t.shape(), t.device())?)?;
        }
        Ok(())
    }

    /// `adam_m.<name>` and `adam_v.<name>` for every variable.
    pub fn named_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let t = var.as_tensor();
            for (prefix, x) in [("adam_m", &self.m[i]), ("adam_v", &self.v[i])] {
                out.push((
                    format!("{prefix}.{name}"),
                    Tensor::from_vec(x.clone(), t.shape(), t.device())?,
                ));
            }
        }
        Ok(out)
    }

    /// Restores the moments written by [`AdamW::named_state`] and the update count.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        t: u64,
    ) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("adam_m", &mut self.m[i]), ("adam_v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let x = tensors
                    .get(&key)
                    .with_context(|| format!("checkpoint lacks {key}"))?;
                if x.dims() != var.dims() {
                    bail!("checkpoint: {key} has shape {:?}", x.dims());
                }
                *slot = x.flatten_all()?.to_vec1()?;
            }
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_minimises_a_quadratic() {
        let x = Var::from_tensor(&Tensor::new(&[3f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(&[("x".to_string(), x.clone())], 0.0).unwrap();
        for _ in 0..500 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.05).unwrap();
        }
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        assert_eq!(opt.steps(), 500);
        assert_eq!(opt.named_state().unwrap().len(), 2);
    }
}
