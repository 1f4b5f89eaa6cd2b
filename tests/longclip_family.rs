//! The rest of the Long-CLIP family: LongCLIP-B-32 and LongCLIP-L-336 shapes in
//! the official `.pt` format, and HF `CLIPModel` ports of LongCLIP-B/L, against
//! the official Long-CLIP code and transformers' `CLIPModel`
//! (tests/fixtures/longclip-family/, made by make_longclip_family.py; its
//! MANIFEST.json lists every case and the architecture it must load as).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::checkpoint::{self, Checkpoint, Format};
use longclip::family::Family;
use longclip::model::LongClip;

const MIN_COS: f64 = 0.9999;
const MAX_PIXEL_ERROR: f32 = 0.03;
const MAX_LOGIT_ERROR: f32 = 1e-3;
const CASES: [&str; 4] = ["b32", "l336", "hf-port-b16", "hf-port-l14"];

fn family_dir() -> PathBuf {
    fixture("longclip-family")
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(family_dir().join("MANIFEST.json")).unwrap()).unwrap()
}

fn family_expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(family_dir().join("expected.safetensors"), &Device::Cpu).expect("longclip-family expected.safetensors")
}

fn case_path(case: &str) -> PathBuf {
    family_dir().join(manifest()["cases"][case]["path"].as_str().unwrap())
}

fn load(case: &str) -> Checkpoint {
    checkpoint::load(&case_path(case)).unwrap_or_else(|e| panic!("{case}: {e:#}"))
}

fn captions() -> Vec<String> {
    manifest()["captions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect()
}

fn images() -> Vec<PathBuf> {
    manifest()["images"].as_array().unwrap().iter().map(|f| fixture(&format!("images/{}", f.as_str().unwrap()))).collect()
}

/// The official `longclip.tokenize(truncate=True)` ids with the zero padding removed.
fn official_ids(exp: &HashMap<String, Tensor>) -> Vec<Vec<u32>> {
    exp["ids.longclip_248"]
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| {
            let end = row.iter().rposition(|&t| t != 0).map_or(0, |p| p + 1);
            row[..end].iter().map(|&v| v as u32).collect()
        })
        .collect()
}

fn model(ckpt: &Checkpoint) -> LongClip {
    LongClip::new(ckpt, &Device::Cpu, DType::F32).unwrap()
}

/// Our pixels of the fixture images by the model's own transform.
fn our_pixels(m: &LongClip) -> Tensor {
    let t = longclip::preprocess::Transform { exif: false, ..m.transform() };
    let size = m.vision.image_size();
    let files = images();
    let data: Vec<f32> = files.iter().flat_map(|f| t.from_path(f).unwrap()).collect();
    Tensor::from_vec(data, (files.len(), 3, size, size), &Device::Cpu).unwrap()
}

fn usize_of(v: &serde_json::Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn every_member_loads_with_the_architecture_of_its_shapes() {
    let m = manifest();
    for case in CASES {
        let ckpt = load(case);
        let want = &m["cases"][case]["expected_config"];
        let c = &ckpt.config;
        assert_eq!(c.family, Family::LongClip, "{case}");
        assert_eq!(c.embed_dim, usize_of(&want["embed_dim"]), "{case} embed_dim");
        let t = &want["text"];
        assert_eq!(
            (c.text.width, c.text.layers, c.text.heads, c.text.mlp_width, c.text.context_length, c.text.vocab_size),
            (
                usize_of(&t["width"]),
                usize_of(&t["layers"]),
                usize_of(&t["heads"]),
                usize_of(&t["mlp_width"]),
                usize_of(&t["context_length"]),
                usize_of(&t["vocab_size"])
            ),
            "{case} text"
        );
        let v = &want["vision"];
        assert_eq!(
            (c.vision.width, c.vision.layers, c.vision.heads, c.vision.mlp_width, c.vision.patch_size, c.vision.image_size),
            (
                usize_of(&v["width"]),
                usize_of(&v["layers"]),
                usize_of(&v["heads"]),
                usize_of(&v["mlp_width"]),
                usize_of(&v["patch_size"]),
                usize_of(&v["image_size"])
            ),
            "{case} vision"
        );
        let official = !case.starts_with("hf-");
        assert_eq!(ckpt.format, if official { Format::TorchStateDict } else { Format::HuggingFace }, "{case}");
        // The official files keep two tables; a port has one, used as stored.
        assert_eq!(ckpt.is_long_clip(), official, "{case}");
    }
    // Older transformers saved the position_ids buffers: read, reported, unused.
    let port = load("hf-port-l14");
    for key in ["text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"] {
        assert!(port.ignored.iter().any(|k| k == key), "{key} not in {:?}", port.ignored);
    }
}

#[test]
fn token_ids_are_the_official_ones() {
    let exp = family_expected();
    let ours = Family::LongClip.rules().tokenize(&captions(), 248).unwrap();
    let ours: Vec<Vec<u32>> = ours.into_iter().map(|e| e.ids).collect();
    assert_eq!(ours, official_ids(&exp));
    // Every member, HF ports included, tokenizes with Long-CLIP's rules.
    for case in CASES {
        let m = model(&load(case));
        let ids: Vec<Vec<u32>> = m.tokenize(&captions(), 248).unwrap().into_iter().map(|e| e.ids).collect();
        assert_eq!(ids, ours, "{case}");
    }
}

#[test]
fn pixels_are_the_official_transform_at_each_resolution() {
    let exp = family_expected();
    for case in CASES {
        let m = model(&load(case));
        let key = format!("pixels.longclip_{}", m.vision.image_size());
        let d = max_abs_diff(&our_pixels(&m), &exp[&key]);
        eprintln!("{case}: {key} max abs diff {d:e}");
        assert!(d <= MAX_PIXEL_ERROR, "{case}: {d}");
    }
}

/// Text features of the official ids, image features of the official pixels,
/// and the logits between them.
fn check_case(case: &str, ckpt: &Checkpoint) {
    let exp = family_expected();
    let m = model(ckpt);
    let text = m.text.encode(&official_ids(&exp)).unwrap();
    assert_rows_cosine(&format!("{case} text"), &text, &exp[&format!("{case}.text_features")], MIN_COS);
    let pixels = &exp[&format!("pixels.longclip_{}", m.vision.image_size())];
    let image = m.vision.encode(pixels).unwrap();
    assert_rows_cosine(&format!("{case} image"), &image, &exp[&format!("{case}.image_features")], MIN_COS);
    let logits = m.logits_per_image(&image, &text).unwrap();
    let d = max_abs_diff(&logits, &exp[&format!("{case}.logits_per_image")]);
    eprintln!("{case}: logits max abs diff {d:e}");
    assert!(d <= MAX_LOGIT_ERROR, "{case}: logits {d}");
}

#[test]
fn features_and_logits_match_the_reference() {
    for case in CASES {
        check_case(case, &load(case));
    }
}

#[test]
fn end_to_end_from_captions_and_image_files() {
    let exp = family_expected();
    for case in CASES {
        let m = model(&load(case));
        let ids: Vec<Vec<u32>> = m.tokenize(&captions(), m.text.context_length()).unwrap().into_iter().map(|e| e.ids).collect();
        let text = m.text.encode(&ids).unwrap();
        assert_rows_cosine(&format!("{case} text from captions"), &text, &exp[&format!("{case}.text_features")], MIN_COS);
        let image = m.vision.encode(&our_pixels(&m)).unwrap();
        assert_rows_cosine(&format!("{case} image from files"), &image, &exp[&format!("{case}.image_features")], MIN_COS);
    }
}

/// A copy of an HF port directory with `edit` applied to its config.json.
fn edited_port(case: &str, dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = case_path(case);
    let out = dir.join(case);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    out
}

/// zer0int/LongCLIP-GmP-ViT-L-14's first config.json had no
/// `max_position_embeddings` (and no `image_size`): positions and resolution
/// come from the tensors, not from transformers' defaults (77, 224).
#[test]
fn a_port_config_without_positions_or_resolution_reads_them_from_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_port("hf-port-b16", tmp.path(), |c| {
        c["text_config"].as_object_mut().unwrap().remove("max_position_embeddings");
        c["vision_config"].as_object_mut().unwrap().remove("image_size");
    });
    let ckpt = checkpoint::load(&dir).unwrap();
    assert_eq!(ckpt.config, load("hf-port-b16").config);
    check_case("hf-port-b16", &ckpt);
}

/// Heads come from the port's config.json (here 2 of 4 and 3 of 8, which
/// width / 64 cannot give); without them, width / 64 as the official code.
#[test]
fn port_heads_come_from_its_config() {
    let ckpt = load("hf-port-l14");
    assert_eq!((ckpt.config.text.heads, ckpt.config.vision.heads), (2, 3));
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_port("hf-port-l14", tmp.path(), |c| {
        c["vision_config"].as_object_mut().unwrap().remove("num_attention_heads");
    });
    let err = format!("{:#}", checkpoint::load(&dir).err().expect("width 24 has no heads of 64"));
    assert!(err.contains("vision width 24") && err.contains("width / 64"), "{err}");
}

#[test]
fn info_names_each_member_long_clip() {
    for case in CASES {
        let out = ok(&["info", "--model", s(&case_path(case)), "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["family"], "long_clip", "{case}");
        let text = String::from_utf8_lossy(&ok(&["info", "--model", s(&case_path(case))]).stdout).into_owned();
        assert!(text.contains("family      Long-CLIP"), "{case}: {text}");
        let v = &json["config"]["vision"];
        assert!(text.contains(&format!("patch {}, resolution {}", v["patch_size"], v["image_size"])), "{case}: {text}");
    }
}

/// `convert` of each member (to an HF directory and to our safetensors)
/// loads back as Long-CLIP with the same features.
#[test]
fn converted_members_stay_long_clip() {
    let tmp = tempfile::tempdir().unwrap();
    for case in CASES {
        let original = load(case);
        let m = model(&original);
        let exp = family_expected();
        let ids = official_ids(&exp);
        let pixels = &exp[&format!("pixels.longclip_{}", m.vision.image_size())];
        let (text, image) = (m.text.encode(&ids).unwrap(), m.vision.encode(pixels).unwrap());
        for out in [tmp.path().join(format!("{case}-hf")), tmp.path().join(format!("{case}.safetensors"))] {
            ok(&["convert", "--model", s(&case_path(case)), "--out", s(&out)]);
            let back = checkpoint::load(&out).unwrap();
            assert_eq!(back.config.family, Family::LongClip, "{}", out.display());
            assert_eq!(back.config, original.config, "{}", out.display());
            let b = model(&back);
            let d = max_abs_diff(&b.text.encode(&ids).unwrap(), &text).max(max_abs_diff(&b.vision.encode(pixels).unwrap(), &image));
            assert!(d <= 1e-5, "{}: features moved by {d}", out.display());
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(format!("{case}-hf/config.json"))).unwrap()).unwrap();
        assert_eq!(config["longclip_family"], "long_clip", "{case}");
    }
}
