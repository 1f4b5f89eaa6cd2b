//! The Long-CLIP model: a causal text transformer pooled at EOT and a ViT
//! image tower, as in the official `model_longclip.py`, built from a
//! [`Checkpoint`] with official tensor names.
//!
//! Texts are encoded at the length of their batch, not at 248: the mask is
//! causal, so padding after EOT cannot change the pooled feature.

use std::mem::MaybeUninit;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear};

use crate::checkpoint::{Activation, Checkpoint, Config};
use crate::family::{Family, TextPath};
use crate::kernels::attention::{attention, attention_biased, AttentionShape};
use crate::kernels::{elementwise, with_f32, Isa, Kernels};
use crate::kernels::gemm_int8::{self, Output};
use crate::kernels::gemm_bf16;
use crate::preprocess::Transform;
use crate::tokenizer::Encoding;

const LN_EPS: f64 = 1e-5;

/// What the model computes in: a candle dtype for the matmuls (residuals,
/// norms and softmax stay f32), or int8 dynamic quantization of the
/// transformer blocks' linear layers (CPU only; everything else in f32).
///
/// On the CPU, bf16 linear layers and matmuls run our own GEMM
/// ([`gemm_bf16`]: bf16 inputs, f32 accumulation) and int8 ones
/// [`gemm_int8`]; elsewhere candle's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Float(DType),
    /// Weights per output channel, activations per token (docs/cpu.md).
    Int8,
}

impl From<DType> for Precision {
    fn from(dtype: DType) -> Self {
        Precision::Float(dtype)
    }
}

impl Precision {
    /// `f32`, `f16`, `bf16` or `int8`, as `--dtype` spells it.
    pub fn name(self) -> String {
        match self {
            Precision::Float(d) => format!("{d:?}").to_lowercase(),
            Precision::Int8 => "int8".into(),
        }
    }

    /// The dtype of everything that is not an int8 linear layer.
    pub fn float(self) -> DType {
        match self {
            Precision::Float(d) => d,
            Precision::Int8 => DType::F32,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Loads tensors of one checkpoint onto a device in the compute dtype.
///
/// The checkpoint's tensors may be `Var`s (fine-tuning): every cast below is
/// then a graph op, so gradients reach the f32 master weights.
struct Loader<'a> {
    ckpt: &'a Checkpoint,
    device: &'a Device,
    /// `precision.float()`: the dtype of everything but int8 linear layers.
    dtype: DType,
    precision: Precision,
    /// Use ops candle can differentiate instead of its fused kernels.
    differentiable: bool,
    /// Our fused CPU kernels or candle's ops (inference on CPU only).
    kernels: Kernels,
    /// The towers whose transformer blocks are loaded.
    towers: Towers,
}

impl<'a> Loader<'a> {
    fn get(&self, key: &str) -> Result<Tensor> {
        Ok(self.ckpt.get(key)?.to_dtype(self.dtype)?.to_device(self.device)?)
    }

    /// Embeddings and tables that are added to the f32 residual stream.
    fn get_f32(&self, key: &str) -> Result<Tensor> {
        Ok(self.ckpt.get(key)?.to_dtype(DType::F32)?.to_device(self.device)?)
    }

    fn new(ckpt: &'a Checkpoint, device: &'a Device, precision: Precision, differentiable: bool) -> Self {
        let kernels = if differentiable { Kernels::Candle } else { Kernels::from_env() };
        Loader { ckpt, device, dtype: precision.float(), precision, differentiable, kernels, towers: Towers::Both }
    }

    /// A transformer block's linear layer (attention in/out projections,
    /// MLP c_fc/c_proj): packed for our bf16 or int8 GEMM on the CPU (once,
    /// here), else a candle `Linear` in the compute dtype.
    fn linear(&self, weight: &str, bias: &str) -> Result<Dense> {
        let packed = self.device.is_cpu() && !self.differentiable;
        let kernel = match self.precision {
            Precision::Int8 | Precision::Float(DType::BF16) if packed => {
                let w = self.ckpt.get(weight)?.to_dtype(DType::F32)?;
                let (n, k) = w.dims2().with_context(|| format!("{weight}: expected a 2-D weight"))?;
                let values = w.flatten_all()?.to_vec1::<f32>()?;
                let b = self.ckpt.get(bias)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                if b.len() != n {
                    bail!("{bias}: {} values for a weight of {n} outputs", b.len());
                }
                if self.precision == Precision::Int8 {
                    if k > gemm_int8::MAX_K {
                        bail!("{weight}: int8 needs K <= {}, got {k}", gemm_int8::MAX_K);
                    }
                    Kernel::Int8(gemm_int8::QuantizedWeight::from_weight(&values, n, k), b)
                } else {
                    Kernel::Bf16(gemm_bf16::PackedBf16::from_weight(&values, n, k), b)
                }
            }
            _ => Kernel::Candle(Linear::new(self.get(weight)?, Some(self.get(bias)?))),
        };
        Ok(Dense { kernel, dtype: self.dtype, flatten: self.differentiable })
    }

    /// Layer norms stay in f32 like the official `LayerNorm` subclass.
    fn layer_norm(&self, prefix: &str) -> Result<Norm> {
        let w = self.ckpt.get(&format!("{prefix}.weight"))?.to_dtype(DType::F32)?.to_device(self.device)?;
        let b = self.ckpt.get(&format!("{prefix}.bias"))?.to_dtype(DType::F32)?.to_device(self.device)?;
        let host = match self.device {
            Device::Cpu if !self.differentiable => Some((w.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?)),
            _ => None,
        };
        Ok(Norm { inner: LayerNorm::new(w, b, LN_EPS), differentiable: self.differentiable, host, kernels: self.kernels })
    }
}

/// A layer norm on the f32 residual stream (whatever the weights are: in
/// f16/bf16 only the matmuls run in the compute dtype, bf16 residuals lose
/// too much over 248 tokens). Inference uses candle's fused kernel, which
/// has no backward; training spells the formula out.
struct Norm {
    inner: LayerNorm,
    differentiable: bool,
    /// Weight and bias as plain f32 for the fused CPU kernels (CPU
    /// inference only).
    host: Option<(Vec<f32>, Vec<f32>)>,
    kernels: Kernels,
}

impl Norm {
    /// The weight and bias for our kernels, when they apply to `x`.
    fn fused(&self, x: &Tensor) -> Option<(&[f32], &[f32])> {
        match &self.host {
            Some((w, b)) if self.kernels == Kernels::Fused && is_cpu_f32(x) => Some((w, b)),
            _ => None,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((w, b)) = self.fused(x) {
            let x = x.contiguous()?;
            let mut out = vec![0f32; x.elem_count()];
            with_f32(&x, |x| elementwise::layer_norm(Isa::detect(), x, w, b, LN_EPS as f32, &mut out))?;
            return Ok(Tensor::from_vec(out, x.shape(), x.device())?);
        }
        if !self.differentiable {
            return Ok(self.inner.forward(x)?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        let bias = self.inner.bias().context("layer norm without bias")?;
        Ok(normed.broadcast_mul(self.inner.weight())?.broadcast_add(bias)?)
    }
}

impl Norm {
    /// The residual add and this norm: `(x + delta, norm(x + delta))`, in one
    /// pass with the fused kernels.
    /// `delta` is a layer's output whose bias (`bias`) is still to add.
    fn forward_residual(&self, x: &Tensor, delta: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let Some((w, b)) = self.fused(x) else {
            let sum = (x + add_bias(delta, bias)?)?;
            let normed = self.forward(&sum)?;
            return Ok((sum, normed));
        };
        let (x, delta) = (x.contiguous()?, delta.contiguous()?);
        let mut sum = vec![0f32; x.elem_count()];
        let mut out = vec![0f32; x.elem_count()];
        let mut norm = |x: &[f32], d: &[f32], bias: Option<&[f32]>| {
            elementwise::add_bias_layer_norm(Isa::detect(), x, d, bias, w, b, LN_EPS as f32, &mut sum, &mut out)
        };
        with_f32(&x, |x| {
            with_f32(&delta, |d| match bias {
                Some(bias) => with_f32(bias, |bias| norm(x, d, Some(bias))),
                None => Ok(norm(x, d, None)),
            })
        })???;
        Ok((Tensor::from_vec(sum, x.shape(), x.device())?, Tensor::from_vec(out, x.shape(), x.device())?))
    }
}

/// `delta + bias` (bias over the last dim), or `delta` without one.
fn add_bias(delta: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => delta.broadcast_add(b)?,
        None => delta.clone(),
    })
}

/// The residual add `x + (delta + bias)`: one pass with the fused kernels
/// on CPU f32, else candle's two adds.
fn residual(x: &Tensor, delta: &Tensor, bias: Option<&Tensor>, kernels: Kernels) -> Result<Tensor> {
    let Some(bias) = bias.filter(|_| kernels == Kernels::Fused && is_cpu_f32(x) && is_cpu_f32(delta)) else {
        return Ok((x + add_bias(delta, bias)?)?);
    };
    let (x, delta) = (x.contiguous()?, delta.contiguous()?);
    let mut out = vec![0f32; x.elem_count()];
    with_f32(&x, |x| with_f32(&delta, |d| with_f32(bias, |b| elementwise::add_bias_residual(Isa::detect(), x, d, b, &mut out))))???;
    Ok(Tensor::from_vec(out, x.shape(), x.device())?)
}

/// An f32 tensor on the CPU: what our kernels take.
fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// QuickGELU, `x * sigmoid(1.702 x)`, in one pass on CPU f32 with the fused
/// kernels, else as candle ops.
fn quick_gelu(h: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels == Kernels::Fused && is_cpu_f32(h) {
        return fused_bias_quick_gelu(h, None);
    }
    Ok((h * candle_nn::ops::sigmoid(&(h * 1.702)?)?)?)
}

/// QuickGELU of `h + bias` in one pass (bias [w] over h's last dim).
fn fused_bias_quick_gelu(h: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let h = h.contiguous()?;
    let mut out = vec![0f32; h.elem_count()];
    match bias {
        Some(b) => with_f32(&h, |x| with_f32(b, |b| elementwise::bias_quick_gelu(Isa::detect(), x, Some(b), &mut out)))??,
        None => with_f32(&h, |x| elementwise::bias_quick_gelu(Isa::detect(), x, None, &mut out))?,
    }
    Ok(Tensor::from_vec(out, h.shape(), h.device())?)
}

fn layer_norm(ln: &Norm, x: &Tensor) -> Result<Tensor> {
    ln.forward(x)
}

/// Softmax over the last dimension. candle's fused kernel has no backward;
/// the spelled-out form subtracts a detached max (softmax does not depend
/// on it, and a detached max has no tie-splitting gradient to get wrong).
fn softmax(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// How a [`Dense`] multiplies: candle's `Linear`, or one of our CPU GEMMs
/// with the weight packed at load (and the f32 bias).
enum Kernel {
    Candle(Linear),
    Bf16(gemm_bf16::PackedBf16, Vec<f32>),
    Int8(gemm_int8::QuantizedWeight, Vec<f32>),
}

/// A linear layer whose weights may be f16/bf16/int8; input and output are f32.
struct Dense {
    kernel: Kernel,
    dtype: DType,
    /// Training: multiply [b*l, in] rows by the weight instead of a weight
    /// broadcast over the batch, whose backward would materialize a
    /// [b, in, out] gradient per layer before summing it.
    flatten: bool,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let inner = match &self.kernel {
            Kernel::Candle(inner) => inner,
            Kernel::Bf16(w, bias) => return rows_gemm(x, w.k, w.n, |x, m, out| gemm_bf16::gemm_uninit(x, m, w, Some(bias), out, true)),
            Kernel::Int8(w, bias) => return rows_gemm(x, w.k, w.n, |x, m, out| gemm_int8::gemm_uninit(x, m, w, Some(bias), Output::Linear, out, true)),
        };
        let x = x.to_dtype(self.dtype)?;
        Ok(rows_linear(inner, &x, self.flatten)?.to_dtype(DType::F32)?)
    }
}

/// `inner.forward(x)`, with `x [b, l, w]` multiplied as `[b * l, w]` rows
/// when `flatten` or when that is free (a contiguous `x`): candle runs a
/// 3-d input as b separate l-row GEMMs against the broadcast weight, each
/// too short to keep the cores busy (the image tower's 197 rows ran at
/// ~80% of one 1,576-row GEMM's rate).
fn rows_linear(inner: &Linear, x: &Tensor, flatten: bool) -> Result<Tensor> {
    match x.dims() {
        &[b, l, w] if flatten || x.is_contiguous() => Ok(inner.forward(&x.reshape((b * l, w))?)?.reshape((b, l, ()))?),
        _ => Ok(inner.forward(x)?),
    }
}

impl Dense {
    /// `(x · Wᵀ, Some(b))` when the bias can be left to the next pass (see
    /// [`Dense::forward_unbiased`]), else `(x · Wᵀ + b, None)`.
    fn forward_deferred_bias(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match self.forward_unbiased(x)? {
            Some((y, bias)) => Ok((y, Some(bias))),
            None => Ok((self.forward(x)?, None)),
        }
    }

    /// QuickGELU of this layer's output, applied in the GEMM's epilogue (the
    /// int8 kernel), or None when the kernel has no such epilogue.
    fn forward_quick_gelu(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Kernel::Int8(w, bias) = &self.kernel else { return Ok(None) };
        let gemm = |x: &[f32], m, out: &mut [MaybeUninit<f32>]| gemm_int8::gemm_uninit(x, m, w, Some(bias), Output::QuickGelu, out, true);
        Ok(Some(rows_gemm(x, w.k, w.n, gemm)?))
    }

    /// f32 candle weights on the CPU, inference: `x · Wᵀ` without the bias,
    /// and the bias, so the next element-wise pass can add it (one pass over
    /// the [b, l, 4w] activations instead of two). None otherwise.
    fn forward_unbiased(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let Kernel::Candle(inner) = &self.kernel else { return Ok(None) };
        let Some(bias) = inner.bias() else { return Ok(None) };
        if self.flatten || self.dtype != DType::F32 || !is_cpu_f32(x) {
            return Ok(None);
        }
        let weight_only = Linear::new(inner.weight().clone(), None);
        Ok(Some((rows_linear(&weight_only, x, false)?, bias.clone())))
    }
}

/// `x [.., k]` (CPU) as f32 rows through `gemm(x, rows, out)`, into `[.., n]`.
/// The output is not zeroed first (a memset of up to 20 MB per layer): the
/// GEMMs write every element.
fn rows_gemm(x: &Tensor, k: usize, n: usize, gemm: impl Fn(&[f32], usize, &mut [MaybeUninit<f32>])) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        bail!("linear layer of input width {k} got a tensor of shape {dims:?}");
    }
    let rows = x.elem_count() / k.max(1);
    let mut out = Vec::with_capacity(rows * n);
    // The activations are read in place (no copy) when they are contiguous f32.
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    with_f32(&x, |values| gemm(values, rows, &mut out.spare_capacity_mut()[..rows * n]))?;
    // SAFETY: the GEMM wrote all rows * n elements.
    unsafe { out.set_len(rows * n) };
    let mut shape = dims;
    *shape.last_mut().expect("rank >= 1") = n;
    Ok(Tensor::from_vec(out, shape, x.device())?)
}

/// `a @ b` in the compute dtype, result in f32. bf16 on the CPU runs
/// [`gemm_bf16`] (b packed per call) for `a [.., m, k] @ b [k, n]` and for
/// batches `[.., m, k] @ [.., k, n]` of the same leading dims.
fn matmul(a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    if dtype == DType::BF16 && a.device().is_cpu() && a.rank() >= 2 {
        return matmul_bf16_cpu(a, b);
    }
    Ok(a.to_dtype(dtype)?.matmul(&b.to_dtype(dtype)?)?.to_dtype(DType::F32)?)
}

fn matmul_bf16_cpu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (k, n) = (b.dim(D::Minus2)?, b.dim(D::Minus1)?);
    if a.dim(D::Minus1)? != k {
        bail!("matmul: shapes {:?} and {:?} do not match", a.dims(), b.dims());
    }
    let b_values = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if b.rank() == 2 {
        let w = gemm_bf16::PackedBf16::from_kn(&b_values, k, n);
        return rows_gemm(a, k, n, |x, m, out| gemm_bf16::gemm_uninit(x, m, &w, None, out, true));
    }
    let batch: usize = b.dims()[..b.rank() - 2].iter().product();
    let m = a.dim(D::Minus2)?;
    if a.dims()[..a.rank() - 2] != b.dims()[..b.rank() - 2] {
        bail!("matmul: batch dims of {:?} and {:?} differ", a.dims(), b.dims());
    }
    use rayon::prelude::*;
    let a_values = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; batch * m * n];
    out.par_chunks_mut((m * n).max(1)).enumerate().for_each(|(i, out)| {
        let w = gemm_bf16::PackedBf16::from_kn(&b_values[i * k * n..(i + 1) * k * n], k, n);
        gemm_bf16::gemm(&a_values[i * m * k..(i + 1) * m * k], m, &w, None, out, true);
    });
    let mut shape = a.dims().to_vec();
    *shape.last_mut().expect("rank >= 2") = n;
    Ok(Tensor::from_vec(out, shape, a.device())?)
}

struct Attention {
    in_proj: Dense,
    out_proj: Dense,
    heads: usize,
    scale: f64,
    dtype: DType,
    differentiable: bool,
    kernels: Kernels,
}

impl Attention {
    fn load(l: &Loader, p: &str, width: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            in_proj: l.linear(&format!("{p}.in_proj_weight"), &format!("{p}.in_proj_bias"))?,
            out_proj: l.linear(&format!("{p}.out_proj.weight"), &format!("{p}.out_proj.bias"))?,
            heads,
            scale: 1.0 / ((width / heads) as f64).sqrt(),
            dtype: l.dtype,
            differentiable: l.differentiable,
            kernels: l.kernels,
        })
    }

    /// Self-attention of `x` [b, l, w]; `mask` is the text tower's causal
    /// mask (the only mask either tower uses), added to the scores. Returns
    /// the output, and `out_proj`'s bias when it is left to the residual add.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let (b, l, w) = x.dims3()?;
        let hd = w / self.heads;
        let fused = self.kernels == Kernels::Fused && !self.differentiable && self.dtype == DType::F32;
        if fused && is_cpu_f32(x) {
            // The in_proj output [b, l, 3w] is [b, l, 3, heads, hd] as is;
            // candle's f32 GEMM leaves its bias to the kernel.
            let (qkv, bias) = match self.in_proj.forward_unbiased(x)? {
                Some((qkv, bias)) => (qkv, Some(bias)),
                None => (self.in_proj.forward(x)?, None),
            };
            let qkv = qkv.contiguous()?;
            let shape = AttentionShape { batch: b, len: l, heads: self.heads, head_dim: hd };
            let mut out = vec![0f32; b * l * w];
            let (scale, causal) = (self.scale as f32, mask.is_some());
            with_f32(&qkv, |qkv| match &bias {
                Some(bias) => with_f32(bias, |bias| attention_biased(Isa::detect(), qkv, Some(bias), shape, scale, causal, &mut out)),
                None => Ok(attention(Isa::detect(), qkv, shape, scale, causal, &mut out)),
            })??;
            return self.out_proj.forward_deferred_bias(&Tensor::from_vec(out, (b, l, w), x.device())?);
        }
        let qkv = self.in_proj.forward(x)?.reshape((b, l, 3, self.heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * self.scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut scores = matmul(&q, &k.t()?, self.dtype)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = softmax(&scores, self.differentiable)?;
        let out = matmul(&probs, &v, self.dtype)?.transpose(1, 2)?.reshape((b, l, w))?;
        Ok((self.out_proj.forward(&out)?, None))
    }
}

struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    c_fc: Dense,
    c_proj: Dense,
    activation: Activation,
}

/// Switches every block's attention, norms and activation (and the given
/// tower norms) between our fused kernels and candle's ops.
fn set_kernels(blocks: &mut [Block], norms: &mut [&mut Norm], kernels: Kernels) {
    for block in blocks {
        block.attn.kernels = kernels;
        block.ln_1.kernels = kernels;
        block.ln_2.kernels = kernels;
    }
    for norm in norms {
        norm.kernels = kernels;
    }
}

impl Block {
    fn load(l: &Loader, p: &str, width: usize, heads: usize, activation: Activation) -> Result<Self> {
        Ok(Self {
            ln_1: l.layer_norm(&format!("{p}.ln_1"))?,
            attn: Attention::load(l, &format!("{p}.attn"), width, heads)?,
            ln_2: l.layer_norm(&format!("{p}.ln_2"))?,
            c_fc: l.linear(&format!("{p}.mlp.c_fc.weight"), &format!("{p}.mlp.c_fc.bias"))?,
            c_proj: l.linear(&format!("{p}.mlp.c_proj.weight"), &format!("{p}.mlp.c_proj.bias"))?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (attn, attn_bias) = self.attn.forward(&layer_norm(&self.ln_1, x)?, mask)?;
        let (x, normed) = self.ln_2.forward_residual(x, &attn, attn_bias.as_ref())?;
        let fuse_bias = self.activation == Activation::QuickGelu && !self.attn.differentiable && self.ln_2.kernels == Kernels::Fused;
        let h = match self.fused_c_fc(&normed, fuse_bias)? {
            Some(h) => h,
            _ => {
                let h = self.c_fc.forward(&normed)?;
                match self.activation {
                    // Training keeps candle's ops (ours have no backward).
                    Activation::QuickGelu if self.attn.differentiable => quick_gelu(&h, Kernels::Candle)?,
                    Activation::QuickGelu => quick_gelu(&h, self.ln_2.kernels)?,
                    Activation::Gelu => h.gelu_erf()?,
                }
            }
        };
        let (delta, bias) = if fuse_bias { self.c_proj.forward_deferred_bias(&h)? } else { (self.c_proj.forward(&h)?, None) };
        residual(&x, &delta, bias.as_ref(), self.ln_2.kernels)
    }
}

impl Block {
    /// QuickGELU(c_fc(x)) in fewer passes when `fuse` allows: in the int8
    /// GEMM's epilogue, or as candle's GEMM and then bias + QuickGELU in one
    /// pass. None: no fused path applies (and nothing was computed).
    fn fused_c_fc(&self, normed: &Tensor, fuse: bool) -> Result<Option<Tensor>> {
        if !fuse {
            return Ok(None);
        }
        if let Some(h) = self.c_fc.forward_quick_gelu(normed)? {
            return Ok(Some(h));
        }
        match self.c_fc.forward_unbiased(normed)? {
            Some((h, bias)) => Ok(Some(fused_bias_quick_gelu(&h, Some(&bias))?)),
            None => Ok(None),
        }
    }
}

fn load_blocks(l: &Loader, prefix: &str, layers: usize, width: usize, heads: usize, act: Activation) -> Result<Vec<Block>> {
    (0..layers).map(|i| Block::load(l, &format!("{prefix}{i}"), width, heads, act)).collect()
}

pub struct TextEncoder {
    token_embedding: Embedding,
    positions: Tensor,
    blocks: Vec<Block>,
    /// False when the model was loaded without this tower ([`Towers`]).
    loaded: bool,
    ln_final: Norm,
    projection: Tensor,
    context_length: usize,
    device: Device,
    dtype: DType,
}

impl TextEncoder {
    /// The encoder of one text path: its position table and projection
    /// come from the family's rules ([`crate::family::Rules::text_tables`]).
    fn load(l: &Loader, path: TextPath) -> Result<Self> {
        let c = &l.ckpt.config.text;
        let tables = l.ckpt.config.family.rules().text_tables(l.ckpt, path)?;
        let positions = tables.positions.to_dtype(DType::F32)?.to_device(l.device)?;
        let context_length = positions.dim(0)?;
        Ok(Self {
            token_embedding: Embedding::new(l.get("token_embedding.weight")?, c.width),
            positions,
            blocks: if l.towers.text() { load_blocks(l, "transformer.resblocks.", c.layers, c.width, c.heads, l.ckpt.config.activation)? } else { Vec::new() },
            loaded: l.towers.text(),
            ln_final: l.layer_norm("ln_final")?,
            projection: l.get(tables.projection)?,
            context_length,
            device: l.device.clone(),
            dtype: l.dtype,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Our fused CPU kernels or candle's ops for this tower's inference.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        set_kernels(&mut self.blocks, &mut [&mut self.ln_final], kernels);
    }

    /// The device the tower's weights live on (where `encode` runs).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes token sequences (each SOT..EOT, unpadded) into unnormalized
    /// features [N, E]. All sequences run as one batch padded to the longest.
    pub fn encode(&self, batch: &[Vec<u32>]) -> Result<Tensor> {
        if !self.loaded {
            bail!("the model was loaded without its text tower (Towers::Vision)");
        }
        let len = batch.iter().map(Vec::len).max().context("empty text batch")?;
        if len > self.context_length {
            bail!("a sequence of {len} tokens exceeds the model's {} positions", self.context_length);
        }
        let mut ids = vec![0u32; batch.len() * len];
        let mut pool = Vec::with_capacity(batch.len());
        for (i, seq) in batch.iter().enumerate() {
            ids[i * len..i * len + seq.len()].copy_from_slice(seq);
            pool.push((i * len + eot_position(seq)) as u32);
        }
        let ids = Tensor::from_vec(ids, (batch.len(), len), &self.device)?;
        let x = self.token_embedding.forward(&ids)?.to_dtype(DType::F32)?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, len)?)?;
        let mask = causal_mask(len, &self.device)?;
        for block in &self.blocks {
            x = block.forward(&x, Some(&mask))?;
        }
        let x = layer_norm(&self.ln_final, &x)?;
        let width = x.dim(D::Minus1)?;
        let pool = Tensor::from_vec(pool, batch.len(), &self.device)?;
        let pooled = x.reshape((batch.len() * len, width))?.index_select(&pool, 0)?;
        matmul(&pooled, &self.projection, self.dtype)
    }
}

/// Where the official code pools: `text.argmax(-1)`, the first occurrence of
/// the largest id, which is the first EOT.
fn eot_position(seq: &[u32]) -> usize {
    let max = seq.iter().copied().max().unwrap_or(0);
    seq.iter().position(|&t| t == max).unwrap_or(0)
}

fn causal_mask(len: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (len, len), device)?)
}

pub struct VisionEncoder {
    patch_weight: Tensor,
    class_embedding: Tensor,
    positions: Tensor,
    ln_pre: Norm,
    blocks: Vec<Block>,
    /// False when the model was loaded without this tower ([`Towers`]).
    loaded: bool,
    ln_post: Norm,
    projection: Tensor,
    patch_size: usize,
    image_size: usize,
    dtype: DType,
}

impl VisionEncoder {
    fn load(l: &Loader) -> Result<Self> {
        let c = &l.ckpt.config.vision;
        // conv1 has stride = kernel: a matmul over flattened patches.
        let patch_weight = l.get("visual.conv1.weight")?.reshape((c.width, 3 * c.patch_size * c.patch_size))?.t()?.contiguous()?;
        Ok(Self {
            patch_weight,
            class_embedding: l.get_f32("visual.class_embedding")?.reshape((1, 1, c.width))?,
            positions: l.get_f32("visual.positional_embedding")?,
            ln_pre: l.layer_norm("visual.ln_pre")?,
            blocks: if l.towers.vision() { load_blocks(l, "visual.transformer.resblocks.", c.layers, c.width, c.heads, l.ckpt.config.activation)? } else { Vec::new() },
            loaded: l.towers.vision(),
            ln_post: l.layer_norm("visual.ln_post")?,
            projection: l.get("visual.proj")?,
            patch_size: c.patch_size,
            image_size: c.image_size,
            dtype: l.dtype,
        })
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Our fused CPU kernels or candle's ops for this tower's inference.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        set_kernels(&mut self.blocks, &mut [&mut self.ln_pre, &mut self.ln_post], kernels);
    }

    /// Encodes normalized pixels [N, 3, R, R] into unnormalized features [N, E].
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        if !self.loaded {
            bail!("the model was loaded without its vision tower (Towers::Text)");
        }
        let (n, c, h, w) = pixels.dims4()?;
        if c != 3 || h != self.image_size || w != self.image_size {
            bail!("expected pixels [N, 3, {r}, {r}], got {:?}", pixels.dims(), r = self.image_size);
        }
        let (p, g) = (self.patch_size, self.image_size / self.patch_size);
        let patches = pixels
            .to_dtype(DType::F32)?
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, 3 * p * p))?;
        let width = self.patch_weight.dim(1)?;
        let x = matmul(&patches, &self.patch_weight, self.dtype)?.reshape((n, g * g, width))?;
        let cls = self.class_embedding.broadcast_as((n, 1, width))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positions)?;
        let mut x = layer_norm(&self.ln_pre, &x)?;
        for block in &self.blocks {
            x = block.forward(&x, None)?;
        }
        let cls = layer_norm(&self.ln_post, &x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)?;
        matmul(&cls, &self.projection, self.dtype)
    }
}

/// Which towers a [`LongClip`] loads in full. A run that embeds only texts
/// or only images skips the other tower's transformer blocks (about 98% of
/// its weights), so they are neither widened nor kept in memory; that
/// tower's `encode` then returns an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Towers {
    #[default]
    Both,
    /// The text tower only (`embed --texts`).
    Text,
    /// The vision tower only (`embed --images`, `index build`/`add`).
    Vision,
}

impl Towers {
    fn text(self) -> bool {
        self != Towers::Vision
    }

    fn vision(self) -> bool {
        self != Towers::Text
    }
}

/// Both towers and the logit scale, for a checkpoint of any family
/// (`config.family`); the text tower is one of the family's text paths.
pub struct LongClip {
    pub text: TextEncoder,
    pub vision: VisionEncoder,
    pub logit_scale: f32,
    pub config: Config,
    /// The text path `text` runs (the family's default unless chosen).
    pub text_path: TextPath,
    /// What the model computes in (printed in summary lines and manifests).
    pub precision: Precision,
}

impl LongClip {
    /// The model with its family's default text path (long), computing in
    /// `precision` (a `DType`, or [`Precision::Int8`]).
    pub fn new(ckpt: &Checkpoint, device: &Device, precision: impl Into<Precision>) -> Result<Self> {
        Self::build(Loader::new(ckpt, device, precision.into(), false), None)
    }

    /// The model with text path `path` (None: the family's default).
    /// Errors: a path the family does not have (`short` is FG-CLIP's).
    pub fn with_text_path(ckpt: &Checkpoint, device: &Device, precision: impl Into<Precision>, path: Option<TextPath>) -> Result<Self> {
        Self::with_towers(ckpt, device, precision, path, Towers::Both)
    }

    /// [`LongClip::with_text_path`] with only `towers` loaded in full.
    pub fn with_towers(ckpt: &Checkpoint, device: &Device, precision: impl Into<Precision>, path: Option<TextPath>, towers: Towers) -> Result<Self> {
        let mut loader = Loader::new(ckpt, device, precision.into(), false);
        loader.towers = towers;
        Self::build(loader, path)
    }

    /// Our fused CPU kernels (the default unless `LONGCLIP_KERNELS=candle`)
    /// or candle's ops, for both towers. Only CPU inference has fused
    /// kernels; attention needs f32 (`--dtype bf16` keeps candle's there).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.text.set_kernels(kernels);
        self.vision.set_kernels(kernels);
    }

    pub fn family(&self) -> Family {
        self.config.family
    }

    /// Token ids by the family's tokenizer rules, cut to `context_length`.
    pub fn tokenize(&self, texts: &[String], context_length: usize) -> Result<Vec<Encoding>> {
        self.family().rules().tokenize(texts, context_length)
    }

    /// The family's image transform at the model's resolution.
    pub fn transform(&self) -> Transform {
        self.family().rules().transform(self.vision.image_size())
    }

    /// The same model with ops candle can differentiate (plain layer norm and
    /// softmax instead of the fused kernels), for fine-tuning. Give it a
    /// checkpoint whose tensors are `Var`s to get gradients for them, or
    /// detached copies to run the same arithmetic without a graph.
    pub fn trainable(ckpt: &Checkpoint, device: &Device, dtype: DType) -> Result<Self> {
        Self::build(Loader::new(ckpt, device, dtype.into(), true), None)
    }

    fn build(loader: Loader, path: Option<TextPath>) -> Result<Self> {
        let ckpt = loader.ckpt;
        if loader.precision == Precision::Int8 && !loader.device.is_cpu() {
            bail!("--dtype int8 runs on the CPU only; on CUDA use f16, bf16 or f32");
        }
        let logit_scale = match ckpt.tensors.get("logit_scale") {
            Some(t) => t.to_dtype(DType::F32)?.flatten_all()?.get(0)?.to_scalar::<f32>()?,
            None => (1.0f32 / 0.07).ln(),
        };
        let text_path = ckpt.config.family.text_path(path)?;
        Ok(Self {
            text: TextEncoder::load(&loader, text_path)?,
            vision: VisionEncoder::load(&loader)?,
            logit_scale,
            config: ckpt.config.clone(),
            text_path,
            precision: loader.precision,
        })
    }

    /// `logit_scale.exp() * normalize(image) @ normalize(text).T`, [images, texts].
    pub fn logits_per_image(&self, image_features: &Tensor, text_features: &Tensor) -> Result<Tensor> {
        let i = l2_normalize(image_features)?;
        let t = l2_normalize(text_features)?;
        Ok((i.matmul(&t.t()?)? * (self.logit_scale as f64).exp())?)
    }
}

/// `n` token sequences of `len` ids (SOT, varied ordinary tokens, EOT), for
/// benchmarks: encoder speed depends on the length, not the words.
pub fn synthetic_token_ids(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            let mut ids = vec![49406];
            ids.extend((1..len.saturating_sub(1)).map(|j| ((i * 7919 + j * 104729) % 49000 + 1) as u32));
            ids.push(49407);
            ids
        })
        .collect()
}

/// Rows divided by their L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// `f32`, `f16`, `bf16`, or `auto`: f32 on CPU, f16 on CUDA. (`int8` is
/// not a candle dtype and not trainable: see [`precision`].)
pub fn compute_dtype(name: &str, device: &Device) -> Result<DType> {
    match dtype_name(name).as_str() {
        "auto" if device.is_cuda() => Ok(DType::F16),
        "auto" | "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        "int8" => bail!("--dtype int8 is for inference (embed, index, eval, bench); here use f32, f16 or bf16"),
        other => bail!("unknown dtype '{other}' (expected auto, f32, f16 or bf16)"),
    }
}

/// A dtype name as given (any case; PyTorch's `fp32`, `float32`, `fp16`,
/// `float16`, `bfloat16` too) as ours: `f32`, `f16`, `bf16`, ....
pub fn dtype_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "fp32" | "float32" | "float" => "f32".into(),
        "fp16" | "float16" | "half" => "f16".into(),
        "bfloat16" => "bf16".into(),
        "qint8" => "int8".into(),
        _ => name,
    }
}

/// `--dtype` for inference: [`compute_dtype`]'s names, or `int8` (CPU only).
/// `auto` stays f32 on the CPU: the exact path is the default.
/// Errors: an unknown name, or int8 on CUDA.
pub fn precision(name: &str, device: &Device) -> Result<Precision> {
    let name = dtype_name(name);
    match name.as_str() {
        "int8" if !device.is_cpu() => bail!("--dtype int8 runs on the CPU only; on CUDA use f16, bf16 or f32"),
        "int8" => Ok(Precision::Int8),
        "auto" | "f32" | "f16" | "bf16" => Ok(Precision::Float(compute_dtype(&name, device)?)),
        other => bail!("unknown dtype '{other}' (expected auto, f32, f16, bf16 or int8)"),
    }
}

/// `--device` and `--dtype` together: [`device`] and [`precision`], with
/// int8 off the CPU refused before the device is opened, so a user asking
/// for int8 on CUDA learns that before being told how to build with CUDA.
pub fn device_and_precision(device_name: &str, dtype: &str) -> Result<(Device, Precision)> {
    if dtype_name(dtype) == "int8" && device_name.trim().to_lowercase() != "cpu" {
        bail!("--dtype int8 runs on the CPU only; on CUDA use f16, bf16 or f32");
    }
    let device = device(device_name)?;
    let precision = precision(dtype, &device)?;
    Ok((device, precision))
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn device(name: &str) -> Result<Device> {
    let name = name.trim().to_lowercase();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(rest) = name.strip_prefix("cuda") else {
        bail!("unknown device '{name}' (expected cpu, cuda or cuda:N)");
    };
    let ordinal = match rest.strip_prefix(':') {
        Some(n) => n.parse::<usize>().with_context(|| format!("bad CUDA device number in '{name}'"))?,
        None if rest.is_empty() => 0,
        None => bail!("unknown device '{name}' (expected cpu, cuda or cuda:N)"),
    };
    if !candle_core::utils::cuda_is_available() {
        bail!(
            "this longclip was built without CUDA; build it with `cargo build --release --features cuda` \
             (see scripts/build-cuda.sh) to use --device {name}"
        );
    }
    Ok(Device::new_cuda(ordinal)?)
}
