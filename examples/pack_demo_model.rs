//! Packs a trained demo model for the repository: matrices in f16, as the
//! released Long-CLIP files store them (positional tables, layer norms,
//! biases and logit_scale stay f32); rows of the token table for tokens that
//! no synth caption contains set to zero (they never got a gradient, only
//! weight decay of their random start); the file gzipped, which the zero
//! rows compress away. Scores of synth captions are unchanged.
//!
//!   cargo run --release --example pack_demo_model -- run/model.safetensors assets/demo/longclip-demo.safetensors.gz

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};
use longclip::synth::{self, SynthOptions};
use longclip::tokenizer::Tokenizer;

/// Enough scenes that every word of the generator occurs many times.
const VOCABULARY_SCENES: usize = 5000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out] = &args[..] else {
        anyhow::bail!("usage: pack_demo_model IN OUT.safetensors.gz");
    };
    let mut ckpt = longclip::checkpoint::load(Path::new(input))?;
    let used = synth_token_ids(ckpt.config.text.context_length)?;
    let table = ckpt.tensors.get("token_embedding.weight").expect("a text tower").clone();
    let mask: Vec<f32> = (0..table.dim(0)?).map(|i| if used.contains(&(i as u32)) { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (table.dim(0)?, 1), table.device())?.to_dtype(table.dtype())?;
    ckpt.tensors.insert("token_embedding.weight".into(), table.broadcast_mul(&mask)?);
    for (key, t) in ckpt.tensors.iter_mut() {
        if t.rank() >= 2 && !key.contains("positional") {
            *t = t.to_dtype(DType::F16)?;
        }
    }
    let plain = Path::new(out).with_extension("tmp");
    longclip::export::save_checkpoint(&ckpt, &plain)?;
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(out)?, flate2::Compression::best());
    gz.write_all(&std::fs::read(&plain)?)?;
    gz.finish()?;
    std::fs::remove_file(&plain)?;
    eprintln!("wrote {out} ({} parameters, matrices f16, {} token rows kept)", ckpt.parameter_count(), used.len());
    Ok(())
}

/// Every token id of the long and short captions of many synth scenes
/// (with SOT and EOT), under the options of training and of the demo.
fn synth_token_ids(context: usize) -> anyhow::Result<BTreeSet<u32>> {
    let tok = Tokenizer::global();
    let mut ids = BTreeSet::new();
    for opts in [SynthOptions { pool: 8, hard: 0.5, ..Default::default() }, SynthOptions::default()] {
        for i in 0..VOCABULARY_SCENES {
            let scene = synth::scene(&opts, i);
            for text in [scene.long_caption(), scene.short_caption()] {
                ids.extend(tok.encode(&text, context)?.ids);
            }
        }
    }
    Ok(ids)
}
