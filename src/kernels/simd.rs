//! A small f32 vector abstraction so each kernel is written once and compiled
//! for AVX-512, AVX2+FMA and plain scalar code.
//!
//! Kernels are generic `#[inline(always)]` functions over [`Simd`]; an entry
//! point per instruction set carries `#[target_feature]` so the intrinsics
//! inline into it. [`Isa::detect`] picks the widest set the CPU has at run
//! time; the scalar set is always compiled and tested.

/// An instruction set a kernel can run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F, 16 lanes.
    Avx512,
    /// AVX2 with FMA, 8 lanes.
    Avx2,
    /// Portable scalar code (one lane), the reference and the fallback.
    Scalar,
}

impl Isa {
    /// The widest instruction set this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every instruction set this CPU can run, widest first (for tests).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Avx512, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .filter(|isa| match (best, isa) {
                (Isa::Avx512, _) => true,
                (Isa::Avx2, i) => *i != Isa::Avx512,
                (_, i) => *i == Isa::Scalar,
            })
            .collect()
    }
}

/// Lanes of the widest vector any [`Isa`] uses: buffers padded to a multiple
/// of this work for all of them.
pub const MAX_LANES: usize = 16;

/// f32 vector operations. Every method is `unsafe`: pointers must be valid
/// for `LANES` floats, and the CPU must support the instruction set.
pub trait Simd: Copy {
    const LANES: usize;
    /// Vectors per row in register-blocked loops (accumulators are
    /// 4 rows x this: 16 of AVX-512's 32 registers, 8 of AVX2's 16).
    const BLOCK_VECS: usize;
    type V: Copy;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `e^x`, see [`exp_scalar`]; inputs below [`EXP_MIN`] give 0.
    unsafe fn exp(x: Self::V) -> Self::V;
    unsafe fn reduce_sum(v: Self::V) -> f32;
    unsafe fn reduce_max(v: Self::V) -> f32;
}

/// Below this `exp` returns 0 (e^-87.33 is the smallest normal f32).
pub const EXP_MIN: f32 = -87.33;
const EXP_MAX: f32 = 88.3;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// `e^x` by Cephes' `expf`: x = n ln2 + r, a degree-6 polynomial for e^r,
/// 2^n through the exponent bits. Relative error about 2 ulp; 0 below
/// [`EXP_MIN`] (also for -inf, the masked scores), clamped at 88.3 above.
#[inline(always)]
pub fn exp_scalar(x: f32) -> f32 {
    if x < EXP_MIN || x.is_nan() {
        return if x.is_nan() { x } else { 0.0 };
    }
    let x = x.min(EXP_MAX);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[derive(Clone, Copy)]
pub struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    const BLOCK_VECS: usize = 4;
    type V = f32;
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        *p = v
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // Not `mul_add`: without the FMA feature that is a libm call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    unsafe fn exp(x: f32) -> f32 {
        exp_scalar(x)
    }
    #[inline(always)]
    unsafe fn reduce_sum(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn reduce_max(v: f32) -> f32 {
        v
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        const BLOCK_VECS: usize = 4;
        type V = __m512;
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn exp(x: __m512) -> __m512 {
            let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_MIN));
            let x = _mm512_min_ps(x, _mm512_set1_ps(EXP_MAX));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
                x,
                _mm512_set1_ps(LOG2E),
            ));
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
            let mut p = _mm512_set1_ps(P[0]);
            for c in &P[1..] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
            }
            let y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
            let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
            let y = _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
            _mm512_mask_mov_ps(y, under, _mm512_setzero_ps())
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn reduce_sum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn reduce_max(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx2;

    impl Simd for Avx2 {
        const LANES: usize = 8;
        const BLOCK_VECS: usize = 2;
        type V = __m256;
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn exp(x: __m256) -> __m256 {
            let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(EXP_MIN));
            let x = _mm256_min_ps(x, _mm256_set1_ps(EXP_MAX));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                x,
                _mm256_set1_ps(LOG2E),
            ));
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
            let mut p = _mm256_set1_ps(P[0]);
            for c in &P[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
            }
            let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
            let y = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
            // Below EXP_MIN (and -inf) the compare is false: 0; NaN stays NaN.
            _mm256_and_ps(y, keep)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn reduce_sum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn reduce_max(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }
}

/// Defines `$name(isa, args..)`, which runs the generic kernel
/// `$generic::<S>(args..)` compiled for `isa`'s instruction set, or the
/// scalar one when the CPU lacks it (so any `isa` is safe to pass).
macro_rules! simd_entry {
    ($(#[$doc:meta])* $vis:vis fn $name:ident => $generic:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        $vis fn $name(isa: $crate::kernels::simd::Isa, $($arg: $ty),*) {
            use $crate::kernels::simd::{Isa, Scalar};
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 if is_x86_feature_detected!("avx512f") => {
                    #[target_feature(enable = "avx512f")]
                    unsafe fn run($($arg: $ty),*) {
                        unsafe { $generic::<$crate::kernels::simd::Avx512>($($arg),*) }
                    }
                    // SAFETY: the CPU has AVX-512F (checked above).
                    unsafe { run($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") => {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn run($($arg: $ty),*) {
                        unsafe { $generic::<$crate::kernels::simd::Avx2>($($arg),*) }
                    }
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    unsafe { run($($arg),*) }
                }
                _ => unsafe { $generic::<Scalar>($($arg),*) },
            }
        }
    };
}
