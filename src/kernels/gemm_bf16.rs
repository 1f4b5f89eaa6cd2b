//! `y = x · Wᵀ + b` with bf16 inputs and f32 accumulation, for `--dtype
//! bf16` on the CPU (issue 16, item 2).
//!
//! The weight is rounded to bf16 and packed once ([`PackedBf16`]); the
//! activations are rounded per call. With AVX512_BF16 the micro-kernel is
//! VDPBF16PS (two bf16 products summed into each f32 lane); without it a
//! portable kernel widens bf16 to f32 and multiplies in f32, the same
//! arithmetic up to summation order (and VDPBF16PS flushing denormals).
//!
//! Layout: the weight is cut into panels of [`NR`] output columns; a panel
//! stores, for every pair of k, its columns' two weights side by side
//! (`[k/2][NR][2]`), so one 64-byte load feeds 16 lanes of VDPBF16PS and the
//! activation pair is one broadcast 32-bit word. Each micro-kernel call runs
//! the whole K with its [`MR`] x [`NR`] accumulators in registers; rayon
//! splits the output into [`MC`] x [`NC`] tiles (a tile's activations and a
//! panel stay in L2 for K up to 3072).

use half::bf16;
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::{as_uninit, SendPtr};

/// Rows per micro-kernel call.
pub const MR: usize = 8;
/// Output columns per packed panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows of one parallel tile.
const MC: usize = 64;
/// Columns of one parallel tile (a multiple of NR).
const NC: usize = 128;

/// A weight `W [N, K]` (or a right-hand side `B [K, N]`) rounded to bf16 and
/// packed in panels of [`NR`] columns; K is padded to even and N to a
/// multiple of NR with zeros.
pub struct PackedBf16 {
    /// Output columns.
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// K rounded up to even.
    kp: usize,
    /// Panels of `kp * NR` bf16 bits each.
    data: Vec<u16>,
}

impl PackedBf16 {
    /// Packs a `torch.nn.Linear` weight: row-major `[n, k]`, row j = output j.
    /// Panics if `w.len() != n * k` (a caller bug, not input).
    pub fn from_weight(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {} values is not [{n}, {k}]", w.len());
        Self::pack(n, k, |j, kk| w[j * k + kk])
    }

    /// Packs a right-hand side in matmul layout: row-major `[k, n]`.
    /// Panics if `b.len() != k * n`.
    pub fn from_kn(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), n * k, "matrix of {} values is not [{k}, {n}]", b.len());
        Self::pack(n, k, |j, kk| b[kk * n + j])
    }

    fn pack(n: usize, k: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let kp = k.next_multiple_of(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u16; panels * kp * NR];
        data.par_chunks_mut(kp * NR).enumerate().for_each(|(p, panel)| {
            for pair in 0..kp / 2 {
                for c in 0..NR {
                    let j = p * NR + c;
                    for h in 0..2 {
                        let kk = 2 * pair + h;
                        if j < n && kk < k {
                            panel[pair * 2 * NR + 2 * c + h] = bf16::from_f32(at(j, kk)).to_bits();
                        }
                    }
                }
            }
        });
        PackedBf16 { n, k, kp, data }
    }

    fn panel(&self, p: usize) -> &[u16] {
        &self.data[p * self.kp * NR..(p + 1) * self.kp * NR]
    }
}

/// Whether this CPU runs VDPBF16PS (AVX512F + AVX512_BF16).
pub fn has_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out [m, n] = x [m, k] · Wᵀ + bias`, x and out row-major f32. `simd`
/// false forces the portable kernel (tests); true uses VDPBF16PS when the
/// CPU has it. Panics on lengths that do not match (a caller bug).
pub fn gemm(x: &[f32], m: usize, w: &PackedBf16, bias: Option<&[f32]>, out: &mut [f32], simd: bool) {
    gemm_uninit(x, m, w, bias, as_uninit(out), simd);
}

/// [`gemm`] into memory that need not be initialized: every element of
/// `out` is written.
pub fn gemm_uninit(x: &[f32], m: usize, w: &PackedBf16, bias: Option<&[f32]>, out: &mut [MaybeUninit<f32>], simd: bool) {
    let (n, k, kp) = (w.n, w.k, w.kp);
    assert_eq!(x.len(), m * k, "activations of {} values are not [{m}, {k}]", x.len());
    assert_eq!(out.len(), m * n, "output of {} values is not [{m}, {n}]", out.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias of {} values for {n} outputs", b.len());
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in out.chunks_mut(n) {
            row.iter_mut().enumerate().for_each(|(j, y)| {
                y.write(bias.map_or(0.0, |b| b[j]));
            });
        }
        return;
    }
    // Rows padded to MR with zeros, so the micro-kernel never checks rows.
    let mp = m.next_multiple_of(MR);
    let mut a = vec![0u16; mp * kp];
    a.par_chunks_mut(kp).zip(x.par_chunks(k)).for_each(|(dst, src)| {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16::from_f32(*s).to_bits();
        }
    });
    let simd = simd && has_simd();
    let tiles: Vec<(usize, usize)> = (0..m.div_ceil(MC)).flat_map(|i| (0..n.div_ceil(NC)).map(move |j| (i * MC, j * NC))).collect();
    let out_ptr = SendPtr(out.as_mut_ptr() as *mut f32);
    tiles.into_par_iter().for_each(|(i0, j0)| {
        let mut acc = [0f32; MR * NR];
        for p in j0 / NR..(j0 + NC).min(n).div_ceil(NR) {
            let panel = w.panel(p);
            for r0 in (i0..(i0 + MC).min(m)).step_by(MR) {
                let rows = &a[r0 * kp..(r0 + MR) * kp];
                kernel(rows, kp, panel, &mut acc, simd);
                let cols = NR.min(n - p * NR);
                for r in 0..MR.min(m - r0) {
                    // SAFETY: tiles cover disjoint rectangles of `out`, and
                    // (r0 + r, p * NR + c) is inside [m, n].
                    let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add((r0 + r) * n + p * NR), cols) };
                    for (c, y) in row.iter_mut().enumerate() {
                        *y = acc[r * NR + c] + bias.map_or(0.0, |b| b[p * NR + c]);
                    }
                }
            }
        }
    });
}

/// `acc [MR, NR] = rows [MR, kp] · panel` over the whole K.
fn kernel(rows: &[u16], kp: usize, panel: &[u16], acc: &mut [f32; MR * NR], simd: bool) {
    debug_assert_eq!(rows.len(), MR * kp);
    debug_assert_eq!(panel.len(), kp * NR);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when has_simd() said the CPU has
        // AVX512F and AVX512_BF16; lengths were checked above.
        unsafe { return kernel_avx512(rows, kp, panel, acc) };
    }
    let _ = simd;
    kernel_portable(rows, kp, panel, acc);
}

/// The fallback: bf16 widened to f32 (exact), products summed in f32.
fn kernel_portable(rows: &[u16], kp: usize, panel: &[u16], acc: &mut [f32; MR * NR]) {
    let widen = |b: u16| f32::from_bits((b as u32) << 16);
    acc.fill(0.0);
    for pair in 0..kp / 2 {
        let b = &panel[pair * 2 * NR..(pair + 1) * 2 * NR];
        for r in 0..MR {
            let a0 = widen(rows[r * kp + 2 * pair]);
            let a1 = widen(rows[r * kp + 2 * pair + 1]);
            let out = &mut acc[r * NR..(r + 1) * NR];
            for c in 0..NR {
                out[c] += a0 * widen(b[2 * c]) + a1 * widen(b[2 * c + 1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_avx512(rows: &[u16], kp: usize, panel: &[u16], acc: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    let a = rows.as_ptr() as *const u8;
    let b = panel.as_ptr() as *const __m512i;
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    for pair in 0..kp / 2 {
        // SAFETY: pair < kp/2, so both 64-byte loads are inside the panel.
        let (b0, b1) = unsafe { (_mm512_loadu_si512(b.add(2 * pair)), _mm512_loadu_si512(b.add(2 * pair + 1))) };
        let (b0, b1): (__m512bh, __m512bh) = (std::mem::transmute(b0), std::mem::transmute(b1));
        for (r, cr) in c.iter_mut().enumerate() {
            // SAFETY: row r's pair `pair` is 4 bytes at (r * kp + 2 * pair) * 2 < rows.len() * 2.
            let word = unsafe { (a.add((r * kp + 2 * pair) * 2) as *const i32).read_unaligned() };
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(word));
            cr[0] = _mm512_dpbf16_ps(cr[0], av, b0);
            cr[1] = _mm512_dpbf16_ps(cr[1], av, b1);
        }
    }
    for (r, cr) in c.iter().enumerate() {
        // SAFETY: acc has MR * NR floats; row r's 32 are at r * NR.
        unsafe {
            _mm512_storeu_ps(acc.as_mut_ptr().add(r * NR), cr[0]);
            _mm512_storeu_ps(acc.as_mut_ptr().add(r * NR + 16), cr[1]);
        }
    }
}

/// Rounds to bf16 and back (round to nearest even), as the kernels see inputs.
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}
