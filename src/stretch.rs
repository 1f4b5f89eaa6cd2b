//! Knowledge-preserved stretching (KPS): a positional table of L rows
//! becomes K + (L - K)·R rows. Rows 0..K are kept; each later interval is
//! interpolated R times; the last R rows extrapolate. The official
//! `load_from_clip` is K = 20, R = 4 (77 -> 248).
//!
//! The official code does this arithmetic on the model's dtype, which is
//! fp16 after `convert_weights`: every intermediate is rounded to fp16 here
//! too, so the table matches it bit for bit. A Long-CLIP table stored in
//! f32 or bf16 (a fine-tuned one) is stretched in f32 instead, so that its
//! kept rows stay exactly as they were.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use half::f16;

use crate::checkpoint::{Checkpoint, KEEP_POSITIONS};

/// The official interpolation ratio of `load_from_clip`.
pub const RATIO: usize = 4;

/// Rounds like one fp16 tensor op: computed in f32, stored as fp16.
fn h(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The most positions a stretched table may have: 65,536 (16x the longest
/// text models in use; each position is a row of the table and of every
/// attention mask, so an absurd ratio would only exhaust memory).
pub const MAX_POSITIONS: usize = 65_536;

/// Rows after stretching `len` rows, keeping `keep`, `ratio` rows per interval.
pub fn stretched_len(len: usize, keep: usize, ratio: usize) -> usize {
    keep + (len - keep) * ratio
}

/// Stretches a [L, W] table to [4L - 3*20, W], in fp16 arithmetic
/// (the official `load_from_clip`).
pub fn stretch_table(table: &Tensor) -> Result<Tensor> {
    stretch_table_with(table, KEEP_POSITIONS, RATIO, true)
}

/// Stretches a [L, W] table to [K + (L - K)·R, W]: rows 0..K as they are,
/// then for each row a in K..L-1 (with b the next) a followed by the R - 1
/// rows (R-j)·a/R + j·b/R, then the last row plus j·(last - prev)/R for
/// j in 0..R. With `fp16`, every product, quotient and sum is rounded to
/// fp16 as torch does on a half tensor; otherwise f32 throughout.
pub fn stretch_table_with(table: &Tensor, keep: usize, ratio: usize, fp16: bool) -> Result<Tensor> {
    let (len, width) = table.dims2()?;
    if ratio < 1 {
        bail!("the interpolation ratio must be at least 1, got {ratio}");
    }
    if len < keep + 2 {
        bail!("cannot stretch a positional table of {len} rows keeping {keep} (need at least {})", keep + 2);
    }
    let new_len = (len - keep).checked_mul(ratio).and_then(|n| n.checked_add(keep)).filter(|&n| n <= MAX_POSITIONS);
    if new_len.is_none() {
        bail!(
            "--keep {keep} --ratio {ratio} on {len} rows would give more than {MAX_POSITIONS} positions; \
             the largest ratio here is {}",
            (MAX_POSITIONS - keep) / (len - keep)
        );
    }
    let h = |x: f32| if fp16 { h(x) } else { x };
    let r = ratio as f32;
    let pre: Vec<Vec<f32>> = table.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let pre: Vec<Vec<f32>> = pre.into_iter().map(|row| row.into_iter().map(h).collect()).collect();
    let new_len = stretched_len(len, keep, ratio);
    let mut out = vec![vec![0f32; width]; new_len];
    out[..keep].clone_from_slice(&pre[..keep]);
    for i in 0..len - 1 - keep {
        let (a, b) = (&pre[i + keep], &pre[i + 1 + keep]);
        let base = ratio * i + keep;
        out[base].clone_from_slice(a);
        for j in 1..ratio {
            let (ka, kb) = ((ratio - j) as f32, j as f32);
            let row = &mut out[base + j];
            for d in 0..width {
                // (R-j)*a/R + j*b/R with each product and quotient rounded.
                row[d] = h(h(h(ka * a[d]) / r) + h(h(kb * b[d]) / r));
            }
        }
    }
    let (last, prev) = (&pre[len - 1], &pre[len - 2]);
    for k in 0..ratio {
        let row = &mut out[new_len - ratio + k];
        for d in 0..width {
            let step = h(h(k as f32 * h(last[d] - prev[d])) / r);
            row[d] = h(last[d] + step);
        }
    }
    let flat: Vec<f32> = out.into_iter().flatten().collect();
    Ok(Tensor::from_vec(flat, (new_len, width), table.device())?)
}

/// A 77-position CLIP becomes a Long-CLIP: `positional_embedding` and
/// `positional_embedding_res` both hold the stretched table, as
/// `load_from_clip` leaves them (the second is the one fine-tuning trains).
pub fn stretch_checkpoint(ckpt: Checkpoint) -> Result<Checkpoint> {
    if ckpt.is_long_clip() {
        bail!(
            "{}: already a Long-CLIP checkpoint ({} positions); stretch takes a plain CLIP",
            ckpt.path.display(),
            ckpt.config.text.context_length
        );
    }
    stretch_checkpoint_with(ckpt, KEEP_POSITIONS, RATIO)
}

/// KPS with any `keep` (K) and `ratio` (R), of a plain CLIP or of a
/// Long-CLIP (its merged table: rows 0..K' of `positional_embedding`, the
/// rest of `positional_embedding_res`). Both tables of the result hold the
/// stretched table and the config records the new split K.
///
/// A plain CLIP is stretched in fp16 as `load_from_clip` does; a Long-CLIP
/// in fp16 when its tables are fp16, in f32 otherwise.
///
/// Errors on an FG-CLIP or GOAL checkpoint (their long tables are trained
/// at 248 rows, not stretched) and when `keep + 2` exceeds the positions.
pub fn stretch_checkpoint_with(mut ckpt: Checkpoint, keep: usize, ratio: usize) -> Result<Checkpoint> {
    // FG-CLIP and GOAL ship their long tables already trained at 248 rows,
    // and their other tables would not follow a stretched merged table.
    let family = ckpt.config.family;
    if family != crate::family::Family::LongClip {
        bail!(
            "{}: `stretch` is Long-CLIP's knowledge-preserved stretching; this is a {family} checkpoint, \
             whose long position table is already trained (see docs/families.md)",
            ckpt.path.display()
        );
    }
    let len = ckpt.config.text.context_length;
    if len < keep + 2 {
        bail!(
            "{}: cannot keep {keep} of its {len} positions and stretch the rest (need at least {} positions)",
            ckpt.path.display(),
            keep + 2
        );
    }
    let fp16 = if ckpt.is_long_clip() {
        let dtypes = [ckpt.get("positional_embedding")?.dtype(), ckpt.get("positional_embedding_res")?.dtype()];
        dtypes.iter().all(|d| *d == DType::F16)
    } else {
        true
    };
    let table = stretch_table_with(&ckpt.text_positions()?, keep, ratio, fp16)?;
    ckpt.config.text.context_length = table.dim(0)?;
    ckpt.config.text.keep_positions = keep;
    ckpt.tensors.insert("positional_embedding_res".into(), table.clone());
    ckpt.tensors.insert("positional_embedding".into(), table);
    Ok(ckpt)
}
