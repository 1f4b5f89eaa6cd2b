//! Writing checkpoints: our safetensors (official names, config in the
//! metadata) and Hugging Face model directories: a `CLIPModel` with the two
//! Long-CLIP tables merged into one, or the family's own keys (FG-CLIP's
//! two text paths), the family recorded in config.json. Every write goes to
//! a temporary name first and is renamed into place, so a reader never sees
//! half a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use serde_json::json;

use crate::checkpoint::{official_to_hf, Activation, Checkpoint, CONFIG_METADATA_KEY, HF_FAMILY_KEY, HF_KEEP_KEY};
use crate::tokenizer::{Tokenizer, EOT, SOT};

/// A sibling path that the final rename replaces: `dir/.name.tmp-PID`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes bytes to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    // Errors name the file asked for; the temporary name is ours.
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    rename_into_place(&tmp, path)
}

fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        anyhow::Error::new(e).context(format!("{}: cannot write (rename into place failed)", path.display()))
    })
}

fn write_safetensors(tensors: Vec<(String, Tensor)>, metadata: HashMap<String, String>, path: &Path) -> Result<()> {
    let tmp = temp_path(path);
    let views: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(k, t)| Ok((k, t.contiguous()?))).collect::<Result<_>>()?;
    if let Err(e) = safetensors::serialize_to_file(views, Some(metadata), &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    rename_into_place(&tmp, path)
}

/// Our own format: official names in their stored dtypes, and the config
/// (heads and family included) in the metadata so nothing has to be guessed
/// on load.
pub fn save_checkpoint(ckpt: &Checkpoint, path: &Path) -> Result<()> {
    save_checkpoint_as(ckpt, path, None)
}

/// [`save_checkpoint`] with every float tensor stored as `dtype` (None: as loaded).
pub fn save_checkpoint_as(ckpt: &Checkpoint, path: &Path, dtype: Option<DType>) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = ckpt
        .tensors
        .iter()
        .map(|(k, t)| match dtype {
            Some(d) if t.dtype().is_float() => Ok((k.clone(), t.to_dtype(d)?)),
            _ => Ok((k.clone(), t.clone())),
        })
        .collect::<Result<_>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::new();
    meta.insert(CONFIG_METADATA_KEY.to_string(), serde_json::to_string(&ckpt.config)?);
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("longclip.source".to_string(), ckpt.path.display().to_string());
    write_safetensors(tensors, meta, path)
}

/// What `longclip convert` wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Converted {
    /// Our safetensors (official names, config with the family in the metadata).
    Safetensors,
    /// A Hugging Face model directory ([`write_hf_dir`]).
    HfDir,
}

/// `longclip convert`: `out` ending in `.safetensors` gets our format (every
/// float tensor as `dtype`, or as stored when None), anything else a Hugging
/// Face directory (`dtype`, f32 when None). Both record the family, so the
/// written model loads as the family it was (a GOAL stays GOAL).
pub fn convert(ckpt: &Checkpoint, out: &Path, dtype: Option<DType>) -> Result<Converted> {
    let is_safetensors = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        save_checkpoint_as(ckpt, out, dtype)?;
        Ok(Converted::Safetensors)
    } else {
        write_hf_dir(ckpt, out, dtype.unwrap_or(DType::F32))?;
        Ok(Converted::HfDir)
    }
}

/// A Hugging Face `CLIPModel` directory: config.json, model.safetensors, the
/// CLIP tokenizer files and preprocessor_config.json, so that `CLIPModel`,
/// `CLIPTokenizer(Fast)`, `CLIPImageProcessor` and `CLIPProcessor` all load
/// it with `from_pretrained` alone. `dtype` is the storage type of every tensor.
pub fn write_hf_dir(ckpt: &Checkpoint, dir: &Path, dtype: DType) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: already exists and is not empty", dir.display());
    }
    let tmp = temp_path(dir);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", dir.display()))?;
    let tensors = official_to_hf(ckpt)?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(tensors, meta, &tmp.join("model.safetensors"))?;
    let config = serde_json::to_string_pretty(&hf_config(ckpt, dtype))?;
    std::fs::write(tmp.join("config.json"), config)?;
    write_tokenizer_files(&tmp, ckpt.config.text.context_length)?;
    let preprocessor = serde_json::to_string_pretty(&preprocessor_config(ckpt.config.vision.image_size))?;
    std::fs::write(tmp.join("preprocessor_config.json"), preprocessor)?;
    if dir.exists() {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("{}: cannot rename into place", dir.display()))
}

fn hf_config(ckpt: &Checkpoint, dtype: DType) -> serde_json::Value {
    let c = &ckpt.config;
    let act = match c.activation {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
    };
    let torch_dtype = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    // The merged table loses the Long-CLIP split: the extra key keeps it
    // (transformers ignores it; `longclip finetune` splits the table there).
    // The family key keeps what the tensors alone do not say (GOAL's tensors
    // are a Long-CLIP port's). FG-CLIP's tables and config follow its own code.
    let (architecture, text_positions) = c.family.rules().hf_model(c);
    json!({
        "architectures": [architecture],
        HF_FAMILY_KEY: c.family,
        HF_KEEP_KEY: c.text.keep_positions,
        "model_type": "clip",
        "projection_dim": c.embed_dim,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "torch_dtype": torch_dtype,
        "text_config": {
            "model_type": "clip_text_model",
            "hidden_size": c.text.width,
            "intermediate_size": c.text.mlp_width,
            "num_attention_heads": c.text.heads,
            "num_hidden_layers": c.text.layers,
            "max_position_embeddings": text_positions,
            "vocab_size": c.text.vocab_size,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "bos_token_id": SOT,
            "eos_token_id": EOT,
            "pad_token_id": EOT,
            "projection_dim": c.embed_dim,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": c.vision.width,
            "intermediate_size": c.vision.mlp_width,
            "num_attention_heads": c.vision.heads,
            "num_hidden_layers": c.vision.layers,
            "image_size": c.vision.image_size,
            "patch_size": c.vision.patch_size,
            "num_channels": 3,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "projection_dim": c.embed_dim,
        },
    })
}

/// OpenAI CLIP's normalization, as decimal literals (the f32 constants of
/// `preprocess` would print with float noise).
const HF_IMAGE_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const HF_IMAGE_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// preprocessor_config.json for transformers' `CLIPImageProcessor`, the
/// same steps as `Transform::clip(resolution)`: RGB, shortest edge to
/// `resolution` (bicubic, PIL's resample 3), center crop to
/// `resolution` x `resolution`, scale by 1/255, CLIP mean and std.
pub fn preprocessor_config(resolution: usize) -> serde_json::Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_convert_rgb": true,
        "do_resize": true,
        "size": {"shortest_edge": resolution},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": resolution, "width": resolution},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": HF_IMAGE_MEAN,
        "image_std": HF_IMAGE_STD,
    })
}

/// vocab.json + merges.txt (what `CLIPTokenizer` reads) and its configs.
fn write_tokenizer_files(dir: &Path, context_length: usize) -> Result<()> {
    let tok = Tokenizer::global();
    let vocab: serde_json::Map<String, serde_json::Value> =
        tok.vocabulary().iter().enumerate().map(|(i, s)| (s.clone(), json!(i))).collect();
    std::fs::write(dir.join("vocab.json"), serde_json::to_string(&vocab)?)?;
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in tok.merges() {
        merges.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(dir.join("merges.txt"), merges)?;
    let special = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    });
    std::fs::write(dir.join("special_tokens_map.json"), serde_json::to_string_pretty(&special)?)?;
    let mut config = special;
    config["tokenizer_class"] = json!("CLIPTokenizer");
    config["model_max_length"] = json!(context_length);
    config["do_lower_case"] = json!(true);
    config["processor_class"] = json!("CLIPProcessor");
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}
