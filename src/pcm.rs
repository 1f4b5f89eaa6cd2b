//! Primary component matching (PCM), the loss Long-CLIP is fine-tuned with
//! (official `model_longclip.py`, `CLIP.forward(image, text_long,
//! text_short, rank)` and `CLIP.PCA`):
//!
//! - long loss: symmetric cross-entropy (label smoothing 0.1) between the
//!   L2-normalized image features and the normalized long-text features;
//! - short loss: the same between the *primary components* of the
//!   normalized image features and the normalized short-text features.
//!   Primary components: centre the batch, project on its top `pca_dim`
//!   right singular vectors, reconstruct, add the mean back (not
//!   re-normalized, as in the official code).
//!
//! Everything here runs in f64 on the CPU: the inputs are only [batch,
//! embed] features, and candle has no SVD. The PCA is a custom op whose
//! backward goes through the reconstruction *and* the basis, which is what
//! `torch.linalg.svd`'s backward gives the official code.

use anyhow::{bail, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};

use crate::linalg::SymmetricEigen;
use crate::model::l2_normalize;

/// The official `F.cross_entropy(..., label_smoothing=0.1)`.
pub const LABEL_SMOOTHING: f64 = 0.1;
/// The official `self.PCA(image_features_long, 32)`.
pub const PCA_DIM: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PcmOptions {
    /// Principal components kept.
    pub pca_dim: usize,
    /// The PCA runs on groups of this many consecutive rows (0: the whole
    /// batch). The official 16-GPU run did one PCA per GPU's 128 samples.
    pub pca_group: usize,
    pub label_smoothing: f64,
}

impl Default for PcmOptions {
    fn default() -> Self {
        PcmOptions { pca_dim: PCA_DIM, pca_group: 0, label_smoothing: LABEL_SMOOTHING }
    }
}

/// PCA reconstruction of the rows of `x` [n, d], one PCA per group of
/// `group` consecutive rows (0: all rows). Differentiable; computed in f64
/// on the CPU, returned in `x`'s dtype and device.
pub fn pca(x: &Tensor, dim: usize, group: usize) -> Result<Tensor> {
    let (dtype, device) = (x.dtype(), x.device().clone());
    let x64 = x.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.contiguous()?;
    let out = x64.apply_op1(Pca { dim, group })?;
    Ok(out.to_dtype(dtype)?.to_device(&device)?)
}

struct Pca {
    dim: usize,
    group: usize,
}

impl Pca {
    fn groups(&self, n: usize) -> Vec<(usize, usize)> {
        let size = if self.group == 0 { n } else { self.group };
        (0..n).step_by(size.max(1)).map(|start| (start, size.min(n - start))).collect()
    }
}

/// The sizes of the PCA groups of a batch of `n` rows with `--pca-group
/// group` (0: the whole batch): full groups, then a smaller last one.
pub fn group_sizes(n: usize, group: usize) -> Vec<usize> {
    Pca { dim: 0, group }.groups(n).into_iter().map(|(_, len)| len).collect()
}

/// Whether the PCA of a group of `n` samples of dimension `embed` keeping
/// `pca_dim` components gives back its input exactly. The PCA is centred
/// (as the official `CLIP.PCA`: `X - mean`, SVD, `@ V_k V_k^T`, `+ mean`),
/// and centred samples span at most `n - 1` dimensions (they sum to zero),
/// so `pca_dim >= n - 1` keeps all of them; `pca_dim >= embed` keeps every
/// dimension whatever `n`. Then the "primary component" image features are
/// the full ones and the short loss compares full features with short
/// captions: primary component matching does nothing.
pub fn pca_is_exact(n: usize, embed: usize, pca_dim: usize) -> bool {
    pca_dim + 1 >= n || pca_dim >= embed
}

/// The smallest group whose PCA with `pca_dim` components loses something
/// (for an embedding wider than `pca_dim`): `pca_dim + 2`.
pub fn min_lossy_group(pca_dim: usize) -> usize {
    pca_dim + 2
}

impl CustomOp1 for Pca {
    fn name(&self) -> &'static str {
        "pca-reconstruction"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("pca: input must be contiguous")
        };
        let data = &storage.as_slice::<f64>()?[start..end];
        let x = Tensor::from_slice(data, (n, d), &Device::Cpu)?;
        let mut parts = Vec::new();
        for (row, len) in self.groups(n) {
            parts.push(group_forward(&x.narrow(0, row, len)?, self.dim).map_err(candle_core::Error::wrap)?);
        }
        let out = Tensor::cat(&parts, 0)?.flatten_all()?.to_vec1::<f64>()?;
        Ok((CpuStorage::F64(out), Shape::from((n, d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = arg.dim(0)?;
        let mut parts = Vec::new();
        for (row, len) in self.groups(n) {
            let g = group_backward(&arg.narrow(0, row, len)?, &grad.narrow(0, row, len)?, self.dim)
                .map_err(candle_core::Error::wrap)?;
            parts.push(g);
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }
}

/// `(x - mean) V_k V_k^T + mean`, V_k the top-k right singular vectors.
fn group_forward(x: &Tensor, k: usize) -> Result<Tensor> {
    let mean = x.mean_keepdim(0)?;
    let centred = x.broadcast_sub(&mean)?;
    Ok(project(&centred, k)?.broadcast_add(&mean)?)
}

/// Gradient of `group_forward` at `x` for the output gradient `gy`.
fn group_backward(x: &Tensor, gy: &Tensor, k: usize) -> Result<Tensor> {
    let n = x.dim(0)? as f64;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let g_centred = project_backward(&centred, gy, k)?;
    // The mean enters twice: added back to the output, and subtracted from x.
    let g_mean = ((gy.sum_keepdim(0)? - g_centred.sum_keepdim(0)?)? / n)?;
    Ok(g_centred.broadcast_add(&g_mean)?)
}

/// Projection of the rows of `a` [n, d] on its top-k right singular
/// vectors. Works on the smaller Gram matrix: for n <= d the same result is
/// U_k U_k^T a, with U_k the top-k eigenvectors of a a^T.
fn project(a: &Tensor, k: usize) -> Result<Tensor> {
    let (n, d) = a.dims2()?;
    if k >= n.min(d) {
        return Ok(a.clone());
    }
    if n <= d {
        project_left(a, k)
    } else {
        Ok(project_left(&a.t()?.contiguous()?, k)?.t()?.contiguous()?)
    }
}

fn project_backward(a: &Tensor, gz: &Tensor, k: usize) -> Result<Tensor> {
    let (n, d) = a.dims2()?;
    if k >= n.min(d) {
        return Ok(gz.clone());
    }
    if n <= d {
        project_left_backward(a, gz, k)
    } else {
        let a_t = a.t()?.contiguous()?;
        let gz_t = gz.t()?.contiguous()?;
        Ok(project_left_backward(&a_t, &gz_t, k)?.t()?.contiguous()?)
    }
}

/// Eigen-decomposition of `a a^T`: eigenvalues (descending) and the
/// eigenvectors as the columns of an [n, n] tensor.
fn gram_eigen(a: &Tensor) -> Result<(Vec<f64>, Tensor)> {
    let n = a.dim(0)?;
    let gram = a.matmul(&a.t()?)?.flatten_all()?.to_vec1::<f64>()?;
    let e = SymmetricEigen::new(&gram, n);
    // e.vectors holds one eigenvector per row; the transpose puts them in columns.
    let u = Tensor::from_vec(e.vectors, (n, n), &Device::Cpu)?.t()?.contiguous()?;
    Ok((e.values, u))
}

/// P a with P = U_k U_k^T, the projector on the top-k eigenvectors of a a^T.
fn project_left(a: &Tensor, k: usize) -> Result<Tensor> {
    let (_, u) = gram_eigen(a)?;
    let top = u.narrow(1, 0, k)?;
    Ok(top.matmul(&top.t()?.matmul(a)?)?)
}

/// Gradient of `P(a) a` w.r.t. `a`, P the top-k projector of G = a a^T:
/// P gz through the reconstruction, plus (Ḡ + Ḡ^T) a through the basis,
/// where first-order perturbation of the eigenvectors gives
/// Ḡ = U_r C U_k^T, C_ji = u_j^T (M + M^T) u_i / (λ_i - λ_j), M = gz a^T,
/// i over the kept and j over the dropped eigenvectors. Pairs with equal
/// eigenvalues (both in the null space of a) contribute nothing.
fn project_left_backward(a: &Tensor, gz: &Tensor, k: usize) -> Result<Tensor> {
    let (values, u) = gram_eigen(a)?;
    let n = values.len();
    let top = u.narrow(1, 0, k)?;
    let rest = u.narrow(1, k, n - k)?;
    let direct = top.matmul(&top.t()?.matmul(gz)?)?;
    let m = gz.matmul(&a.t()?)?;
    let m_sym = (&m + m.t()?)?;
    let s = rest.t()?.matmul(&m_sym)?.matmul(&top)?.to_vec2::<f64>()?;
    let cutoff = 1e-12 * values[0].abs().max(f64::MIN_POSITIVE);
    let mut c = vec![0.0; (n - k) * k];
    for j in 0..n - k {
        for i in 0..k {
            let gap = values[i] - values[k + j];
            if gap > cutoff {
                c[j * k + i] = s[j][i] / gap;
            }
        }
    }
    let c = Tensor::from_vec(c, (n - k, k), &Device::Cpu)?;
    let g_gram = rest.matmul(&c)?.matmul(&top.t()?)?;
    let through_basis = (&g_gram + g_gram.t()?)?.matmul(a)?;
    Ok((direct + through_basis)?)
}

/// `F.cross_entropy(logits, arange(n), label_smoothing=eps)`, mean over rows.
pub fn smoothed_cross_entropy(logits: &Tensor, eps: f64) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    if n != c {
        bail!("contrastive logits must be square, got [{n}, {c}]");
    }
    let logp = log_softmax(logits)?;
    let eye = Tensor::eye(n, logits.dtype(), logits.device())?;
    let nll = ((logp.mul(&eye)?.sum_all()? / n as f64)? * -1.0)?;
    let smooth = ((logp.sum_all()? / (n * c) as f64)? * -1.0)?;
    Ok(((nll * (1.0 - eps))? + (smooth * eps)?)?)
}

/// Row-wise log-softmax with a detached max (no tie-splitting gradient).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// (CE(logits) + CE(logits^T)) / 2: image-to-text and text-to-image.
fn symmetric_loss(logits: &Tensor, eps: f64) -> Result<Tensor> {
    let i2t = smoothed_cross_entropy(logits, eps)?;
    let t2i = smoothed_cross_entropy(&logits.t()?.contiguous()?, eps)?;
    Ok(((i2t + t2i)? / 2.0)?)
}

/// The two PCM losses (scalars) of one batch of unnormalized features
/// [n, e]; `logit_scale` is the log of the temperature, a scalar tensor.
/// Differentiable in every input; use f64 CPU tensors.
pub fn losses(image: &Tensor, long: &Tensor, short: &Tensor, logit_scale: &Tensor, opts: &PcmOptions) -> Result<(Tensor, Tensor)> {
    let n = image.dim(0)?;
    if long.dim(0)? != n || short.dim(0)? != n {
        bail!("PCM needs as many long ({}) and short ({}) texts as images ({n})", long.dim(0)?, short.dim(0)?);
    }
    let image = l2_normalize(image)?;
    let long = l2_normalize(long)?;
    let short = l2_normalize(short)?;
    let image_short = pca(&image, opts.pca_dim, opts.pca_group)?;
    let scale = logit_scale.exp()?;
    let logits_long = image.matmul(&long.t()?)?.broadcast_mul(&scale)?;
    let logits_short = image_short.matmul(&short.t()?)?.broadcast_mul(&scale)?;
    Ok((symmetric_loss(&logits_long, opts.label_smoothing)?, symmetric_loss(&logits_short, opts.label_smoothing)?))
}

/// The losses of one batch and the gradient of their sum w.r.t. each input.
pub struct PcmGradients {
    pub loss_long: f64,
    pub loss_short: f64,
    /// d(loss_long + loss_short)/d(features), f64 on the CPU, [n, e].
    pub image: Tensor,
    pub long: Tensor,
    pub short: Tensor,
    pub logit_scale: f64,
}

fn to_f64(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?)
}

/// The PCM forward values only, in f64.
pub fn loss_values(image: &Tensor, long: &Tensor, short: &Tensor, logit_scale: f64, opts: &PcmOptions) -> Result<(f64, f64)> {
    let scale = Tensor::new(logit_scale, &Device::Cpu)?;
    let (l, s) = losses(&to_f64(image)?, &to_f64(long)?, &to_f64(short)?, &scale, opts)?;
    Ok((l.to_scalar::<f64>()?, s.to_scalar::<f64>()?))
}

/// Losses and gradients of `loss_long + loss_short` for detached features
/// (any device or dtype): the first half of a gradient-cache step.
pub fn loss_and_gradients(image: &Tensor, long: &Tensor, short: &Tensor, logit_scale: f64, opts: &PcmOptions) -> Result<PcmGradients> {
    let vi = Var::from_tensor(&to_f64(image)?)?;
    let vl = Var::from_tensor(&to_f64(long)?)?;
    let vs = Var::from_tensor(&to_f64(short)?)?;
    let vscale = Var::from_tensor(&Tensor::new(logit_scale, &Device::Cpu)?)?;
    let (l, s) = losses(vi.as_tensor(), vl.as_tensor(), vs.as_tensor(), vscale.as_tensor(), opts)?;
    let grads = (&l + &s)?.backward()?;
    let grad = |v: &Var| -> Result<Tensor> {
        match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Ok(v.as_tensor().zeros_like()?),
        }
    };
    Ok(PcmGradients {
        loss_long: l.to_scalar::<f64>()?,
        loss_short: s.to_scalar::<f64>()?,
        image: grad(&vi)?,
        long: grad(&vl)?,
        short: grad(&vs)?,
        logit_scale: grad(&vscale)?.to_scalar::<f64>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, generic (full-rank) features [n, d].
    fn features(n: usize, d: usize) -> Tensor {
        let v: Vec<f64> = (0..n * d).map(|i| ((i * 7919 % 1009) as f64 * 0.37).sin() + 0.1 * (i % 13) as f64).collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
    }

    /// The boundary of the warning `longclip finetune` prints: a centred
    /// PCA keeping k components reconstructs k + 1 samples exactly, and not
    /// k + 2. Checked both with one group and as the last, smaller group
    /// of a batch (`pca_group`).
    #[test]
    fn pca_is_exact_up_to_pca_dim_plus_one_samples() {
        let (k, d) = (4, 16);
        let limit = k + 1;
        assert_eq!(min_lossy_group(k), limit + 1);
        for n in 1..=limit + 3 {
            let x = features(n, d);
            let diff = max_diff(&pca(&x, k, 0).unwrap(), &x);
            if n <= limit {
                assert!(pca_is_exact(n, d, k));
                assert!(diff < 1e-5, "n = {n} <= {limit}: PCA must be exact, differs by {diff:e}");
            } else {
                assert!(!pca_is_exact(n, d, k));
                assert!(diff > 1e-3, "n = {n} > {limit}: PCA must lose something, differs by only {diff:e}");
            }
        }
        // Groups of 8: [8, 8, 5] for 21 rows; the last group (limit rows) is exact, the others are not.
        let x = features(21, d);
        assert_eq!(group_sizes(21, 8), vec![8, 8, 5]);
        let y = pca(&x, k, 8).unwrap();
        assert!(max_diff(&y.narrow(0, 16, 5).unwrap(), &x.narrow(0, 16, 5).unwrap()) < 1e-5);
        assert!(max_diff(&y.narrow(0, 0, 8).unwrap(), &x.narrow(0, 0, 8).unwrap()) > 1e-3);
        // Keeping every dimension is exact whatever the group.
        assert!(pca_is_exact(40, d, d));
        assert!(max_diff(&pca(&features(40, d), d, 0).unwrap(), &features(40, d)) < 1e-5);
        assert_eq!(group_sizes(10, 0), vec![10]);
        assert_eq!(group_sizes(10, 128), vec![10]);
    }
}
