//! Our safetensors output and the Hugging Face export load back to the same
//! model; the export also runs in candle-transformers' independent CLIPModel.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::{text_model, vision_model, ClipConfig, ClipModel};
use common::*;
use longclip::checkpoint::{self, Checkpoint, Format};
use longclip::export::{save_checkpoint, write_hf_dir};
use longclip::model::LongClip;
use longclip::stretch::stretch_checkpoint;

fn features(ckpt: &Checkpoint) -> (Tensor, Tensor) {
    let model = LongClip::new(ckpt, &Device::Cpu, DType::F32).unwrap();
    let text = model.text.encode(&reference_ids("ids_248")).unwrap();
    let image = model.vision.encode(&expected()["pixels"]).unwrap();
    (text, image)
}

#[test]
fn stretched_safetensors_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let stretched = stretch_checkpoint(checkpoint::load(&fixture("tiny-clip77.pt")).unwrap()).unwrap();
    let path = dir.path().join("stretched.safetensors");
    save_checkpoint(&stretched, &path).unwrap();
    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded.format, Format::Safetensors);
    assert_eq!(loaded.config, stretched.config);
    assert!(loaded.is_long_clip());
    let (a, b) = (features(&stretched), features(&loaded));
    assert_eq!(max_abs_diff(&a.0, &b.0), 0.0);
    assert_eq!(max_abs_diff(&a.1, &b.1), 0.0);
    // And it is still the official stretched model.
    assert_rows_cosine("reloaded stretched text", &b.0, &expected()["clip77.stretched.text_features"], 0.9999);
}

#[test]
fn hf_export_loads_back_to_the_same_features() {
    let dir = tempfile::tempdir().unwrap();
    let original = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let out = dir.path().join("hf");
    write_hf_dir(&original, &out, DType::F32).unwrap();
    for file in ["config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("vocab.json")).unwrap()).unwrap();
    assert_eq!(vocab.len(), 49408);
    assert_eq!(vocab["<|endoftext|>"], 49407);
    let loaded = checkpoint::load(&out).unwrap();
    assert_eq!(loaded.format, Format::HuggingFace);
    assert_eq!(loaded.config, original.config);
    assert_eq!(loaded.tensors["positional_embedding"].dims(), &[248, 128]);
    let (a, b) = (features(&original), features(&loaded));
    assert_rows_cosine("hf round trip text", &b.0, &a.0, 0.99999);
    assert_rows_cosine("hf round trip image", &b.1, &a.1, 0.99999);
}

#[test]
fn hf_export_runs_in_candle_transformers_clip() {
    let dir = tempfile::tempdir().unwrap();
    let original = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let out = dir.path().join("hf");
    write_hf_dir(&original, &out, DType::F32).unwrap();
    let c = &original.config;
    let config = ClipConfig {
        text_config: text_model::ClipTextConfig {
            vocab_size: c.text.vocab_size,
            embed_dim: c.text.width,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: c.text.mlp_width,
            max_position_embeddings: c.text.context_length,
            pad_with: None,
            num_hidden_layers: c.text.layers,
            num_attention_heads: c.text.heads,
            projection_dim: c.embed_dim,
        },
        vision_config: vision_model::ClipVisionConfig {
            embed_dim: c.vision.width,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: c.vision.mlp_width,
            num_hidden_layers: c.vision.layers,
            num_attention_heads: c.vision.heads,
            projection_dim: c.embed_dim,
            num_channels: 3,
            image_size: c.vision.image_size,
            patch_size: c.vision.patch_size,
        },
        logit_scale_init_value: 2.6592,
        image_size: c.vision.image_size,
    };
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[out.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap() };
    let clip = ClipModel::new(vb, &config).unwrap();
    let exp = expected();
    // candle-transformers pools at argmax(ids) of a padded batch; feed one
    // caption at a time at the official 248-token padding.
    let ids = reference_ids("ids_248");
    let rows: Vec<Tensor> = ids
        .iter()
        .filter(|s| s.iter().filter(|&&t| t == 49407).count() == 1)
        .map(|s| {
            let mut p = s.clone();
            p.resize(248, 0);
            clip.get_text_features(&Tensor::new(p.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap()
        })
        .collect();
    let want: Vec<Tensor> = ids
        .iter()
        .enumerate()
        .filter(|(_, s)| s.iter().filter(|&&t| t == 49407).count() == 1)
        .map(|(i, _)| exp["longclip.text_features"].get(i).unwrap().unsqueeze(0).unwrap())
        .collect();
    let text = Tensor::cat(&rows, 0).unwrap();
    assert_rows_cosine("candle-transformers text", &text, &Tensor::cat(&want, 0).unwrap(), 0.9999);
    let image = clip.get_image_features(&exp["pixels"]).unwrap();
    assert_rows_cosine("candle-transformers image", &image, &exp["longclip.image_features"], 0.9999);
}

#[test]
fn hf_export_in_f16_loads() {
    let dir = tempfile::tempdir().unwrap();
    let original = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let out = dir.path().join("hf16");
    write_hf_dir(&original, &out, DType::F16).unwrap();
    let loaded = checkpoint::load(&out).unwrap();
    let (a, b) = (features(&original), features(&loaded));
    assert_rows_cosine("f16 export text", &b.0, &a.0, 0.999);
}

#[test]
fn convert_refuses_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "x").unwrap();
    let original = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let err = write_hf_dir(&original, dir.path(), DType::F32).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(dir.path().join("keep.txt").exists());
}

#[test]
fn fingerprint_follows_the_weights_not_the_file_format() {
    let dir = tempfile::tempdir().unwrap();
    let original = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let path = dir.path().join("copy.safetensors");
    save_checkpoint(&original, &path).unwrap();
    let copy = checkpoint::load(&path).unwrap();
    let fp = original.fingerprint().unwrap();
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
    assert_eq!(fp, copy.fingerprint().unwrap());
    let other = checkpoint::load(&fixture("tiny-clip77.pt")).unwrap();
    assert_ne!(fp, other.fingerprint().unwrap());
}
