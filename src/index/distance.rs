//! The inner product of f32 vectors, dispatched once at run time to the
//! widest SIMD the CPU has (AVX-512F, else AVX2 + FMA, else a portable loop),
//! and `UnitDot`, the HNSW distance `max(0, 1 - dot)` built on it.
//!
//! Why our own kernel: anndists' `DistDot` sums with one accumulator and no
//! FMA (latency-bound), and asserts `dot <= 1.000002`, which panics on
//! duplicate photos and on f16 round-trips of normalized vectors.

use std::sync::OnceLock;

/// A dot product kernel; every implementation takes two slices of equal length.
type DotFn = fn(&[f32], &[f32]) -> f32;

static KERNEL: OnceLock<DotFn> = OnceLock::new();
static SCORE_KERNEL: OnceLock<DotFn> = OnceLock::new();

/// The inner product in an order that depends only on the length, never on
/// where the rows sit in memory: what search reports as the score, so the
/// same vector scores the same wherever it is stored (another segment, a
/// copied row, the graph's rescoring). `dot` may start at an aligned
/// offset instead, which is faster on hnsw_rs's unaligned rows but rounds
/// differently from one address to the next.
#[inline]
pub fn score(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    (SCORE_KERNEL.get_or_init(select_fixed))(&a[..n], &b[..n])
}

/// A kernel scoring an f32 query against a row of f16 bits.
type DotF16Fn = fn(&[f32], &[u16]) -> f32;

static SCORE_F16_KERNEL: OnceLock<DotF16Fn> = OnceLock::new();

/// `score(a, b as f32)` for a row stored as IEEE half floats (their bits),
/// bit-identical to converting the row and calling `score`, without the
/// converted copy: exact search streams an f16 index through this, so it
/// runs at the speed of reading the matrix (F16C / AVX-512 conversions in
/// registers).
#[inline]
pub fn score_f16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    (SCORE_F16_KERNEL.get_or_init(select_f16))(&a[..n], &b[..n])
}

fn select_f16() -> DotF16Fn {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return x86::dot_f16_avx512_checked;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return x86::dot_f16_avx2_checked;
        }
    }
    dot_f16_converted
}

/// Converts the row, then `score`'s kernel (the portable path).
fn dot_f16_converted(a: &[f32], b: &[u16]) -> f32 {
    let row: Vec<f32> = b.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect();
    score(a, &row)
}

fn select_fixed() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return x86::dot_avx512_fixed;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return x86::dot_avx2_fixed;
        }
    }
    dot_portable
}

/// The inner product of `a` and `b` (f32 accumulation, several lanes in
/// parallel, so the rounding differs slightly from a sequential sum).
///
/// Only the common prefix is used when the lengths differ (callers pass
/// vectors of one index, which all have its dimension).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    (KERNEL.get_or_init(select))(&a[..n], &b[..n])
}

fn select() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return x86::dot_avx512_checked;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return x86::dot_avx2_checked;
        }
    }
    dot_portable
}

/// Eight independent accumulators: the compiler vectorizes this on any
/// target (SSE2, NEON) and the adds do not wait on one another.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Safe entry for the dispatcher: only installed after `avx512f` was detected.
    pub(super) fn dot_avx512_checked(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: `select` returns this function only when avx512f is present.
        unsafe { dot_avx512::<true>(a, b) }
    }

    /// Safe entry for the dispatcher: only installed after `avx2` and `fma` were detected.
    pub(super) fn dot_avx2_checked(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: `select` returns this function only when avx2 and fma are present.
        unsafe { dot_avx2::<true>(a, b) }
    }

    /// As `dot_avx512_checked`, summing from the first float whatever the alignment.
    pub(super) fn dot_avx512_fixed(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: `select_fixed` returns this function only when avx512f is present.
        unsafe { dot_avx512::<false>(a, b) }
    }

    /// As `dot_avx2_checked`, summing from the first float whatever the alignment.
    pub(super) fn dot_avx2_fixed(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: `select_fixed` returns this function only when avx2 and fma are present.
        unsafe { dot_avx2::<false>(a, b) }
    }

    /// Safe entry: only installed after `avx512f` was detected.
    pub(super) fn dot_f16_avx512_checked(a: &[f32], b: &[u16]) -> f32 {
        // SAFETY: `select_f16` returns this function only when avx512f is present.
        unsafe { dot_f16_avx512(a, b) }
    }

    /// Safe entry: only installed after `avx2`, `fma` and `f16c` were detected.
    pub(super) fn dot_f16_avx2_checked(a: &[f32], b: &[u16]) -> f32 {
        // SAFETY: `select_f16` returns this function only when the features are present.
        unsafe { dot_f16_avx2(a, b) }
    }

    /// `dot_avx512::<false>` with the row converted from f16 in registers:
    /// the same summation (`sum_avx512`), so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_f16_avx512(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let pb = b.as_ptr();
        let load = |i: usize| _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i) as *const __m256i));
        let load_masked = |mask: __mmask16, i: usize| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, pb.add(i) as *const i16));
        sum_avx512(a.as_ptr(), n, 0, load, load_masked)
    }

    /// `dot_avx2::<false>` with the row converted from f16 in registers
    /// (F16C): the same summation (`sum_avx2`), so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx2(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let pb = b.as_ptr();
        let load = |i: usize| _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i) as *const __m128i));
        let at = |i: usize| half::f16::from_bits(*pb.add(i)).to_f32();
        sum_avx2(a.as_ptr(), n, 0, load, at)
    }

    /// Four 16-lane FMA accumulators (64 floats a step) hide the FMA latency.
    /// A masked head first brings `b` (the stored row, in hnsw_rs's calls) to
    /// a 64-byte boundary: hnsw_rs's memory-mapped dump places rows at
    /// 4-byte-aligned offsets, where every unaligned 64-byte load would
    /// straddle two cache lines. The tail (< 16 floats) is one masked load.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512<const PEEL: bool>(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let pb = b.as_ptr();
        // Floats before `b` reaches a 64-byte boundary (f32 pointers are 4-aligned).
        let head = if PEEL { ((64 - (pb as usize & 63)) & 63) / 4 } else { 0 };
        sum_avx512(a.as_ptr(), n, head, |i| _mm512_loadu_ps(pb.add(i)), |mask, i| _mm512_maskz_loadu_ps(mask, pb.add(i)))
    }

    /// The AVX-512 summation of every kernel: `load(i)` gives the row's 16
    /// floats from float `i`, `load_masked(mask, i)` only those the mask
    /// names (no out-of-bounds access). The first `head` floats go in one
    /// masked product, then 64 floats a step in four accumulators, 16 a
    /// step, and a masked tail.
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_avx512(pa: *const f32, n: usize, head: usize, load: impl Fn(usize) -> __m512, load_masked: impl Fn(__mmask16, usize) -> __m512) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = head.min(n);
        if i > 0 {
            let mask: __mmask16 = ((1u32 << i) - 1) as u16;
            acc[3] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, pa), load_masked(mask, 0));
        }
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16 * j)), load(i + 16 * j), *s);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), load(i), acc[0]);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, pa.add(i)), load_masked(mask, i), acc[1]);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// Four 8-lane FMA accumulators (32 floats a step); a scalar head brings
    /// `b` to a 32-byte boundary (see `dot_avx512`), a scalar tail ends.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2<const PEEL: bool>(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let pb = b.as_ptr();
        let head = if PEEL { (((32 - (pb as usize & 31)) & 31) / 4).min(n) } else { 0 };
        sum_avx2(a.as_ptr(), n, head, |i| _mm256_loadu_ps(pb.add(i)), |i| *pb.add(i))
    }

    /// The AVX2 summation of every kernel: `load(i)` gives the row's 8
    /// floats from float `i`, `at(i)` one float. The first `head` floats
    /// are summed one by one, then 32 a step in four accumulators, 8 a
    /// step, and a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum_avx2(pa: *const f32, n: usize, head: usize, load: impl Fn(usize) -> __m256, at: impl Fn(usize) -> f32) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut sum = 0f32;
        for k in 0..head {
            sum += *pa.add(k) * at(k);
        }
        let mut i = head;
        while i + 32 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                *s = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), load(i + 8 * j), *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load(i), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        // Horizontal sum: 8 -> 4 -> 2 -> 1 lanes.
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
        sum += _mm_cvtss_f32(s1);
        while i < n {
            sum += *pa.add(i) * at(i);
            i += 1;
        }
        sum
    }
}

/// The HNSW distance of L2-normalized vectors: `max(0, 1 - a·b)`, in [0, 2].
///
/// It never panics, unlike anndists' `DistDot`: a dot slightly above 1
/// (duplicates, f16 round-trips) gives 0, and a non-finite dot (NaN or
/// infinite inputs) gives 2.0, the distance of opposite vectors, so hnsw_rs's
/// own `dist >= 0` assertions always hold and such rows sort last.
#[derive(Default, Clone, Copy, Debug)]
pub struct UnitDot;

impl hnsw_rs::prelude::Distance<f32> for UnitDot {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        unit_distance(dot(va, vb))
    }
}

/// `max(0, 1 - d)`, with 2.0 for a non-finite `d`, capped at 2.0.
#[inline]
fn unit_distance(d: f32) -> f32 {
    if d.is_finite() {
        (1.0 - d).clamp(0.0, 2.0)
    } else {
        2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hnsw_rs::prelude::Distance;

    const LENGTHS: [usize; 13] = [0, 1, 7, 8, 15, 16, 17, 31, 127, 128, 512, 768, 1024];

    /// Deterministic values in [-1, 1) (a small LCG; no rand dependency).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    /// Relative to the sum of |a_i b_i|, the scale of the rounding error (a
    /// plain relative error is meaningless when the terms cancel).
    fn check(name: &str, f: impl Fn(&[f32], &[f32]) -> f32) {
        for (k, &n) in LENGTHS.iter().enumerate() {
            let (a, b) = (values(n, 2 * k as u64 + 1), values(n, 2 * k as u64 + 2));
            let want = reference(&a, &b);
            let scale: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum::<f64>().max(1e-30);
            let got = f(&a, &b) as f64;
            assert!((got - want).abs() <= 1e-5 * scale, "{name}, n = {n}: {got} vs {want}");
            // Every alignment of either start (the kernels peel to align `b`).
            for (oa, ob) in (0..16).map(|o| (o, 0)).chain((1..16).map(|o| (0, o))).chain([(3, 5), (5, 3)]) {
                if oa.max(ob) > n {
                    continue;
                }
                let m = n - oa.max(ob);
                let (x, y) = (&a[oa..oa + m], &b[ob..ob + m]);
                let want = reference(x, y);
                let got = f(x, y) as f64;
                assert!((got - want).abs() <= 1e-5 * scale, "{name}, n = {n}, offsets {oa}/{ob}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn every_path_matches_f64() {
        check("portable", dot_portable);
        check("dispatched", dot);
        check("score", score);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                check("avx2+fma", |a, b| unsafe { x86::dot_avx2::<true>(a, b) });
                check("avx2+fma fixed", |a, b| unsafe { x86::dot_avx2::<false>(a, b) });
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was just detected.
                check("avx512f", |a, b| unsafe { x86::dot_avx512::<true>(a, b) });
                check("avx512f fixed", |a, b| unsafe { x86::dot_avx512::<false>(a, b) });
            }
        }
    }

    /// The f16 kernels give the bits of converting the row and calling `score`.
    #[test]
    fn score_f16_equals_score_of_the_converted_row() {
        for n in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 512, 768, 1024] {
            let a = values(n, 5);
            let b: Vec<u16> = values(n, 6).iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
            let row: Vec<f32> = b.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect();
            let want = score(&a, &row).to_bits();
            assert_eq!(score_f16(&a, &b).to_bits(), want, "dispatched, n = {n}");
            assert_eq!(dot_f16_converted(&a, &b).to_bits(), want, "converted, n = {n}");
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was just detected.
                    assert_eq!(unsafe { x86::dot_f16_avx512(&a, &b) }.to_bits(), unsafe { x86::dot_avx512::<false>(&a, &row) }.to_bits(), "avx512, n = {n}");
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                    // SAFETY: the features were just detected.
                    assert_eq!(unsafe { x86::dot_f16_avx2(&a, &b) }.to_bits(), unsafe { x86::dot_avx2::<false>(&a, &row) }.to_bits(), "avx2, n = {n}");
                }
            }
        }
    }

    /// The score of a pair does not depend on where the rows are in memory.
    #[test]
    fn score_is_the_same_at_every_address() {
        for n in [7, 24, 128, 512, 768] {
            let (a, b) = (values(n, 3), values(n, 4));
            let want = score(&a, &b).to_bits();
            for offset in 1..16 {
                let mut shifted = vec![0f32; offset];
                shifted.extend_from_slice(&b);
                assert_eq!(score(&a, &shifted[offset..]).to_bits(), want, "n = {n}, offset {offset}");
            }
        }
    }

    #[test]
    fn dot_uses_the_common_prefix() {
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
        assert_eq!(dot(&[], &[1.0]), 0.0);
    }

    fn unit(n: usize, seed: u64) -> Vec<f32> {
        let v = values(n, seed);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn identical_vectors_are_at_distance_zero() {
        for n in [1, 17, 512, 768] {
            let v = unit(n, n as u64);
            let d = UnitDot.eval(&v, &v);
            assert!((0.0..=1e-5).contains(&d), "n = {n}: {d}");
        }
    }

    #[test]
    fn dots_above_one_clamp_to_zero() {
        // A dot of 1.0001, as after an f16 round-trip of a normalized vector.
        let v = unit(512, 7);
        let w: Vec<f32> = v.iter().map(|x| x * 1.0001).collect();
        assert!(dot(&v, &w) > 1.00005);
        assert_eq!(UnitDot.eval(&v, &w), 0.0);
        let big = vec![1.0f32; 512];
        assert_eq!(UnitDot.eval(&big, &big), 0.0);
    }

    #[test]
    fn non_finite_inputs_give_a_finite_distance() {
        let v = unit(512, 3);
        let mut nan = v.clone();
        nan[100] = f32::NAN;
        let mut inf = v.clone();
        inf[5] = f32::INFINITY;
        let neg_big = vec![-1e30f32; 512];
        for (a, b) in [(&v, &nan), (&nan, &nan), (&v, &inf), (&neg_big, &neg_big.iter().map(|x| -x).collect())] {
            let d = UnitDot.eval(a, b);
            assert!(d.is_finite() && (0.0..=2.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn opposite_vectors_are_at_distance_two() {
        let v = unit(64, 9);
        let w: Vec<f32> = v.iter().map(|x| -x).collect();
        assert!((UnitDot.eval(&v, &w) - 2.0).abs() < 1e-5);
    }
}
