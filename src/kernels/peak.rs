//! This machine's measured peaks: tight loops of independent f32 fused
//! multiply-adds, and of the bf16 (VDPBF16PS) and int8 (VPDPBUSD) dot
//! products where the CPU has them, on every rayon thread, so `longclip
//! bench` can say how close each path comes to the hardware (issue 16).
//! Not kernels the model uses.

use std::time::Instant;

use rayon::prelude::*;

/// Independent accumulators per thread: enough to cover the FMA latency
/// (4 cycles) on two pipes.
const CHAINS: usize = 12;

/// f32 GFLOP/s (an FMA counts 2) of `seconds` of FMA loops on all rayon
/// threads, with the widest instruction set the CPU has (AVX-512, AVX2+FMA,
/// or scalar `mul_add`). Returns (GFLOP/s, instruction set name).
pub fn fma_peak_gflops(seconds: f64) -> (f64, &'static str) {
    let (isa, lanes, run): (&str, usize, fn(u64) -> f32) = pick();
    (measure(run, 2 * lanes, seconds), isa)
}

/// A dot-product instruction the low-precision GEMMs are built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dot {
    /// VDPBF16PS (AVX512_BF16): 16 lanes x 2 bf16 products, 64 FLOP.
    Bf16,
    /// VPDPBUSD (AVX512_VNNI): 16 lanes x 4 u8 x s8 products, 128 OP.
    Int8,
}

/// G(FL)OP/s (a multiply-add counts 2) of `seconds` of `dot` loops on all
/// rayon threads, or None when the CPU lacks the instruction. A VDPBF16PS
/// does twice an FMA's work, but on the Intel core this was measured on it
/// issues once every two cycles against two FMAs a cycle, so the bf16 peak
/// is half the f32 one there (docs/cpu.md).
pub fn dot_peak_gops(dot: Dot, seconds: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let (feature, ops, run): (bool, usize, fn(u64) -> f32) = match dot {
            Dot::Bf16 => (crate::kernels::gemm_bf16::has_simd(), 64, |n| unsafe { x86::bf16_dot(n) }),
            Dot::Int8 => (crate::kernels::gemm_int8::has_simd(), 128, |n| unsafe { x86::int8_dot(n) }),
        };
        if !feature {
            return None;
        }
        Some(measure(run, ops, seconds))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dot, seconds);
        None
    }
}

/// G(FL)OP/s of `run` on every thread, `ops` per chain per round:
/// calibrate one thread's rounds per second, then time all threads.
fn measure(run: fn(u64) -> f32, ops: usize, seconds: f64) -> f64 {
    let threads = rayon::current_num_threads();
    let rounds = calibrate(run, seconds / 4.0);
    let start = Instant::now();
    let sink: f32 = (0..threads).into_par_iter().map(|_| run(rounds)).sum();
    let elapsed = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    (ops * CHAINS) as f64 * rounds as f64 * threads as f64 / elapsed / 1e9
}

fn calibrate(run: fn(u64) -> f32, seconds: f64) -> u64 {
    let mut rounds = 1u64 << 16;
    loop {
        let start = Instant::now();
        std::hint::black_box(run(rounds));
        let t = start.elapsed().as_secs_f64();
        if t > 0.05 {
            return ((rounds as f64) * (seconds * 4.0) / t).max(1.0) as u64;
        }
        rounds *= 4;
    }
}

fn pick() -> (&'static str, usize, fn(u64) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return ("avx512", 16, |n| unsafe { x86::avx512(n) });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return ("avx2+fma", 8, |n| unsafe { x86::avx2(n) });
        }
    }
    ("scalar", 1, scalar)
}

fn scalar(rounds: u64) -> f32 {
    let mut acc = [0.0f32; CHAINS];
    let (a, b) = (std::hint::black_box(0.999_f32), std::hint::black_box(0.001_f32));
    for _ in 0..rounds {
        for x in acc.iter_mut() {
            *x = x.mul_add(a, b);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(rounds: u64) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999));
        let b = _mm512_set1_ps(std::hint::black_box(0.001));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut total = _mm512_setzero_ps();
        for x in acc {
            total = _mm512_add_ps(total, x);
        }
        _mm512_reduce_add_ps(total)
    }

    /// VDPBF16PS chains of 1.0 x 1.0 pairs (each lane gains 2 a round).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_dot(rounds: u64) -> f32 {
        let one: __m512bh = std::mem::transmute(_mm512_set1_epi16(std::hint::black_box(0x3f80)));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, one, one);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }

    /// VPDPBUSD chains of 1 x 1 bytes (each lane gains 4 a round, wrapping).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn int8_dot(rounds: u64) -> f32 {
        let one = _mm512_set1_epi8(std::hint::black_box(1));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, one, one);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_epi32(*x) as f32).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(rounds: u64) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999));
        let b = _mm256_set1_ps(std::hint::black_box(0.001));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let mut total = _mm256_setzero_ps();
        for x in acc {
            total = _mm256_add_ps(total, x);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), total);
        out.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loops_compute_the_recurrence() {
        // x <- 0.999 x + 0.001 converges to 1: every chain of every ISA must get there.
        let (_, lanes, run) = pick();
        let total = run(20_000);
        assert!((total - (CHAINS * lanes) as f32).abs() < 1e-2 * (CHAINS * lanes) as f32, "{total}");
        assert!((scalar(20_000) - CHAINS as f32).abs() < 1e-2 * CHAINS as f32);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_dot_loops_count_their_products() {
        // 100 rounds: bf16 lanes reach 2 * 100, int8 lanes 4 * 100, on every chain.
        if crate::kernels::gemm_bf16::has_simd() {
            assert_eq!(unsafe { x86::bf16_dot(100) }, (CHAINS * 16 * 200) as f32);
        }
        if crate::kernels::gemm_int8::has_simd() {
            assert_eq!(unsafe { x86::int8_dot(100) }, (CHAINS * 16 * 400) as f32);
        }
    }
}
