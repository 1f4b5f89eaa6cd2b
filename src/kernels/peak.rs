//! This machine's measured f32 peak: a tight loop of independent fused
//! multiply-adds on every rayon thread, so `longclip bench` can say how
//! close each path comes to the hardware (issue 16). Not a kernel the model
//! uses.

use std::time::Instant;

use rayon::prelude::*;

/// Independent accumulators per thread: enough to cover the FMA latency
/// (4 cycles) on two pipes.
const CHAINS: usize = 12;

/// f32 GFLOP/s (an FMA counts 2) of `seconds` of FMA loops on all rayon
/// threads, with the widest instruction set the CPU has (AVX-512, AVX2+FMA,
/// or scalar `mul_add`). Returns (GFLOP/s, instruction set name).
pub fn fma_peak_gflops(seconds: f64) -> (f64, &'static str) {
    let threads = rayon::current_num_threads();
    let (isa, lanes, run): (&str, usize, fn(u64) -> f32) = pick();
    // Calibrate one thread's rounds per second, then time all threads.
    let rounds = calibrate(run, seconds / 4.0);
    let start = Instant::now();
    let sink: f32 = (0..threads).into_par_iter().map(|_| run(rounds)).sum();
    let elapsed = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    let flops = 2.0 * (CHAINS * lanes) as f64 * rounds as f64 * threads as f64;
    (flops / elapsed / 1e9, isa)
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
}
