//! Fused multi-head self-attention for CPU inference:
//! `softmax(q kᵀ * scale + mask) v` per (batch, head), in blocks of query
//! rows, never materializing the [heads, L, L] scores of a whole batch.
//!
//! Reads q, k and v straight from the `in_proj` output laid out
//! [batch, len, 3, heads, head_dim] (`nn.MultiheadAttention`'s packed
//! projection) and writes [batch, len, heads * head_dim], the `out_proj`
//! input, so no tensor is permuted or copied to a contiguous layout. Each
//! (batch, head) packs its own kᵀ and v (L x head_dim, cache-resident) and
//! runs on rayon. With the causal mask (the text tower) key blocks above the
//! diagonal are skipped; the rest of the mask is applied as -inf before the
//! softmax, as the official code adds `triu(-inf, 1)`.

use rayon::prelude::*;

use super::simd::{Isa, Simd, MAX_LANES};

/// Query rows per block: 6 rows x `BLOCK_VECS` vectors of scores (and of
/// the output) in registers, 24 of AVX-512's 32, so each load of kᵀ or v
/// feeds six FMAs.
const ROWS: usize = 6;

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    /// Tokens per sequence (L).
    pub len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Model width, `heads * head_dim`.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// `out[b, i, h*hd..(h+1)*hd] = softmax_j(q_i · k_j * scale) v_j` for every
/// batch `b`, token `i` and head `h`, with `j <= i` only when `causal`.
///
/// `qkv` is [batch, len, 3, heads, head_dim] (q, then k, then v for each
/// token), `out` is [batch, len, heads * head_dim].
/// Panics when the slice lengths do not match `shape`.
pub fn attention(isa: Isa, qkv: &[f32], shape: AttentionShape, scale: f32, causal: bool, out: &mut [f32]) {
    attention_biased(isa, qkv, None, shape, scale, causal, out);
}

/// [`attention`] of `qkv + bias`, the `in_proj` bias `[3 * width]` added
/// as q, k and v are read (in the order `(qkv + b) * scale` for q, as
/// `Linear` then `q * scale`), which saves the bias add's pass over the
/// [batch, len, 3 * width] projection.
pub fn attention_biased(isa: Isa, qkv: &[f32], bias: Option<&[f32]>, shape: AttentionShape, scale: f32, causal: bool, out: &mut [f32]) {
    let AttentionShape { batch, len, heads, head_dim } = shape;
    if let Some(b) = bias {
        assert_eq!(b.len(), 3 * shape.width(), "attention: in_proj bias of {} values for width {}", b.len(), shape.width());
    }
    let tokens = batch * len;
    assert_eq!(qkv.len(), tokens * 3 * shape.width(), "attention: qkv is not [{batch}, {len}, 3, {heads}, {head_dim}]");
    assert_eq!(out.len(), tokens * shape.width(), "attention: out is not [{batch}, {len}, {}]", shape.width());
    let out = OutPtr(out.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|task| {
        attention_task(isa, qkv, bias, shape, scale, causal, task / heads, task % heads, out);
    });
}

/// The output buffer shared by the (batch, head) tasks: each writes only
/// its own head's columns of its own batch's rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `attention_head`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

simd_entry!(fn attention_task => attention_head(
    qkv: &[f32], bias: Option<&[f32]>, shape: AttentionShape, scale: f32, causal: bool, b: usize, h: usize, out: OutPtr));

fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// One (batch, head): packs kᵀ [hd, lp] and v [len, hdp] (zero padded),
/// then for each block of query rows: scores, softmax, · v.
#[inline(always)]
unsafe fn attention_head<S: Simd>(
    qkv: &[f32],
    bias: Option<&[f32]>,
    shape: AttentionShape,
    scale: f32,
    causal: bool,
    b: usize,
    h: usize,
    out: OutPtr,
) {
    let (l, hd, w) = (shape.len, shape.head_dim, shape.width());
    // Scores are computed a vector at a time at least; v rows a block of vectors.
    let lp = round_up(l, MAX_LANES);
    let hdp = round_up(hd, S::BLOCK_VECS * S::LANES);
    let token = |t: usize, part: usize| (b * l + t) * 3 * w + part * w + h * hd;

    let zeros = vec![0f32; 3 * w];
    let bias = bias.unwrap_or(&zeros);
    let (bq, bk, bv) = (&bias[h * hd..][..hd], &bias[w + h * hd..][..hd], &bias[2 * w + h * hd..][..hd]);
    let mut kt = vec![0f32; hd * lp];
    let mut v = vec![0f32; l * hdp];
    for t in 0..l {
        for (d, (k, b)) in qkv[token(t, 1)..][..hd].iter().zip(bk).enumerate() {
            kt[d * lp + t] = k + b;
        }
        for ((dst, x), b) in v[t * hdp..t * hdp + hd].iter_mut().zip(&qkv[token(t, 2)..][..hd]).zip(bv) {
            *dst = x + b;
        }
    }
    let mut q = vec![0f32; ROWS * hd];
    let mut scores = vec![0f32; ROWS * lp];
    let mut acc = vec![0f32; ROWS * hdp];
    let mut inv_sums = [0f32; ROWS];
    for i0 in (0..l).step_by(ROWS) {
        let rows = ROWS.min(l - i0);
        // Rows past the end repeat the last one; their results are dropped.
        for r in 0..ROWS {
            let src = &qkv[token(i0 + r.min(rows - 1), 0)..][..hd];
            for ((qd, s), b) in q[r * hd..(r + 1) * hd].iter_mut().zip(src).zip(bq) {
                *qd = (s + b) * scale;
            }
        }
        // Keys this block attends to: all, or up to its last row.
        let keys = if causal { (i0 + ROWS).min(l) } else { l };
        let cols = round_up(keys, S::LANES);
        let wide = S::BLOCK_VECS * S::LANES;
        let mut j = 0;
        while j + wide <= cols {
            scores_block::<S, 4>(&q, hd, &kt, lp, j, S::BLOCK_VECS, &mut scores);
            j += wide;
        }
        while j < cols {
            scores_block::<S, 1>(&q, hd, &kt, lp, j, 1, &mut scores);
            j += S::LANES;
        }
        for r in 0..ROWS {
            let valid = if causal { (i0 + r + 1).min(l) } else { l };
            let row = &mut scores[r * lp..r * lp + cols];
            row[valid..].fill(f32::NEG_INFINITY);
            inv_sums[r] = 1.0 / exp_row::<S>(row);
        }
        probs_times_v::<S>(&scores, lp, keys, &v, hdp, &mut acc);
        for r in 0..rows {
            // SAFETY: row i0 + r of batch b, head h's columns: this task's alone.
            let dst = std::slice::from_raw_parts_mut(out.0.add((b * l + i0 + r) * w + h * hd), hd);
            for (y, a) in dst.iter_mut().zip(&acc[r * hdp..r * hdp + hd]) {
                *y = a * inv_sums[r];
            }
        }
    }
}

/// `scores[r, j0..j0 + vecs * LANES] = q[r] · kt[:, j]` for the block's
/// rows, `vecs <= V` vectors of keys at a time: each kᵀ load feeds ROWS FMAs.
#[inline(always)]
unsafe fn scores_block<S: Simd, const V: usize>(q: &[f32], hd: usize, kt: &[f32], lp: usize, j0: usize, vecs: usize, scores: &mut [f32]) {
    debug_assert!(vecs <= V && j0 + vecs * S::LANES <= lp);
    debug_assert!(q.len() == ROWS * hd && kt.len() == hd * lp && scores.len() == ROWS * lp);
    let (q, kt) = (q.as_ptr(), kt.as_ptr());
    let mut acc = [[S::splat(0.0); V]; ROWS];
    for d in 0..hd {
        let mut k = [S::splat(0.0); V];
        for (c, x) in k.iter_mut().enumerate().take(vecs) {
            *x = S::load(kt.add(d * lp + j0 + c * S::LANES));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let qr = S::splat(*q.add(r * hd + d));
            for c in 0..vecs {
                a[c] = S::fma(qr, k[c], a[c]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (c, x) in a.iter().enumerate().take(vecs) {
            S::store(scores.as_mut_ptr().add(r * lp + j0 + c * S::LANES), *x);
        }
    }
}

/// The softmax's numerators in place, `e^(x - max)`, and their sum, for a
/// row whose length is a multiple of the vector width (masked and padded
/// entries are -inf and come out 0). The division by the sum is left to
/// the output row (hd values instead of L), one rounding apart from
/// candle's `softmax_last_dim`.
#[inline(always)]
unsafe fn exp_row<S: Simd>(row: &mut [f32]) -> f32 {
    let p = row.as_mut_ptr();
    let n = row.len();
    let mut m = S::splat(f32::NEG_INFINITY);
    for j in (0..n).step_by(S::LANES) {
        m = S::max(m, S::load(p.add(j)));
    }
    let max = S::splat(S::reduce_max(m));
    let mut sum = S::splat(0.0);
    for j in (0..n).step_by(S::LANES) {
        let e = S::exp(S::sub(S::load(p.add(j)), max));
        S::store(p.add(j), e);
        sum = S::add(sum, e);
    }
    S::reduce_sum(sum)
}

/// `acc[r] = sum_{j < keys} probs[r, j] v[j]` for the block's rows, `BLOCK_VECS`
/// vectors of head dimensions at a time.
#[inline(always)]
unsafe fn probs_times_v<S: Simd>(probs: &[f32], lp: usize, keys: usize, v: &[f32], hdp: usize, acc: &mut [f32]) {
    debug_assert!(probs.len() == ROWS * lp && v.len() >= keys * hdp && acc.len() == ROWS * hdp);
    let (p, v) = (probs.as_ptr(), v.as_ptr());
    let step = S::BLOCK_VECS * S::LANES;
    for d0 in (0..hdp).step_by(step) {
        let mut a = [[S::splat(0.0); 4]; ROWS];
        for j in 0..keys {
            let mut vj = [S::splat(0.0); 4];
            for (c, x) in vj.iter_mut().enumerate().take(S::BLOCK_VECS) {
                *x = S::load(v.add(j * hdp + d0 + c * S::LANES));
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let pr = S::splat(*p.add(r * lp + j));
                for c in 0..S::BLOCK_VECS {
                    ar[c] = S::fma(pr, vj[c], ar[c]);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            for (c, x) in ar.iter().enumerate().take(S::BLOCK_VECS) {
                S::store(acc.as_mut_ptr().add(r * hdp + d0 + c * S::LANES), *x);
            }
        }
    }
}
