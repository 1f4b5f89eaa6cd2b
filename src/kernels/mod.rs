//! CPU kernels of our own for f32 inference, where candle's generic ops
//! lose to PyTorch (docs/cpu.md): fused attention and one-pass element-wise
//! ops. Each is written once over [`simd::Simd`] and runs with AVX-512,
//! AVX2+FMA or scalar code, chosen at run time; tests hold every one to the
//! plain candle path. Training and CUDA keep candle's ops. [`gemm_bf16`]
//! and [`gemm_int8`] are the linear layers of `--dtype bf16` and
//! `--dtype int8` on the CPU, also held to plain GEMMs by tests.

#[macro_use]
pub mod simd;
pub mod attention;
pub mod elementwise;
pub mod gemm_bf16;
pub mod gemm_int8;
pub mod peak;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Storage, Tensor};

pub use simd::Isa;

/// Which implementation the model's CPU inference path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The fused kernels of this module (CPU, f32 attention).
    Fused,
    /// candle's ops only, as in training and on CUDA.
    Candle,
}

impl Kernels {
    /// `LONGCLIP_KERNELS=candle` selects candle's ops; `fused` or unset the
    /// fused kernels; any other value warns and uses the fused kernels.
    pub fn from_env() -> Kernels {
        match std::env::var("LONGCLIP_KERNELS") {
            Ok(v) if v.eq_ignore_ascii_case("candle") => Kernels::Candle,
            Ok(v) if !v.is_empty() && !v.eq_ignore_ascii_case("fused") => {
                eprintln!("warning: LONGCLIP_KERNELS={v} is not `candle` or `fused`; using the fused kernels");
                Kernels::Fused
            }
            _ => Kernels::Fused,
        }
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor, without a copy.
/// Errors: another device or dtype, or a strided layout.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        bail!("CPU kernels need an f32 CPU tensor, got {:?} on {:?}", t.dtype(), t.device());
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("CPU kernels need a contiguous tensor, got strides {:?}", layout.stride());
    };
    Ok(f(&data[start..end]))
}

/// `out` as slots a GEMM may write without reading, so callers can pass
/// fresh, unzeroed memory ([`Vec::spare_capacity_mut`]) to the same code.
pub(crate) fn as_uninit(out: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the GEMMs only store
    // initialized floats through the result.
    unsafe { &mut *(out as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}

/// A raw output pointer rayon tasks may share: the GEMMs give each task its
/// own tile of the output, so no two tasks write the same element.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
