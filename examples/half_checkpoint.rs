//! Stores a checkpoint's matrices in f16, as the released Long-CLIP files
//! do (positional tables, layer norms, biases and logit_scale stay f32):
//! how the bundled demo model is made small after training.
//!
//!   cargo run --release --example half_checkpoint -- IN.safetensors OUT.safetensors

use candle_core::DType;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out] = &args[..] else {
        anyhow::bail!("usage: half_checkpoint IN OUT.safetensors");
    };
    let mut ckpt = longclip::checkpoint::load(std::path::Path::new(input))?;
    for (key, t) in ckpt.tensors.iter_mut() {
        if t.rank() >= 2 && !key.contains("positional") {
            *t = t.to_dtype(DType::F16)?;
        }
    }
    longclip::export::save_checkpoint(&ckpt, std::path::Path::new(out))?;
    eprintln!("wrote {out} ({} parameters, matrices f16)", ckpt.parameter_count());
    Ok(())
}
