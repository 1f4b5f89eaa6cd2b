//! `y = x · Wᵀ + b` by dynamic int8 quantization, for `--dtype int8` on the
//! CPU (issue 16, item 3).
//!
//! - Weights: symmetric per output channel, `q = round(w / s)` in
//!   [-127, 127] with `s = max|W[j, :]| / 127`, quantized and packed once.
//! - Activations: asymmetric per row (token), `q = round(x / s) + z` in
//!   [0, 255] with `s = (max - min) / 255` over the row's range widened to
//!   hold 0, and `z = round(-min / s)`, so 0 is exact. Done per call.
//! - `y[i, j] = s_x[i] · s_w[j] · (Σ_k q_x[i, k] q_w[j, k] - z[i] · Σ_k q_w[j, k]) + b[j]`,
//!   the integer sum exact in i32 (|sum| < 255 · 127 · K < 2³¹ for K < 66,000).
//!
//! This is the scheme of PyTorch's `quantize_dynamic` and ONNX Runtime's
//! `MatMulInteger` (u8 activations x s8 weights, the operand order of
//! VPDPBUSD). With AVX512_VNNI the micro-kernel is VPDPBUSD (four u8 x s8
//! products summed into each i32 lane); a portable kernel does the same
//! integer sums, so both give identical results.
//!
//! Layout as in [`super::gemm_bf16`], with quads of k instead of pairs: a
//! panel stores `[k/4][NR][4]` i8, one 64-byte load per 16 lanes.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::elementwise::quick_gelu;
#[cfg(target_arch = "x86_64")]
use super::{elementwise::quick_gelu_vec, simd::Avx512};
use super::{as_uninit, SendPtr};

/// Rows per micro-kernel call (24 of AVX-512's 32 registers accumulate).
pub const MR: usize = 12;
/// Output columns per packed panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows per parallel task: 8 micro-tiles share each weight panel in L1.
const MC: usize = 8 * MR;
/// Columns per parallel task (4 panels).
const NC: usize = 4 * NR;
/// Largest reduction length whose integer sums cannot overflow i32.
pub const MAX_K: usize = (i32::MAX as usize) / (255 * 127);

/// A weight `W [N, K]` quantized per output channel and packed in panels
/// of [`NR`] columns (K padded to a multiple of 4, N to NR, with zeros).
pub struct QuantizedWeight {
    /// Output columns.
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    kp: usize,
    data: Vec<i8>,
    /// `s_w[j]`: weight j's scale, padded with zeros to whole panels.
    pub scales: Vec<f32>,
    /// `Σ_k q_w[j, k]`, for the zero-point correction (padded like `scales`).
    pub col_sums: Vec<i32>,
}

impl QuantizedWeight {
    /// Quantizes a `torch.nn.Linear` weight, row-major `[n, k]`.
    /// Panics on a length that is not `n * k` or `k > MAX_K` (caller bugs).
    pub fn from_weight(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {} values is not [{n}, {k}]", w.len());
        assert!(k <= MAX_K, "int8 GEMM: K = {k} could overflow i32 (at most {MAX_K})");
        let kp = k.next_multiple_of(4).max(4);
        let quantized: Vec<(f32, Vec<i8>)> = (0..n).into_par_iter().map(|j| quantize_symmetric(&w[j * k..(j + 1) * k])).collect();
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * kp * NR];
        data.par_chunks_mut(kp * NR).enumerate().for_each(|(p, panel)| {
            for c in 0..NR.min(n - p * NR) {
                for (kk, &q) in quantized[p * NR + c].1.iter().enumerate() {
                    panel[(kk / 4) * 4 * NR + 4 * c + kk % 4] = q;
                }
            }
        });
        let mut col_sums: Vec<i32> = quantized.iter().map(|(_, q)| q.iter().map(|&v| v as i32).sum()).collect();
        let mut scales: Vec<f32> = quantized.into_iter().map(|(s, _)| s).collect();
        col_sums.resize(panels * NR, 0);
        scales.resize(panels * NR, 0.0);
        QuantizedWeight { n, k, kp, data, scales, col_sums }
    }

    /// Output j's quantized weights `q_w[j, :]` (unpacked; for tests).
    pub fn row(&self, j: usize) -> Vec<i8> {
        let (p, c) = (j / NR, j % NR);
        let panel = &self.data[p * self.kp * NR..(p + 1) * self.kp * NR];
        (0..self.k).map(|kk| panel[(kk / 4) * 4 * NR + 4 * c + kk % 4]).collect()
    }

    fn panel(&self, p: usize) -> &[i8] {
        &self.data[p * self.kp * NR..(p + 1) * self.kp * NR]
    }
}

/// `(s, round(v / s))` with `s = max|v| / 127` (1 for an all-zero row).
fn quantize_symmetric(v: &[f32]) -> (f32, Vec<i8>) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let s = if max > 0.0 { max / 127.0 } else { 1.0 };
    (s, v.iter().map(|x| (x / s).round().clamp(-127.0, 127.0) as i8).collect())
}

/// Activations `[m, k]` quantized per row to u8, rows padded to [`MR`] and
/// K to a multiple of 4 (pad values are 0; they meet zero weights).
pub struct QuantizedRows {
    pub m: usize,
    pub k: usize,
    kp: usize,
    data: Vec<u8>,
    /// `s_x[i]`: row i's scale.
    pub scales: Vec<f32>,
    /// `z[i]`: row i's zero point, in [0, 255].
    pub zeros: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes row-major `x [m, k]`: `q = clamp(round_half_even(x · (1/s)) + z, 0, 255)`
    /// (the rounding of VCVTPS2DQ, so the SIMD and portable paths agree bit
    /// for bit). Panics if `x.len() != m * k`.
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        Self::with_simd(x, m, k, has_simd())
    }

    /// [`QuantizedRows::new`], `simd` false forcing the portable code.
    pub fn with_simd(x: &[f32], m: usize, k: usize, simd: bool) -> Self {
        assert_eq!(x.len(), m * k, "activations of {} values are not [{m}, {k}]", x.len());
        let kp = k.next_multiple_of(4).max(4);
        let mut data = vec![0u8; m.next_multiple_of(MR) * kp];
        let mut params = vec![(1f32, 0i32); m];
        let simd = simd && has_simd();
        // A few rows per task: one row is too little work to hand to rayon.
        data[..m * kp].par_chunks_mut(16 * kp).zip(params.par_chunks_mut(16)).enumerate().for_each(|(t, (dst, param))| {
            for (r, (dst, param)) in dst.chunks_mut(kp).zip(param.iter_mut()).enumerate() {
                let i = 16 * t + r;
                *param = quantize_row(&x[i * k..(i + 1) * k], &mut dst[..k], simd);
            }
        });
        let (scales, zeros) = params.into_iter().unzip();
        QuantizedRows { m, k, kp, data, scales, zeros }
    }

    /// Row i's quantized values `q_x[i, :]` (for tests).
    pub fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.kp..i * self.kp + self.k]
    }
}

/// One row's `(s, z)` and its u8 values into `dst` (same length as `row`).
fn quantize_row(row: &[f32], dst: &mut [u8], simd: bool) -> (f32, i32) {
    let (lo, hi) = range(row, simd);
    let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let z = (-lo / s).round().clamp(0.0, 255.0) as i32;
    let inv = 1.0 / s;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when has_simd() found AVX512F.
        unsafe { quantize_avx512(row, dst, inv, z) };
        return (s, z);
    }
    for (d, &v) in dst.iter_mut().zip(row) {
        *d = ((v * inv).round_ties_even() as i32 + z).clamp(0, 255) as u8;
    }
    (s, z)
}

/// `(min(0, row), max(0, row))`.
fn range(row: &[f32], simd: bool) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when has_simd() found AVX512F.
        return unsafe { range_avx512(row) };
    }
    let _ = simd;
    row.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn range_avx512(row: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for chunk in row.chunks(16) {
        let mask = (1u32 << chunk.len()).wrapping_sub(1) as u16;
        // SAFETY: the mask loads only the chunk's lanes; others are 0.
        let v = unsafe { _mm512_maskz_loadu_ps(mask, chunk.as_ptr()) };
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_avx512(row: &[f32], dst: &mut [u8], inv: f32, z: i32) {
    use std::arch::x86_64::*;
    let (inv, z, top) = (_mm512_set1_ps(inv), _mm512_set1_epi32(z), _mm512_set1_epi32(255));
    for (chunk, out) in row.chunks(16).zip(dst.chunks_mut(16)) {
        let mask = (1u32 << chunk.len()).wrapping_sub(1) as u16;
        // SAFETY: masked load and store touch only the chunk's lanes.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
            // Round half to even (MXCSR's default), as the portable code.
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), z);
            let q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), top);
            _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr() as *mut i8, mask, q);
        }
    }
}

/// Whether this CPU runs VPDPBUSD on 512-bit vectors (AVX512F + AVX512_VNNI).
pub fn has_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out [m, n] = x [m, k] · Wᵀ + bias` by dynamic quantization of `x`.
/// `simd` false forces the portable kernels. Panics on lengths that do not match.
pub fn gemm(x: &[f32], m: usize, w: &QuantizedWeight, bias: Option<&[f32]>, out: &mut [f32], simd: bool) {
    gemm_uninit(x, m, w, bias, Output::Linear, as_uninit(out), simd);
}

/// What the GEMM stores for `y = x · Wᵀ + b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `y` itself.
    Linear,
    /// QuickGELU of `y` (the `c_fc` layer), by the operations of
    /// [`super::elementwise::bias_quick_gelu`], saving its pass over memory.
    QuickGelu,
}

/// [`gemm`] with `output` applied, into memory that need not be
/// initialized: every element of `out` is written.
pub fn gemm_uninit(x: &[f32], m: usize, w: &QuantizedWeight, bias: Option<&[f32]>, output: Output, out: &mut [MaybeUninit<f32>], simd: bool) {
    gemm_quantized(&QuantizedRows::with_simd(x, m, w.k, simd), w, bias, output, out, simd);
}

/// What a micro-tile's integer sums become: `y = (s_x s_w) · (sum - z Σq_w) + b`.
struct Epilogue<'a> {
    /// Row-major output `[m, n]`, shared by the tasks (disjoint tiles).
    out: SendPtr,
    n: usize,
    a: &'a QuantizedRows,
    w: &'a QuantizedWeight,
    /// The bias padded to whole panels (zeros when there is none).
    bias: &'a [f32],
    output: Output,
}

impl Epilogue<'_> {
    /// Writes rows `r0..r0 + rows` and panel `p`'s valid columns from `acc`.
    fn portable(&self, acc: &[i32; MR * NR], r0: usize, p: usize) {
        let (rows, cols) = (MR.min(self.a.m - r0), NR.min(self.n - p * NR));
        for r in 0..rows {
            let (s_x, z) = (self.a.scales[r0 + r], self.a.zeros[r0 + r]);
            // SAFETY: tiles cover disjoint rectangles of `out`, and
            // (r0 + r, p * NR + c) is inside [m, n].
            let row = unsafe { std::slice::from_raw_parts_mut(self.out.get().add((r0 + r) * self.n + p * NR), cols) };
            for (c, y) in row.iter_mut().enumerate() {
                let j = p * NR + c;
                let sum = acc[r * NR + c] - z * self.w.col_sums[j];
                let y_lin = s_x * self.w.scales[j] * sum as f32 + self.bias[j];
                *y = match self.output {
                    Output::Linear => y_lin,
                    Output::QuickGelu => quick_gelu(y_lin),
                };
            }
        }
    }
}

/// The GEMM on activations already quantized; writes every element of `out`.
pub fn gemm_quantized(a: &QuantizedRows, w: &QuantizedWeight, bias: Option<&[f32]>, output: Output, out: &mut [MaybeUninit<f32>], simd: bool) {
    let (m, n) = (a.m, w.n);
    assert_eq!(a.k, w.k, "int8 GEMM: activations have K = {}, the weight {}", a.k, w.k);
    assert_eq!(out.len(), m * n, "output of {} values is not [{m}, {n}]", out.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias of {} values for {n} outputs", b.len());
    }
    if m == 0 || n == 0 {
        return;
    }
    let kp = a.kp;
    debug_assert_eq!(kp, w.kp);
    let simd = simd && has_simd();
    let mut padded_bias = bias.map_or_else(Vec::new, |b| b.to_vec());
    padded_bias.resize(w.scales.len(), 0.0);
    let epilogue = Epilogue { out: SendPtr(out.as_mut_ptr() as *mut f32), n, a, w, bias: &padded_bias, output };
    let tiles: Vec<(usize, usize)> = (0..m.div_ceil(MC)).flat_map(|i| (0..n.div_ceil(NC)).map(move |j| (i * MC, j * NC))).collect();
    tiles.into_par_iter().for_each(|(i0, j0)| {
        for p in j0 / NR..(j0 + NC).min(n).div_ceil(NR) {
            let panel = w.panel(p);
            for r0 in (i0..(i0 + MC).min(m)).step_by(MR) {
                let rows = &a.data[r0 * kp..(r0 + MR) * kp];
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: `simd` is only true when has_simd() found
                    // AVX512F and AVX512_VNNI; lengths were checked above.
                    unsafe { kernel_avx512(rows, kp, panel, &epilogue, r0, p) };
                    continue;
                }
                let mut acc = [0i32; MR * NR];
                kernel_portable(rows, kp, panel, &mut acc);
                epilogue.portable(&acc, r0, p);
            }
        }
    });
}

/// `acc [MR, NR] = rows [MR, kp] · panel` (kp a multiple of 4).
fn kernel_portable(rows: &[u8], kp: usize, panel: &[i8], acc: &mut [i32; MR * NR]) {
    debug_assert_eq!(rows.len(), MR * kp);
    debug_assert_eq!(panel.len(), kp * NR);
    for quad in 0..kp / 4 {
        let b = &panel[quad * 4 * NR..(quad + 1) * 4 * NR];
        for r in 0..MR {
            let a = &rows[r * kp + 4 * quad..r * kp + 4 * quad + 4];
            let out = &mut acc[r * NR..(r + 1) * NR];
            for (c, y) in out.iter_mut().enumerate() {
                let w = &b[4 * c..4 * c + 4];
                *y += (0..4).map(|t| a[t] as i32 * w[t] as i32).sum::<i32>();
            }
        }
    }
}

/// The micro-tile by VPDPBUSD, its epilogue done in registers: the same
/// float operations in the same order as [`Epilogue::portable`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel_avx512(rows: &[u8], kp: usize, panel: &[i8], e: &Epilogue, r0: usize, p: usize) {
    use std::arch::x86_64::*;
    debug_assert_eq!(rows.len(), MR * kp);
    debug_assert_eq!(panel.len(), kp * NR);
    let a = rows.as_ptr();
    let b = panel.as_ptr() as *const __m512i;
    let mut c = [[_mm512_setzero_si512(); 2]; MR];
    for quad in 0..kp / 4 {
        // SAFETY: quad < kp/4, so both 64-byte loads are inside the panel.
        let (b0, b1) = unsafe { (_mm512_loadu_si512(b.add(2 * quad)), _mm512_loadu_si512(b.add(2 * quad + 1))) };
        for (r, cr) in c.iter_mut().enumerate() {
            // SAFETY: row r's quad is 4 bytes at r * kp + 4 * quad < rows.len().
            let av = _mm512_set1_epi32(unsafe { (a.add(r * kp + 4 * quad) as *const i32).read_unaligned() });
            cr[0] = _mm512_dpbusd_epi32(cr[0], av, b0);
            cr[1] = _mm512_dpbusd_epi32(cr[1], av, b1);
        }
    }
    let (rows, cols) = (MR.min(e.a.m - r0), NR.min(e.n - p * NR));
    let j = p * NR;
    for (h, width) in [(0, cols.min(16)), (16, cols.saturating_sub(16))] {
        let mask = (1u32 << width).wrapping_sub(1) as u16;
        // SAFETY: scales, col_sums and bias are padded to whole panels.
        let (s_w, sums, bias) = unsafe {
            (
                _mm512_loadu_ps(e.w.scales.as_ptr().add(j + h)),
                _mm512_loadu_si512(e.w.col_sums.as_ptr().add(j + h) as *const __m512i),
                _mm512_loadu_ps(e.bias.as_ptr().add(j + h)),
            )
        };
        for (r, cr) in c.iter().enumerate().take(rows) {
            let (s_x, z) = (e.a.scales[r0 + r], e.a.zeros[r0 + r]);
            let sum = _mm512_sub_epi32(cr[h / 16], _mm512_mullo_epi32(_mm512_set1_epi32(z), sums));
            let mut y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(s_x), s_w), _mm512_cvtepi32_ps(sum)), bias);
            if e.output == Output::QuickGelu {
                // SAFETY: AVX512F is enabled in this function.
                y = unsafe { quick_gelu_vec::<Avx512>(y) };
            }
            // SAFETY: tiles cover disjoint rectangles of `out`; the mask
            // keeps the store inside row r0 + r's columns j + h.. < n.
            unsafe { _mm512_mask_storeu_ps(e.out.get().add((r0 + r) * e.n + j + h), mask, y) };
        }
    }
}
