//! Knowledge-preserved stretching (KPS): a CLIP positional table of L rows
//! becomes 4L - 60 rows (77 -> 248). Rows 0..20 are kept; each later
//! interval is interpolated four times; the last four rows extrapolate.
//!
//! The official `load_from_clip` does this arithmetic on the model's dtype,
//! which is fp16 after `convert_weights`: every intermediate is rounded to
//! fp16 here too, so the table matches it bit for bit.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use half::f16;

use crate::checkpoint::{Checkpoint, KEEP_POSITIONS};

/// Rounds like one fp16 tensor op: computed in f32, stored as fp16.
fn h(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Stretches a [L, W] table to [4L - 3*20, W], in fp16 arithmetic.
pub fn stretch_table(table: &Tensor) -> Result<Tensor> {
    let (len, width) = table.dims2()?;
    let keep = KEEP_POSITIONS;
    if len < keep + 2 {
        bail!("cannot stretch a positional table of {len} rows (need at least {})", keep + 2);
    }
    let pre: Vec<Vec<f32>> = table.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let pre: Vec<Vec<f32>> = pre.into_iter().map(|r| r.into_iter().map(h).collect()).collect();
    let new_len = 4 * len - 3 * keep;
    let mut out = vec![vec![0f32; width]; new_len];
    out[..keep].clone_from_slice(&pre[..keep]);
    for i in 0..len - 1 - keep {
        let (a, b) = (&pre[i + keep], &pre[i + 1 + keep]);
        for d in 0..width {
            // k*a/4 + (4-k)*b/4 with each product and quotient rounded.
            let mix = |ka: f32, kb: f32| h(h(h(ka * a[d]) / 4.0) + h(h(kb * b[d]) / 4.0));
            out[4 * i + keep][d] = a[d];
            out[4 * i + 1 + keep][d] = mix(3.0, 1.0);
            out[4 * i + 2 + keep][d] = mix(2.0, 2.0);
            out[4 * i + 3 + keep][d] = mix(1.0, 3.0);
        }
    }
    let (last, prev) = (&pre[len - 1], &pre[len - 2]);
    for k in 0..4 {
        let row = &mut out[new_len - 4 + k];
        for d in 0..width {
            let step = h(h(k as f32 * h(last[d] - prev[d])) / 4.0);
            row[d] = h(last[d] + step);
        }
    }
    let flat: Vec<f32> = out.into_iter().flatten().collect();
    Ok(Tensor::from_vec(flat, (new_len, width), table.device())?)
}

/// A 77-position CLIP becomes a Long-CLIP: `positional_embedding` and
/// `positional_embedding_res` both hold the stretched table, as
/// `load_from_clip` leaves them (the second is the one fine-tuning trains).
pub fn stretch_checkpoint(mut ckpt: Checkpoint) -> Result<Checkpoint> {
    if ckpt.is_long_clip() {
        bail!(
            "{}: already a Long-CLIP checkpoint ({} positions); stretch takes a plain CLIP",
            ckpt.path.display(),
            ckpt.config.text.context_length
        );
    }
    let table = stretch_table(ckpt.get("positional_embedding")?)?;
    ckpt.config.text.context_length = table.dim(0)?;
    ckpt.tensors.insert("positional_embedding_res".into(), table.clone());
    ckpt.tensors.insert("positional_embedding".into(), table);
    Ok(ckpt)
}
