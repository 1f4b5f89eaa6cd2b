//! Row-wise kernels of the transformer block, each one pass over memory:
//! bias + QuickGELU on the `c_fc` output, layer norm, and residual add +
//! layer norm. Rows run in parallel on rayon.
//!
//! Formulas as the official `model_longclip.py`: QuickGELU is
//! `x * sigmoid(1.702 x)`; layer norm is `(x - mean) / sqrt(var + eps) * w + b`
//! with the biased variance (`torch.nn.LayerNorm`), computed in two passes.

use rayon::prelude::*;

use super::simd::{exp_scalar, Isa, Simd};

/// Rows per rayon task: enough work to amortize the task, small enough to
/// split a batch over the cores.
const ROWS_PER_TASK: usize = 8;

/// `out = y * sigmoid(1.702 y)` with `y = x + bias` (bias broadcast over rows
/// of its length; `None`: `y = x`). `x` and `out` have the same length, a
/// multiple of the bias length. QuickGELU of the official CLIP code.
pub fn bias_quick_gelu(isa: Isa, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "bias_quick_gelu: input and output lengths differ");
    let width = bias.map_or(x.len().max(1), <[f32]>::len).max(1);
    assert_eq!(x.len() % width, 0, "bias_quick_gelu: length is not a multiple of the bias");
    let rows = (4096 / width).max(1);
    x.par_chunks(rows * width)
        .zip(out.par_chunks_mut(rows * width))
        .for_each(|(x, out)| quick_gelu_chunk(isa, x, bias, out, width));
}

simd_entry!(fn quick_gelu_chunk => quick_gelu_rows(x: &[f32], bias: Option<&[f32]>, out: &mut [f32], width: usize));

#[inline(always)]
unsafe fn quick_gelu_rows<S: Simd>(x: &[f32], bias: Option<&[f32]>, out: &mut [f32], width: usize) {
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mut j = 0;
        while j + S::LANES <= width {
            let mut y = S::load(xr.as_ptr().add(j));
            if let Some(b) = bias {
                y = S::add(y, S::load(b.as_ptr().add(j)));
            }
            S::store(or.as_mut_ptr().add(j), quick_gelu_vec::<S>(y));
            j += S::LANES;
        }
        for j in j..width {
            or[j] = quick_gelu(xr[j] + bias.map_or(0.0, |b| b[j]));
        }
    }
}

/// QuickGELU of one vector, `y / (1 + e^(-1.702 y))`: the operations of
/// every fused QuickGELU (here and in the int8 GEMM's epilogue).
#[inline(always)]
pub(crate) unsafe fn quick_gelu_vec<S: Simd>(y: S::V) -> S::V {
    let e = S::exp(S::mul(y, S::splat(-1.702)));
    S::div(y, S::add(S::splat(1.0), e))
}

/// QuickGELU of one value, as [`quick_gelu_vec`] on one lane.
#[inline(always)]
pub(crate) fn quick_gelu(y: f32) -> f32 {
    y / (1.0 + exp_scalar(y * -1.702))
}

/// Layer norm over rows of `gamma.len()`: `out = (x - mean) / sqrt(var +
/// eps) * gamma + beta`. `x.len()` must be a multiple of the width.
pub fn layer_norm(isa: Isa, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let w = check_rows("layer_norm", x.len(), out.len(), gamma, beta);
    x.par_chunks(ROWS_PER_TASK * w)
        .zip(out.par_chunks_mut(ROWS_PER_TASK * w))
        .for_each(|(x, out)| layer_norm_chunk(isa, x, None, gamma, beta, eps, None, out));
}

/// The residual add and the layer norm after it, in one pass: `sum = x +
/// delta` and `out = layer_norm(sum)` (rows of `gamma.len()`).
pub fn add_layer_norm(
    isa: Isa,
    x: &[f32],
    delta: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    out: &mut [f32],
) {
    add_bias_layer_norm(isa, x, delta, None, gamma, beta, eps, sum, out);
}

/// [`add_layer_norm`] with the bias of the layer that made `delta` (`None`:
/// none): `sum = x + (delta + bias)`, the additions of `Linear` then the
/// residual add, so `out_proj` can leave its bias to this pass.
#[allow(clippy::too_many_arguments)]
pub fn add_bias_layer_norm(
    isa: Isa,
    x: &[f32],
    delta: &[f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    out: &mut [f32],
) {
    let w = check_rows("add_layer_norm", x.len(), out.len(), gamma, beta);
    assert!(delta.len() == x.len() && sum.len() == x.len(), "add_layer_norm: residual lengths differ");
    assert!(bias.is_none_or(|b| b.len() == w), "add_layer_norm: bias length is not the width {w}");
    let n = ROWS_PER_TASK * w;
    x.par_chunks(n)
        .zip(delta.par_chunks(n))
        .zip(sum.par_chunks_mut(n).zip(out.par_chunks_mut(n)))
        .for_each(|((x, d), (s, out))| layer_norm_chunk(isa, x, Some((d, bias)), gamma, beta, eps, Some(s), out));
}

/// The residual add of a layer whose bias was left out: `out = x + (delta
/// + bias)` (rows of `bias.len()`), one pass instead of `Linear`'s bias add
/// and then the residual add, with the same two roundings.
pub fn add_bias_residual(isa: Isa, x: &[f32], delta: &[f32], bias: &[f32], out: &mut [f32]) {
    let w = bias.len().max(1);
    assert!(x.len() == delta.len() && x.len() == out.len() && x.len() % w == 0, "add_bias_residual: lengths differ");
    let n = ROWS_PER_TASK * w;
    x.par_chunks(n)
        .zip(delta.par_chunks(n))
        .zip(out.par_chunks_mut(n))
        .for_each(|((x, d), out)| residual_chunk(isa, x, d, bias, out));
}

simd_entry!(fn residual_chunk => residual_rows(x: &[f32], delta: &[f32], bias: &[f32], out: &mut [f32]));

#[inline(always)]
unsafe fn residual_rows<S: Simd>(x: &[f32], delta: &[f32], bias: &[f32], out: &mut [f32]) {
    let w = bias.len().max(1);
    for ((x, d), o) in x.chunks(w).zip(delta.chunks(w)).zip(out.chunks_mut(w)) {
        add_row::<S>(x, d, Some(bias), o);
    }
}

fn check_rows(what: &str, x: usize, out: usize, gamma: &[f32], beta: &[f32]) -> usize {
    let w = gamma.len();
    assert!(w > 0 && beta.len() == w, "{what}: weight and bias lengths differ");
    assert!(x == out && x % w == 0, "{what}: {x} values are not rows of {w}");
    w
}

simd_entry!(fn layer_norm_chunk => layer_norm_rows(
    x: &[f32], delta: Option<(&[f32], Option<&[f32]>)>, gamma: &[f32], beta: &[f32], eps: f32, sum: Option<&mut [f32]>, out: &mut [f32]));

/// Rows of `x` (plus `delta`, stored to `sum`) normalized into `out`.
#[inline(always)]
unsafe fn layer_norm_rows<S: Simd>(
    x: &[f32],
    delta: Option<(&[f32], Option<&[f32]>)>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    mut sum: Option<&mut [f32]>,
    out: &mut [f32],
) {
    let w = gamma.len();
    for (r, or) in out.chunks_exact_mut(w).enumerate() {
        let row = r * w..(r + 1) * w;
        // The row being normalized: x, or x + delta written to `sum`.
        let src: &[f32] = match (delta, sum.as_deref_mut()) {
            (Some((d, bias)), Some(s)) => {
                add_row::<S>(&x[row.clone()], &d[row.clone()], bias, &mut s[row.clone()]);
                &s[row]
            }
            _ => &x[row],
        };
        let mean = sum_row::<S>(src, 0.0, false) / w as f32;
        let var = sum_row::<S>(src, mean, true) / w as f32;
        let inv_std = 1.0 / (var + eps).sqrt();
        let (m, is) = (S::splat(mean), S::splat(inv_std));
        let mut j = 0;
        while j + S::LANES <= w {
            let c = S::mul(S::sub(S::load(src.as_ptr().add(j)), m), is);
            let y = S::fma(c, S::load(gamma.as_ptr().add(j)), S::load(beta.as_ptr().add(j)));
            S::store(or.as_mut_ptr().add(j), y);
            j += S::LANES;
        }
        for j in j..w {
            or[j] = (src[j] - mean) * inv_std * gamma[j] + beta[j];
        }
    }
}

/// `s = x + d`, or `x + (d + bias)` with a bias (one row).
#[inline(always)]
unsafe fn add_row<S: Simd>(x: &[f32], d: &[f32], bias: Option<&[f32]>, s: &mut [f32]) {
    let mut j = 0;
    while j + S::LANES <= x.len() {
        let mut dv = S::load(d.as_ptr().add(j));
        if let Some(b) = bias {
            dv = S::add(dv, S::load(b.as_ptr().add(j)));
        }
        S::store(s.as_mut_ptr().add(j), S::add(S::load(x.as_ptr().add(j)), dv));
        j += S::LANES;
    }
    for j in j..x.len() {
        s[j] = x[j] + bias.map_or(d[j], |b| d[j] + b[j]);
    }
}

/// `sum(x)`, or `sum((x - mean)^2)` when `squares`, with four accumulators.
#[inline(always)]
unsafe fn sum_row<S: Simd>(x: &[f32], mean: f32, squares: bool) -> f32 {
    let m = S::splat(mean);
    let mut acc = [S::splat(0.0); 4];
    let step = 4 * S::LANES;
    let mut j = 0;
    while j + step <= x.len() {
        for (k, a) in acc.iter_mut().enumerate() {
            let v = S::load(x.as_ptr().add(j + k * S::LANES));
            *a = if squares { S::fma(S::sub(v, m), S::sub(v, m), *a) } else { S::add(*a, v) };
        }
        j += step;
    }
    let mut total = S::reduce_sum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])));
    for v in &x[j..] {
        total += if squares { (v - mean) * (v - mean) } else { *v };
    }
    total
}

simd_entry!(fn exp_chunk => exp_rows(x: &[f32], out: &mut [f32]));

#[inline(always)]
unsafe fn exp_rows<S: Simd>(x: &[f32], out: &mut [f32]) {
    let mut j = 0;
    while j + S::LANES <= x.len() {
        S::store(out.as_mut_ptr().add(j), S::exp(S::load(x.as_ptr().add(j))));
        j += S::LANES;
    }
    for j in j..x.len() {
        out[j] = exp_scalar(x[j]);
    }
}

/// `out = e^x` with the kernels' polynomial exp (for tests).
pub fn exp_slice(isa: Isa, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    exp_chunk(isa, x, out);
}
