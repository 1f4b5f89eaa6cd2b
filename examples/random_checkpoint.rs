//! Writes a Long-CLIP checkpoint with random weights in a released shape,
//! for benchmarks that need real model sizes but no real weights:
//!
//!   cargo run --release --example random_checkpoint -- longclip-b /tmp/longclip-b-random.safetensors

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [preset, out] = &args[..] else {
        anyhow::bail!("usage: random_checkpoint PRESET OUT.safetensors (PRESET: longclip-b, longclip-l or demo)");
    };
    let config = longclip::checkpoint::Config::preset(preset)?;
    let ckpt = longclip::checkpoint::random(&config, 0)?;
    longclip::export::save_checkpoint(&ckpt, std::path::Path::new(out))?;
    eprintln!("wrote {out} ({preset}, random weights, {} parameters)", ckpt.parameter_count());
    Ok(())
}
