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

use super::SendPtr;

/// Rows per micro-kernel call.
pub const MR: usize = 8;
/// Output columns per packed panel (two 16-lane vectors).
pub const NR: usize = 32;
const MC: usize = 64;
const NC: usize = 128;
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
    /// `s_w[j]`: weight j's scale.
    pub scales: Vec<f32>,
    /// `Σ_k q_w[j, k]`, for the zero-point correction.
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
        let col_sums = quantized.iter().map(|(_, q)| q.iter().map(|&v| v as i32).sum()).collect();
        let scales = quantized.into_iter().map(|(s, _)| s).collect();
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
    /// Quantizes row-major `x [m, k]`. Panics if `x.len() != m * k`.
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(x.len(), m * k, "activations of {} values are not [{m}, {k}]", x.len());
        let kp = k.next_multiple_of(4).max(4);
        let mut data = vec![0u8; m.next_multiple_of(MR) * kp];
        let mut params = vec![(1f32, 0i32); m];
        data.par_chunks_mut(kp).zip(params.par_iter_mut()).enumerate().for_each(|(i, (dst, param))| {
            let row = &x[i * k..(i + 1) * k];
            let lo = row.iter().fold(0f32, |a, &b| a.min(b));
            let hi = row.iter().fold(0f32, |a, &b| a.max(b));
            let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let z = (-lo / s).round().clamp(0.0, 255.0);
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = ((v / s).round() + z).clamp(0.0, 255.0) as u8;
            }
            *param = (s, z as i32);
        });
        let (scales, zeros) = params.into_iter().unzip();
        QuantizedRows { m, k, kp, data, scales, zeros }
    }

    /// Row i's quantized values `q_x[i, :]` (for tests).
    pub fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.kp..i * self.kp + self.k]
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
/// `simd` false forces the portable kernel. Panics on lengths that do not match.
pub fn gemm(x: &[f32], m: usize, w: &QuantizedWeight, bias: Option<&[f32]>, out: &mut [f32], simd: bool) {
    gemm_quantized(&QuantizedRows::new(x, m, w.k), w, bias, out, simd);
}

/// The GEMM on activations already quantized.
pub fn gemm_quantized(a: &QuantizedRows, w: &QuantizedWeight, bias: Option<&[f32]>, out: &mut [f32], simd: bool) {
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
    let tiles: Vec<(usize, usize)> = (0..m.div_ceil(MC)).flat_map(|i| (0..n.div_ceil(NC)).map(move |j| (i * MC, j * NC))).collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    tiles.into_par_iter().for_each(|(i0, j0)| {
        let mut acc = [0i32; MR * NR];
        for p in j0 / NR..(j0 + NC).min(n).div_ceil(NR) {
            let panel = w.panel(p);
            for r0 in (i0..(i0 + MC).min(m)).step_by(MR) {
                kernel(&a.data[r0 * kp..(r0 + MR) * kp], kp, panel, &mut acc, simd);
                let cols = NR.min(n - p * NR);
                for r in 0..MR.min(m - r0) {
                    let (s_x, z) = (a.scales[r0 + r], a.zeros[r0 + r]);
                    // SAFETY: tiles cover disjoint rectangles of `out`, and
                    // (r0 + r, p * NR + c) is inside [m, n].
                    let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add((r0 + r) * n + p * NR), cols) };
                    for (c, y) in row.iter_mut().enumerate() {
                        let j = p * NR + c;
                        let sum = acc[r * NR + c] - z * w.col_sums[j];
                        *y = s_x * w.scales[j] * sum as f32 + bias.map_or(0.0, |b| b[j]);
                    }
                }
            }
        }
    });
}

/// `acc [MR, NR] = rows [MR, kp] · panel` (kp a multiple of 4).
fn kernel(rows: &[u8], kp: usize, panel: &[i8], acc: &mut [i32; MR * NR], simd: bool) {
    debug_assert_eq!(rows.len(), MR * kp);
    debug_assert_eq!(panel.len(), kp * NR);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when has_simd() found AVX512F and
        // AVX512_VNNI; lengths were checked above.
        unsafe { return kernel_avx512(rows, kp, panel, acc) };
    }
    let _ = simd;
    kernel_portable(rows, kp, panel, acc);
}

fn kernel_portable(rows: &[u8], kp: usize, panel: &[i8], acc: &mut [i32; MR * NR]) {
    acc.fill(0);
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel_avx512(rows: &[u8], kp: usize, panel: &[i8], acc: &mut [i32; MR * NR]) {
    use std::arch::x86_64::*;
    let a = rows.as_ptr();
    let b = panel.as_ptr() as *const __m512i;
    let mut c = [[_mm512_setzero_si512(); 2]; MR];
    for quad in 0..kp / 4 {
        // SAFETY: quad < kp/4, so both 64-byte loads are inside the panel.
        let (b0, b1) = unsafe { (_mm512_loadu_si512(b.add(2 * quad)), _mm512_loadu_si512(b.add(2 * quad + 1))) };
        for (r, cr) in c.iter_mut().enumerate() {
            // SAFETY: row r's quad is 4 bytes at r * kp + 4 * quad < rows.len().
            let word = unsafe { (a.add(r * kp + 4 * quad) as *const i32).read_unaligned() };
            let av = _mm512_set1_epi32(word);
            cr[0] = _mm512_dpbusd_epi32(cr[0], av, b0);
            cr[1] = _mm512_dpbusd_epi32(cr[1], av, b1);
        }
    }
    for (r, cr) in c.iter().enumerate() {
        // SAFETY: acc has MR * NR ints; row r's 32 are at r * NR.
        unsafe {
            _mm512_storeu_si512(acc.as_mut_ptr().add(r * NR) as *mut __m512i, cr[0]);
            _mm512_storeu_si512(acc.as_mut_ptr().add(r * NR + 16) as *mut __m512i, cr[1]);
        }
    }
}
