//! CPU kernels of our own, each held to the plain candle path by tests.
//! [`gemm_bf16`] and [`gemm_int8`] are the linear layers of `--dtype bf16`
//! and `--dtype int8` on the CPU (issue 16).

pub mod gemm_bf16;
pub mod gemm_int8;
