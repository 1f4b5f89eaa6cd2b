//! Our safetensors output and the Hugging Face export load back to the same
//! model; the export also runs in candle-transformers' independent CLIPModel,
//! and (with `LONGCLIP_HF_PYTHON`, a Python with transformers and torch) in
//! real transformers through `CLIPProcessor` + `CLIPModel`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::{text_model, vision_model, ClipConfig, ClipModel};
use common::*;
use longclip::checkpoint::{self, Checkpoint, Format};
use longclip::export::{preprocessor_config, save_checkpoint, write_hf_dir};
use longclip::preprocess::{CLIP_MEAN, CLIP_STD};
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
    for file in [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    ] {
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

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// transformers' `CLIPImageProcessor` settings that reproduce
/// `Transform::clip(resolution)`.
fn assert_preprocessor(p: &serde_json::Value, resolution: usize) {
    assert_eq!(p["image_processor_type"], "CLIPImageProcessor");
    assert_eq!(p["processor_class"], "CLIPProcessor");
    assert_eq!(p["do_convert_rgb"], true);
    assert_eq!(p["do_resize"], true);
    assert_eq!(p["size"], serde_json::json!({"shortest_edge": resolution}));
    assert_eq!(p["resample"], 3, "PIL.Image.BICUBIC");
    assert_eq!(p["do_center_crop"], true);
    assert_eq!(p["crop_size"], serde_json::json!({"height": resolution, "width": resolution}));
    assert_eq!(p["do_rescale"], true);
    assert_eq!(p["rescale_factor"].as_f64().unwrap(), 1.0 / 255.0);
    assert_eq!(p["do_normalize"], true);
    for (key, want) in [("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)] {
        let got: Vec<f64> = p[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), 3, "{key}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(*g as f32, w, "{key}: {got:?}");
        }
    }
    // written as the decimal literals of OpenAI's CLIP, not f32 noise
    assert_eq!(p["image_mean"], serde_json::json!([0.48145466, 0.4578275, 0.40821073]));
    assert_eq!(p["image_std"], serde_json::json!([0.26862954, 0.26130258, 0.27577711]));
}

#[test]
fn hf_export_writes_processor_and_tokenizer_configs() {
    let dir = tempfile::tempdir().unwrap();
    let original = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let out = dir.path().join("hf");
    write_hf_dir(&original, &out, DType::F32).unwrap();
    let resolution = original.config.vision.image_size;
    assert_preprocessor(&read_json(&out.join("preprocessor_config.json")), resolution);
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["vision_config"]["image_size"], resolution);
    let tok = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok["model_max_length"], 248);
    assert_eq!(tok["tokenizer_class"], "CLIPTokenizer");
    assert_eq!(tok["processor_class"], "CLIPProcessor");
    assert_eq!(tok["bos_token"], "<|startoftext|>");
    assert_eq!(tok["eos_token"], "<|endoftext|>");
    assert_eq!(tok["pad_token"], "<|endoftext|>");
    let special = read_json(&out.join("special_tokens_map.json"));
    assert_eq!(special["eos_token"], "<|endoftext|>");
    // a plain 77-position CLIP keeps its 77
    let clip77 = checkpoint::load(&fixture("tiny-clip77.pt")).unwrap();
    let out77 = dir.path().join("hf77");
    write_hf_dir(&clip77, &out77, DType::F32).unwrap();
    assert_eq!(read_json(&out77.join("tokenizer_config.json"))["model_max_length"], 77);
    assert_preprocessor(&read_json(&out77.join("preprocessor_config.json")), clip77.config.vision.image_size);
    // the real models' resolutions: ViT-L/14 (224) and ViT-L/14@336px
    for resolution in [64, 224, 336] {
        assert_preprocessor(&preprocessor_config(resolution), resolution);
    }
}

/// `LONGCLIP_HF_PYTHON` if it imports transformers and torch; else `None`
/// after a loud "skipped" line. CI does not install it (PyPI's torch wheel
/// brings the CUDA libraries: 5.6 GB, ~6 minutes; see README, `convert`).
fn hf_python(test: &str) -> Option<PathBuf> {
    match common::python_from_env("LONGCLIP_HF_PYTHON", &["transformers", "torch", "PIL", "numpy", "ftfy"]) {
        Ok(p) => Some(p),
        Err(problem) => {
            common::say_skipped(test, &problem, "Set LONGCLIP_HF_PYTHON to a Python with transformers, torch, pillow, numpy and ftfy to run it.");
            None
        }
    }
}

#[test]
fn hf_export_loads_in_transformers_clip_processor() {
    let Some(python) = hf_python("hf_export_loads_in_transformers_clip_processor") else { return };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let model = fixture("tiny-longclip.pt");
    ok(&["convert", "--model", s(&model), "--out", s(&hf)]);
    let images = fixture("images");
    let captions = fixture("captions.json");
    let (img, txt, ids) = (dir.path().join("img.npy"), dir.path().join("txt.npy"), dir.path().join("ids.json"));
    ok(&["tokenize", "--texts", s(&captions), "--out", s(&ids)]);
    ok(&["embed", "--model", s(&model), "--images", s(&images), "--out", s(&img)]);
    ok(&["embed", "--model", s(&model), "--texts", s(&captions), "--out", s(&txt)]);
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/hf_processor.py"));
    let out = Command::new(&python)
        .arg(&script)
        .args(["--hf", s(&hf), "--images", s(&images), "--captions", s(&captions)])
        .args(["--image-features", s(&img), "--text-features", s(&txt), "--ids", s(&ids)])
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hf_processor.py failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("hf_processor.py output: {e}\n{}", String::from_utf8_lossy(&out.stdout)));
    eprintln!("transformers: {report}");
    assert_eq!(report["model_max_length"], 248);
    let tokens: Vec<u64> = report["text_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(tokens.iter().any(|&n| n <= 77) && tokens.iter().any(|&n| n > 77), "short and long captions: {tokens:?}");
    assert_eq!(report["images"].as_array().unwrap().len(), 6);
    let f64s = |key: &str| -> Vec<f64> { report[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let (image, torchvision_crop) = (f64s("image_cos"), f64s("image_cos_torchvision_crop"));
    let margins = report["crop_margins"].as_array().unwrap();
    for (i, name) in report["images"].as_array().unwrap().iter().enumerate() {
        // transformers' own resize and normalization, cropped where torchvision crops
        assert!(torchvision_crop[i] >= 0.999, "{name}: transformers' resize + normalization vs ours: cos {}", torchvision_crop[i]);
        // CLIPProcessor as it is: its crop starts at floor(margin / 2), one
        // pixel before torchvision's round(margin / 2) when the margin is odd
        let odd = margins[i].as_array().unwrap().iter().any(|m| m.as_u64().unwrap() % 2 == 1);
        let min = if odd { 0.99 } else { 0.999 };
        assert!(image[i] >= min, "{name}: CLIPProcessor + CLIPModel image features vs ours: cos {} (crop margins {})", image[i], margins[i]);
    }
    // captions cleaned as the official tokenizer does (ftfy, HTML
    // unescaped twice) tokenize to our ids and give our features
    assert_eq!(report["clean_id_mismatches"], serde_json::json!([]), "transformers' ids differ from ours");
    let text = report["text_min_cos"].as_f64().unwrap();
    assert!(text >= 0.9999, "CLIPProcessor + CLIPModel text features vs ours: min cos {text}");
    eprintln!("captions whose raw ids differ in transformers (no ftfy / HTML cleaning there): {}", report["raw_id_mismatches"]);
}

#[test]
fn convert_to_safetensors_keeps_or_sets_the_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-longclip.pt");
    let original = checkpoint::load(&model).unwrap();
    let kept = dir.path().join("kept.safetensors");
    ok(&["convert", "--model", s(&model), "--out", s(&kept)]);
    let back = checkpoint::load(&kept).unwrap();
    assert_eq!(back.format, Format::Safetensors);
    assert_eq!(back.dtype_counts(), original.dtype_counts(), "dtypes as stored");
    assert_eq!(back.fingerprint().unwrap(), original.fingerprint().unwrap());
    let half = dir.path().join("half.safetensors");
    ok(&["convert", "--model", s(&model), "--out", s(&half), "--dtype", "f16"]);
    let back = checkpoint::load(&half).unwrap();
    assert_eq!(back.dtype_counts().keys().collect::<Vec<_>>(), vec!["F16"]);
    let (a, b) = (features(&original), features(&back));
    assert_rows_cosine("f16 safetensors text", &b.0, &a.0, 0.999);
}

/// A write that fails names the file asked for, not our temporary sibling,
/// and leaves nothing behind.
#[test]
fn a_failed_write_names_the_final_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("missing-dir/model.safetensors");
    let err = fails(&["convert", "--model", s(&fixture("tiny-longclip.pt")), "--out", s(&out)]);
    assert!(err.contains(&format!("{}: cannot write", out.display())) && !err.contains(".tmp-"), "{err}");
    let json = tmp.path().join("missing-dir/r.json");
    let err = format!("{:#}", longclip::export::write_atomic(&json, b"{}").unwrap_err());
    assert!(err.contains(&format!("{}: cannot write", json.display())) && !err.contains(".tmp-"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
