//! The official optimizer and schedule: `torch.optim.AdamW` (one parameter
//! group, decay on every trained tensor) and `train/scheduler.py`'s cosine
//! schedule with linear warm-up; plus the dynamic loss scale of
//! `torch.cuda.amp.GradScaler` for f16 runs. Their state is plain numbers
//! and tensors so a checkpoint can restore it exactly.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The authors' recipe (train.md): β 0.9/0.999, ε 1e-8, weight decay 1e-2.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// AdamW with PyTorch's update order: decay, moments, bias-corrected step.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates taken so far (PyTorch's per-parameter `step`).
    pub step: u64,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, vars: &[Var]) -> Result<AdamW> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW { config, step: 0, m, v })
    }

    /// One update of every var with its gradient, at learning rate `lr`.
    pub fn update(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        if vars.len() != grads.len() || vars.len() != self.m.len() {
            bail!("AdamW: {} vars, {} gradients, {} moments", vars.len(), grads.len(), self.m.len());
        }
        self.step += 1;
        let c = &self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (var, grad)) in vars.iter().zip(grads).enumerate() {
            let grad = grad.to_dtype(DType::F32)?;
            let m = ((&self.m[i] * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bias2.sqrt())? + c.eps)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            let next = (decayed - ((&m / denom)? * (lr / bias1))?)?;
            var.set(&next)?;
            // Detached: otherwise each moment keeps the previous one (and the
            // step's gradient graph) alive through its op history.
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

/// `scheduler.cosine_lr`: linear warm-up to `base` over `warmup` steps,
/// then half a cosine down to zero at `total`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub base: f64,
    pub warmup: usize,
    pub total: usize,
}

impl CosineSchedule {
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let e = (step - self.warmup) as f64;
        let es = self.total.saturating_sub(self.warmup).max(1) as f64;
        0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * self.base
    }
}

/// `GradScaler`'s dynamic loss scale (f16 only): halve and skip the update
/// on a non-finite gradient, double after `interval` clean steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub enabled: bool,
    pub scale: f64,
    pub clean_steps: u64,
    pub interval: u64,
}

impl LossScale {
    pub fn new(enabled: bool) -> LossScale {
        LossScale { enabled, scale: if enabled { 65536.0 } else { 1.0 }, clean_steps: 0, interval: 2000 }
    }

    /// Records one step; returns whether its update should be applied (a
    /// non-finite gradient is never applied, scaled or not).
    pub fn record(&mut self, finite: bool) -> bool {
        if !self.enabled {
            return finite;
        }
        if !finite {
            self.scale /= 2.0;
            self.clean_steps = 0;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps >= self.interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_is_the_official_one() {
        let s = CosineSchedule { base: 1e-6, warmup: 200, total: 1000 };
        assert_eq!(s.lr(0), 1e-6 / 200.0);
        assert!((s.lr(199) - 1e-6).abs() < 1e-20);
        assert!((s.lr(200) - 1e-6).abs() < 1e-20);
        assert!((s.lr(600) - 0.5e-6).abs() < 1e-18);
        assert!(s.lr(999) < 1e-10);
    }

    /// One step by hand, as torch.optim.AdamW computes it.
    #[test]
    fn adamw_matches_the_pytorch_update() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let config = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(config, std::slice::from_ref(&var)).unwrap();
        let grad = Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap();
        for step in 1..=2 {
            let before = var.as_tensor().to_vec1::<f32>().unwrap();
            opt.update(std::slice::from_ref(&var), std::slice::from_ref(&grad), 0.01).unwrap();
            let after = var.as_tensor().to_vec1::<f32>().unwrap();
            for (k, g) in [0.5f64, 0.25].iter().enumerate() {
                // Constant gradient: m_hat = g, v_hat = g^2 at every step.
                let (b1, b2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.999f64.powi(step));
                let m = g * b1;
                let v = g * g * b2;
                let want = before[k] as f64 * (1.0 - 0.01 * 0.1) - 0.01 / b1 * m / ((v.sqrt() / b2.sqrt()) + 1e-8);
                assert!((after[k] as f64 - want).abs() < 1e-6, "step {step}, element {k}: {} vs {want}", after[k]);
            }
        }
    }

    #[test]
    fn loss_scale_backs_off_and_grows() {
        let mut s = LossScale { enabled: true, scale: 8.0, clean_steps: 0, interval: 2 };
        assert!(!s.record(false));
        assert_eq!(s.scale, 4.0);
        assert!(s.record(true));
        assert!(s.record(true));
        assert_eq!(s.scale, 8.0);
    }
}
