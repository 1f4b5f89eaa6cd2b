//! FG-CLIP v1 and GOAL against what their official code computes
//! (tests/fixtures/frontier/, made by make_frontier_fixtures.py; see its
//! README for every rule and the official file each comes from).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::checkpoint::{self, Checkpoint};
use longclip::family::{Family, TextPath};
use longclip::model::LongClip;

const MIN_COS: f64 = 0.9999;
const MAX_PIXEL_ERROR: f32 = 0.03;
const MAX_LOGIT_ERROR: f32 = 1e-3;
const PAD: u32 = 49407;
const IMAGES: [&str; 4] = ["chelsea.png", "rocket.jpg", "camera.png", "logo.png"];

fn frontier(name: &str) -> PathBuf {
    fixture("frontier").join(name)
}

/// The fixture images in DIR/images.
fn copy_images(dir: &std::path::Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for f in IMAGES {
        std::fs::copy(fixture(&format!("images/{f}")), images.join(f)).unwrap();
    }
    images
}

fn frontier_expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(frontier("expected.safetensors"), &Device::Cpu).expect("frontier expected.safetensors")
}

fn captions() -> Vec<String> {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(frontier("MANIFEST.json")).unwrap()).unwrap();
    m["captions"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
}

/// Official ids [N, L] (int64, padded) as rows.
fn official_ids(exp: &HashMap<String, Tensor>, key: &str) -> Vec<Vec<u32>> {
    exp[key].to_vec2::<i64>().unwrap().into_iter().map(|r| r.into_iter().map(|v| v as u32).collect()).collect()
}

/// HF padding: 49407 up to `len`.
fn padded(ids: &[u32], len: usize) -> Vec<u32> {
    let mut out = ids.to_vec();
    out.resize(len, PAD);
    out
}

/// Ids up to and including the first EOT (what the model needs: attention is causal).
fn unpadded(ids: &[u32]) -> Vec<u32> {
    let end = ids.iter().position(|&t| t == PAD).map_or(ids.len(), |p| p + 1);
    ids[..end].to_vec()
}

fn fgclip() -> Checkpoint {
    checkpoint::load(&frontier("fg-clip-tiny")).expect("FG-CLIP fixture loads")
}

fn goal() -> Checkpoint {
    checkpoint::load(&frontier("goal-tiny/goal-tiny.pth")).expect("GOAL fixture loads")
}

fn model(ckpt: &Checkpoint, path: Option<TextPath>) -> LongClip {
    LongClip::with_text_path(ckpt, &Device::Cpu, DType::F32, path).unwrap()
}

fn our_pixels(family: Family, size: usize) -> Tensor {
    let t = family.rules().transform(size);
    let t = longclip::preprocess::Transform { exif: false, ..t };
    let data: Vec<f32> = IMAGES.iter().flat_map(|f| t.from_path(&fixture(&format!("images/{f}"))).unwrap()).collect();
    Tensor::from_vec(data, (IMAGES.len(), 3, size, size), &Device::Cpu).unwrap()
}

// ---------------------------------------------------------------------------
// Tokens

#[test]
fn hf_token_ids_match_the_official_tokenizer() {
    let exp = frontier_expected();
    let texts = captions();
    for (family, len, key) in [(Family::FgClip, 248, "ids.hf_248"), (Family::FgClip, 77, "ids.hf_77"), (Family::Goal, 248, "ids.hf_248")] {
        let ours = family.rules().tokenize(&texts, len).unwrap();
        let official = official_ids(&exp, key);
        for (i, (e, want)) in ours.iter().zip(&official).enumerate() {
            assert_eq!(padded(&e.ids, len), *want, "{family} caption {i} at {len}");
        }
    }
}

#[test]
fn hf_and_long_clip_tokenizers_differ_on_caption_2_only() {
    let exp = frontier_expected();
    let texts = captions();
    let hf = Family::FgClip.rules().tokenize(&texts, 248).unwrap();
    let lc = Family::LongClip.rules().tokenize(&texts, 248).unwrap();
    let official_lc = official_ids(&exp, "ids.longclip_248");
    for i in 0..texts.len() {
        let mut want = official_lc[i].clone();
        want.truncate(lc[i].ids.len());
        assert_eq!(lc[i].ids, want, "Long-CLIP ids of caption {i}");
        assert_eq!(hf[i].ids == lc[i].ids, i != 2, "caption {i}");
    }
}

#[test]
fn long_captions_are_truncated_and_flagged() {
    let texts = captions();
    let enc = Family::FgClip.rules().tokenize(&texts, 248).unwrap();
    let flagged: Vec<usize> = (0..texts.len()).filter(|&i| enc[i].truncated).collect();
    assert_eq!(flagged, vec![11], "only caption 11 (415 BPE) is over 248");
    assert_eq!(enc[10].ids, enc[11].ids, "rows 10 and 11 truncate to the same ids");
    let short = Family::FgClip.rules().tokenize(&texts, 77).unwrap();
    let flagged: Vec<usize> = (0..texts.len()).filter(|&i| short[i].truncated).collect();
    assert_eq!(flagged, vec![7, 8, 9, 10, 11]);
}

// ---------------------------------------------------------------------------
// Pixels

#[test]
fn fgclip_pixels_are_a_square_resize() {
    let exp = frontier_expected();
    let d = max_abs_diff(&our_pixels(Family::FgClip, 64), &exp["fgclip.pixel_values"]);
    eprintln!("fgclip pixel_values max abs diff {d:e}");
    assert!(d <= MAX_PIXEL_ERROR, "{d}");
}

#[test]
fn goal_pixels_are_hf_clip_image_processor() {
    let exp = frontier_expected();
    let d = max_abs_diff(&our_pixels(Family::Goal, 64), &exp["goal.pixel_values"]);
    eprintln!("goal pixel_values max abs diff {d:e}");
    assert!(d <= MAX_PIXEL_ERROR, "{d}");
    // rocket.jpg at 64 px: 95 wide, HF's left = 15 where torchvision's is 16.
    let lc = our_pixels(Family::LongClip, 64);
    assert!(max_abs_diff(&lc.get(1).unwrap(), &exp["goal.pixel_values"].get(1).unwrap()) > 0.1);
}

// ---------------------------------------------------------------------------
// FG-CLIP

#[test]
fn fgclip_loads_as_its_family() {
    let ckpt = fgclip();
    assert_eq!(ckpt.config.family, Family::FgClip);
    assert_eq!(ckpt.config.text.context_length, 248);
    assert_eq!(ckpt.config.text.keep_positions, 20);
    assert_eq!((ckpt.config.text.heads, ckpt.config.vision.heads), (2, 2));
    assert_eq!(ckpt.config.embed_dim, 24);
    assert!(ckpt.ignored.iter().any(|k| k == "logit_scale_finegraind"));
    assert_eq!(model(&ckpt, None).text_path, TextPath::Long);
}

fn check_text(what: &str, ckpt: &Checkpoint, path: TextPath, ids_key: &str, features_key: &str) -> Tensor {
    let exp = frontier_expected();
    let m = model(ckpt, Some(path));
    let ids: Vec<Vec<u32>> = official_ids(&exp, ids_key).iter().map(|r| unpadded(r)).collect();
    let ours = m.text.encode(&ids).unwrap();
    assert_rows_cosine(what, &ours, &exp[features_key], MIN_COS);
    eprintln!("{what}: max abs diff {:e}", max_abs_diff(&ours, &exp[features_key]));
    ours
}

#[test]
fn fgclip_text_features_match_on_both_paths() {
    let ckpt = fgclip();
    // Rows 3 and 4 end at 19 and 20 (last ori row, first res row), 6 and 10
    // are exactly 77 and 248 tokens.
    check_text("fgclip long", &ckpt, TextPath::Long, "ids.hf_248", "fgclip.text_features_long");
    check_text("fgclip short", &ckpt, TextPath::Short, "ids.hf_77", "fgclip.text_features_short");
}

#[test]
fn fgclip_image_features_and_logits_match() {
    let exp = frontier_expected();
    let ckpt = fgclip();
    for (path, ids_key, logits_key) in
        [(TextPath::Long, "ids.hf_248", "fgclip.logits_per_image_long"), (TextPath::Short, "ids.hf_77", "fgclip.logits_per_image_short")]
    {
        let m = model(&ckpt, Some(path));
        let images = m.vision.encode(&exp["fgclip.pixel_values"]).unwrap();
        assert_rows_cosine("fgclip image_features", &images, &exp["fgclip.image_features"], MIN_COS);
        let ids: Vec<Vec<u32>> = official_ids(&exp, ids_key).iter().map(|r| unpadded(r)).collect();
        let texts = m.text.encode(&ids).unwrap();
        let logits = m.logits_per_image(&images, &texts).unwrap();
        let d = max_abs_diff(&logits, &exp[logits_key]);
        eprintln!("{logits_key}: max abs diff {d:e}");
        assert!(d <= MAX_LOGIT_ERROR, "{logits_key}: {d}");
    }
}

#[test]
fn fgclip_end_to_end_from_files_and_captions() {
    let exp = frontier_expected();
    let ckpt = fgclip();
    let m = model(&ckpt, None);
    let texts = captions();
    let ids: Vec<Vec<u32>> = m.tokenize(&texts, 248).unwrap().into_iter().map(|e| e.ids).collect();
    let ours = m.text.encode(&ids).unwrap();
    assert_rows_cosine("fgclip long from captions", &ours, &exp["fgclip.text_features_long"], MIN_COS);
    let images = m.vision.encode(&our_pixels(Family::FgClip, 64)).unwrap();
    assert_rows_cosine("fgclip image_features from files", &images, &exp["fgclip.image_features"], MIN_COS);
}

// ---------------------------------------------------------------------------
// GOAL

#[test]
fn goal_loads_from_a_bare_state_dict() {
    let ckpt = goal();
    assert_eq!(ckpt.config.family, Family::Goal);
    assert_eq!(ckpt.config.text.context_length, 248);
    assert_eq!((ckpt.config.text.width, ckpt.config.vision.width, ckpt.config.embed_dim), (8, 48, 16));
    assert_eq!((ckpt.config.text.heads, ckpt.config.vision.heads), (2, 2), "heads from the base config.json beside it");
    assert!(!ckpt.is_long_clip());
}

#[test]
fn goal_table_is_loaded_not_restretched() {
    let exp = frontier_expected();
    let ckpt = goal();
    let table = ckpt.text_positions().unwrap();
    let stretched = &exp["goal.stretch_output_248"];
    assert!(max_abs_diff(&table, stretched) > 1e-3, "the .pth's table is not the stretch of the base 77 rows");
    let raw = candle_core::pickle::read_all(frontier("goal-tiny/goal-tiny.pth")).unwrap();
    let (_, stored) = raw.iter().find(|(k, _)| k.ends_with("text_model.embeddings.position_embedding.weight")).unwrap();
    assert_eq!(max_abs_diff(&table, stored), 0.0);
}

#[test]
fn goal_features_and_logits_match() {
    let exp = frontier_expected();
    let ckpt = goal();
    let m = model(&ckpt, None);
    check_text("goal text", &ckpt, TextPath::Long, "ids.hf_248", "goal.text_features");
    let images = m.vision.encode(&exp["goal.pixel_values"]).unwrap();
    assert_rows_cosine("goal image_features", &images, &exp["goal.image_features"], MIN_COS);
    let from_files = m.vision.encode(&our_pixels(Family::Goal, 64)).unwrap();
    assert_rows_cosine("goal image_features from files", &from_files, &exp["goal.image_features"], MIN_COS);
    let ids: Vec<Vec<u32>> = m.tokenize(&captions(), 248).unwrap().into_iter().map(|e| e.ids).collect();
    let texts = m.text.encode(&ids).unwrap();
    let logits = m.logits_per_image(&images, &texts).unwrap();
    let d = max_abs_diff(&logits, &exp["goal.logits_per_image"]);
    eprintln!("goal.logits_per_image: max abs diff {d:e}");
    assert!(d <= MAX_LOGIT_ERROR, "{d}");
    assert!(Family::Goal.text_path(Some(TextPath::Short)).is_err());
}

// ---------------------------------------------------------------------------
// Identity: fingerprints, manifests

#[test]
fn family_is_part_of_the_fingerprint() {
    let mut ckpt = goal();
    let fp = ckpt.fingerprint().unwrap();
    ckpt.config.family = Family::LongClip;
    assert_ne!(ckpt.fingerprint().unwrap(), fp, "same tensors, other tokenizer and pixels: another model");
}

#[test]
fn families_survive_our_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, ckpt) in [("fg", fgclip()), ("goal", goal())] {
        let path = tmp.path().join(format!("{name}.safetensors"));
        longclip::export::save_checkpoint(&ckpt, &path).unwrap();
        let back = checkpoint::load(&path).unwrap();
        assert_eq!(back.config.family, ckpt.config.family, "{name}");
        assert_eq!(back.fingerprint().unwrap(), ckpt.fingerprint().unwrap(), "{name}");
    }
}

/// Our metadata's family is checked against the tensors, as an HF
/// config.json's is: a relabelled file is refused, not read as another model.
#[test]
fn a_family_in_our_metadata_that_the_tensors_cannot_be_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let clip77 = checkpoint::load(&fixture("tiny-clip77.pt")).unwrap();
    let long = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    for (name, mut ckpt, family, reads_as) in [
        ("clip77-as-goal", clip77, Family::Goal, "Long-CLIP"),
        ("fg-as-goal", fgclip(), Family::Goal, "FG-CLIP"),
        ("fg-as-long", fgclip(), Family::LongClip, "FG-CLIP"),
        ("long-as-fg", long, Family::FgClip, "Long-CLIP"),
    ] {
        ckpt.config.family = family;
        let path = tmp.path().join(format!("{name}.safetensors"));
        longclip::export::save_checkpoint(&ckpt, &path).unwrap();
        let err = format!("{:#}", checkpoint::load(&path).err().unwrap_or_else(|| panic!("{name} loaded")));
        assert!(
            err.contains("'longclip.config' metadata records the") && err.contains(&format!("read as {reads_as}")) && err.contains(name),
            "{name}: {err}"
        );
    }
}

#[test]
fn old_manifests_read_as_long_clip() {
    let old = r#"{"path": "/m.pt", "fingerprint": "sha256:00", "embed_dim": 512, "image_size": 224, "context_length": 248}"#;
    let info: longclip::index::ModelInfo = serde_json::from_str(old).unwrap();
    assert_eq!(info.family, Family::LongClip);
    let info = longclip::search::model_info(&fgclip(), &frontier("fg-clip-tiny")).unwrap();
    assert_eq!(info.family, Family::FgClip);
    assert!(serde_json::to_string(&info).unwrap().contains("\"family\":\"fg_clip\""));
}

// ---------------------------------------------------------------------------
// Bad input

/// The FG-CLIP fixture as a directory with `edit` applied to its tensors.
fn edited_fgclip(dir: &std::path::Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let out = dir.join("edited");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(frontier("fg-clip-tiny/config.json"), out.join("config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(frontier("fg-clip-tiny/model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
    out
}

#[test]
fn fgclip_table_without_its_projection_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_fgclip(tmp.path(), |t| {
        t.remove("text_filip_projection.weight");
    });
    let err = format!("{:#}", checkpoint::load(&dir).err().unwrap());
    assert!(err.contains("'text_filip_projection.weight'"), "{err}");
}

/// Shape errors name the file's own key, in the file's layout, with the
/// shape the other tensors imply.
#[test]
fn fgclip_shape_errors_name_the_files_keys() {
    const ORI: &str = "text_model.embeddings.position_embedding_ori.weight";
    const FILIP: &str = "text_filip_projection.weight";
    let tmp = tempfile::tempdir().unwrap();
    let tensors = candle_core::safetensors::load(frontier("fg-clip-tiny/model.safetensors"), &Device::Cpu).unwrap();
    let (rows, width) = tensors[ORI].dims2().unwrap();
    let (embed, w) = tensors[FILIP].dims2().unwrap();
    assert_eq!(w, width);
    let dir = edited_fgclip(tmp.path(), |t| {
        let cut = t[ORI].narrow(0, 0, 100).unwrap();
        t.insert(ORI.into(), cut);
    });
    let err = format!("{:#}", checkpoint::load(&dir).err().unwrap());
    assert!(err.contains(&format!("tensor '{ORI}' has shape [100, {width}], expected [{rows}, {width}]")), "{err}");
    let other = tmp.path().join("transposed");
    std::fs::create_dir_all(&other).unwrap();
    let dir = edited_fgclip(&other, |t| {
        let flipped = t[FILIP].t().unwrap().contiguous().unwrap();
        t.insert(FILIP.into(), flipped);
    });
    let err = format!("{:#}", checkpoint::load(&dir).err().unwrap());
    assert!(err.contains(&format!("tensor '{FILIP}' has shape [{width}, {embed}], expected [{embed}, {width}]")), "{err}");
}

#[test]
fn a_checkpoint_mixing_families_names_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_fgclip(tmp.path(), |t| {
        let res = t["text_model.embeddings.position_embedding_res.weight"].clone();
        t.insert("positional_embedding_res".into(), res);
    });
    let err = format!("{:#}", checkpoint::load(&dir).err().unwrap());
    assert!(err.contains("mixes model families") && err.contains("positional_embedding_res"), "{err}");
}

/// A config.json that is not JSON, or whose fields have the wrong type, is
/// an error naming config.json and the field, not silently ignored.
#[test]
fn a_bad_config_json_names_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let goal_dir = tmp.path().join("goal");
    std::fs::create_dir_all(&goal_dir).unwrap();
    std::fs::copy(frontier("goal-tiny/goal-tiny.pth"), goal_dir.join("goal-tiny.pth")).unwrap();
    std::fs::write(goal_dir.join("config.json"), "{bad json").unwrap();
    let err = format!("{:#}", checkpoint::load(&goal_dir.join("goal-tiny.pth")).err().unwrap());
    assert!(err.contains("config.json:1:") && err.contains("invalid JSON"), "{err}");

    let dir = edited_fgclip(tmp.path(), |_| {});
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["text_config"]["num_attention_heads"] = "2".into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let err = format!("{:#}", checkpoint::load(&dir).err().unwrap());
    assert!(err.contains("config.json's 'text_config.num_attention_heads' is \"2\", expected a positive integer"), "{err}");
}

// ---------------------------------------------------------------------------
// Command line

#[test]
fn info_names_the_family() {
    let out = ok(&["info", "--model", s(&frontier("fg-clip-tiny"))]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("family      FG-CLIP"), "{text}");
    let out = ok(&["info", "--model", s(&frontier("goal-tiny/goal-tiny.pth")), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["family"], "goal");
}

#[test]
fn embed_takes_a_text_path_and_warns_on_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = tmp.path().join("captions.json");
    std::fs::write(&texts, serde_json::to_string(&captions()).unwrap()).unwrap();
    let exp = frontier_expected();
    for (path, key) in [("long", "fgclip.text_features_long"), ("short", "fgclip.text_features_short")] {
        let out_path = tmp.path().join(format!("{path}.npy"));
        let out = ok(&[
            "embed", "--model", s(&frontier("fg-clip-tiny")), "--texts", s(&texts), "--out", s(&out_path), "--raw", "--text-path", path,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("truncated"), "{stderr}");
        let ours = Tensor::read_npy(&out_path).unwrap();
        assert_rows_cosine(&format!("embed --text-path {path}"), &ours, &exp[key], MIN_COS);
    }
    let err = fails(&["embed", "--model", s(&frontier("goal-tiny/goal-tiny.pth")), "--texts", s(&texts), "--out", "x.npy", "--text-path", "short"]);
    assert!(err.contains("no short text path"), "{err}");
}

#[test]
fn an_index_records_its_family_and_queries_follow_it() {
    let tmp = tempfile::tempdir().unwrap();
    let images = copy_images(tmp.path());
    let goal_path = frontier("goal-tiny/goal-tiny.pth");
    let index = tmp.path().join("goal-index");
    ok(&["index", "build", "--model", s(&goal_path), "--images", s(&images), "--index", s(&index), "--no-hnsw", "--dtype", "f32"]);
    assert_eq!(info_json(&index)["model"]["family"], "goal");
    let hits = search_json(&["search", "--index", s(&index), "--text", "A cat jumping.", "--json"]);
    assert_eq!(hits.len(), IMAGES.len());
    // The same tensors read as Long-CLIP would tokenize and crop otherwise: refused.
    let mut as_long_clip = goal();
    as_long_clip.config.family = Family::LongClip;
    let other = tmp.path().join("goal-as-long-clip.safetensors");
    longclip::export::save_checkpoint(&as_long_clip, &other).unwrap();
    let err = fails(&["search", "--index", s(&index), "--model", s(&other), "--text", "a cat"]);
    assert!(err.contains("built with a GOAL model"), "{err}");
}

#[test]
fn eval_runs_either_text_path_with_its_own_text_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("urban");
    ok(&["synth", "--out", s(&data), "--n", "12", "--seed", "3"]);
    let cache = tmp.path().join("cache");
    let model = frontier("fg-clip-tiny");
    for path in ["long", "short"] {
        let json = tmp.path().join(format!("{path}.json"));
        let args = ["eval", "--model", s(&model), "--dataset", "urban1k", "--root", s(&data), "--embeddings-cache", s(&cache), "--json", s(&json), "--text-path", path];
        let out = ok(&args);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("FG-CLIP {path} text path")));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!((report["family"].as_str(), report["text_path"].as_str()), (Some("FG-CLIP"), Some(path)));
        assert_eq!(report["context_length"], if path == "long" { 248 } else { 77 });
    }
    let dir = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    let kinds: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(kinds.iter().any(|k| k.starts_with("texts-cpu-")), "{kinds:?}");
    assert!(kinds.iter().any(|k| k.starts_with("texts-short-cpu-")), "{kinds:?}");
}

#[test]
fn fine_tuning_refuses_other_families() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&[
        "finetune", "--model", s(&frontier("fg-clip-tiny")), "--data", s(&tmp.path().join("none.json")), "--out", s(&tmp.path().join("out")),
    ]);
    assert!(err.contains("Long-CLIP's recipe") && err.contains("FG-CLIP"), "{err}");
}

#[test]
fn stretch_refuses_other_families() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, name) in [(frontier("fg-clip-tiny"), "FG-CLIP"), (frontier("goal-tiny/goal-tiny.pth"), "GOAL")] {
        let out = tmp.path().join("stretched.safetensors");
        let err = fails(&["stretch", "--model", s(&model), "--out", s(&out)]);
        assert!(err.contains("Long-CLIP's knowledge-preserved stretching") && err.contains(name), "{err}");
        assert!(!out.exists(), "{name}: nothing written");
    }
}

#[test]
fn search_takes_fgclip_text_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let images = copy_images(tmp.path());
    let index = tmp.path().join("fg-index");
    ok(&["index", "build", "--model", s(&frontier("fg-clip-tiny")), "--images", s(&images), "--index", s(&index), "--no-hnsw", "--dtype", "f32"]);
    assert_eq!(info_json(&index)["model"]["family"], "fg_clip");
    // Ranks follow the official logits of caption 0 on each path.
    let exp = frontier_expected();
    for (path, key) in [("long", "fgclip.logits_per_image_long"), ("short", "fgclip.logits_per_image_short")] {
        let hits = search_json(&["search", "--index", s(&index), "--text", &captions()[0], "--json", "--text-path", path]);
        let logits: Vec<f32> = rows(&exp[key]).iter().map(|r| r[0]).collect();
        let mut want: Vec<usize> = (0..IMAGES.len()).collect();
        want.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let got: Vec<String> = hits.iter().map(|h| h["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect();
        let want: Vec<String> = want.iter().map(|&i| IMAGES[i].to_string()).collect();
        assert_eq!(got, want, "--text-path {path}");
    }
}

/// The probe cuts captions with the family's tokenizer: at full length its
/// ids are eval's, so every text comes from eval's cache, the caption where
/// HF and Long-CLIP tokenize differently (caption 2) included.
#[test]
fn probe_cuts_captions_with_the_family_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("urban");
    ok(&["synth", "--out", s(&data), "--n", "4", "--seed", "3"]);
    std::fs::write(data.join("caption/1.txt"), format!("{}\n", captions()[2])).unwrap();
    let cache = tmp.path().join("cache");
    let model = frontier("fg-clip-tiny");
    let common = ["--model", s(&model), "--dataset", "urban1k", "--root", s(&data), "--embeddings-cache", s(&cache)];
    ok(&[&["eval"][..], &common[..]].concat());
    let json = tmp.path().join("probe.json");
    ok(&[&["probe"][..], &common[..], &["--lengths", "248", "--json", s(&json)][..]].concat());
    let probe: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(probe["models"][0]["timings"]["texts_encoded"], 0, "{probe}");
    assert_eq!(probe["models"][0]["timings"]["texts_cached"], 4, "{probe}");
}

/// `probe --text-path short` says which path ran, in its table, JSON and
/// CSV, as `eval` does.
#[test]
fn probe_records_the_family_and_text_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("urban");
    ok(&["synth", "--out", s(&data), "--n", "4", "--seed", "3"]);
    let (json, csv) = (tmp.path().join("probe.json"), tmp.path().join("probe.csv"));
    let out = ok(&[
        "probe", "--model", s(&frontier("fg-clip-tiny")), "--dataset", "urban1k", "--root", s(&data), "--no-cache", "--lengths", "20,77",
        "--text-path", "short", "--json", s(&json), "--csv", s(&csv),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FG-CLIP short text path"), "{stdout}");
    let probe: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for v in [&probe["models"][0], &probe["rows"][0], &probe["rows"][1]] {
        assert_eq!((v["family"].as_str(), v["text_path"].as_str()), (Some("FG-CLIP"), Some("short")), "{probe}");
    }
    let csv = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].ends_with(",family,text_path") && lines[1].ends_with(",FG-CLIP,short"), "{csv}");
}

// ---------------------------------------------------------------------------
// convert keeps the family (GOAL) and both text paths (FG-CLIP)

/// Text features of the official ids on `path` and image features of the
/// official pixels, as `ckpt` computes them.
fn features_of(ckpt: &Checkpoint, path: TextPath, ids_key: &str, pixels_key: &str) -> (Tensor, Tensor) {
    let exp = frontier_expected();
    let m = model(ckpt, Some(path));
    let ids: Vec<Vec<u32>> = official_ids(&exp, ids_key).iter().map(|r| unpadded(r)).collect();
    (m.text.encode(&ids).unwrap(), m.vision.encode(&exp[pixels_key]).unwrap())
}

fn read_config(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn a_converted_goal_stays_goal() {
    let tmp = tempfile::tempdir().unwrap();
    let original = goal();
    let (text, image) = features_of(&original, TextPath::Long, "ids.hf_248", "goal.pixel_values");
    let pth = frontier("goal-tiny/goal-tiny.pth");
    for out in [tmp.path().join("goal-hf"), tmp.path().join("goal.safetensors")] {
        let written = ok(&["convert", "--model", s(&pth), "--out", s(&out)]);
        assert!(String::from_utf8_lossy(&written.stderr).contains("GOAL"), "{}", String::from_utf8_lossy(&written.stderr));
        let back = checkpoint::load(&out).unwrap();
        assert_eq!(back.config.family, Family::Goal, "{}", out.display());
        assert_eq!(back.config, original.config, "{}", out.display());
        assert_eq!(back.fingerprint().unwrap(), original.fingerprint().unwrap(), "{}", out.display());
        let (t, i) = features_of(&back, TextPath::Long, "ids.hf_248", "goal.pixel_values");
        let d = max_abs_diff(&t, &text).max(max_abs_diff(&i, &image));
        assert!(d <= 1e-6, "{}: features moved by {d}", out.display());
        let info: serde_json::Value = serde_json::from_slice(&ok(&["info", "--model", s(&out), "--json"]).stdout).unwrap();
        assert_eq!(info["family"], "goal", "{}", out.display());
        let text = String::from_utf8_lossy(&ok(&["info", "--model", s(&out)]).stdout).into_owned();
        assert!(text.contains("family      GOAL"), "{text}");
    }
    assert_eq!(read_config(&tmp.path().join("goal-hf"))["longclip_family"], "goal");
    // The record is what tells a GOAL export from a Long-CLIP port: without it, Long-CLIP.
    let dir = tmp.path().join("goal-hf");
    let mut config = read_config(&dir);
    config.as_object_mut().unwrap().remove("longclip_family");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    assert_eq!(checkpoint::load(&dir).unwrap().config.family, Family::LongClip);
}

#[test]
fn a_converted_fgclip_keeps_both_text_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let original = fgclip();
    let paths = [(TextPath::Long, "ids.hf_248"), (TextPath::Short, "ids.hf_77")];
    let want: Vec<(Tensor, Tensor)> = paths.iter().map(|(p, ids)| features_of(&original, *p, ids, "fgclip.pixel_values")).collect();
    let src = frontier("fg-clip-tiny");
    for out in [tmp.path().join("fg-hf"), tmp.path().join("fg.safetensors")] {
        ok(&["convert", "--model", s(&src), "--out", s(&out)]);
        let back = checkpoint::load(&out).unwrap();
        assert_eq!(back.config.family, Family::FgClip, "{}", out.display());
        assert_eq!(back.config, original.config, "{}", out.display());
        assert_eq!(back.fingerprint().unwrap(), original.fingerprint().unwrap(), "{}", out.display());
        for ((path, ids), (text, image)) in paths.iter().zip(&want) {
            let (t, i) = features_of(&back, *path, ids, "fgclip.pixel_values");
            let d = max_abs_diff(&t, text).max(max_abs_diff(&i, image));
            assert!(d <= 1e-6, "{} --text-path {path}: features moved by {d}", out.display());
        }
    }
    // The directory has FG-CLIP's own keys, shapes and values: those of the
    // fixture that FGCLIPModel.save_pretrained wrote.
    let dir = tmp.path().join("fg-hf");
    let ours = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let official = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut a: Vec<&String> = ours.keys().collect();
    let mut b: Vec<&String> = official.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the converted keys are FGCLIPModel's");
    for (key, t) in &official {
        assert_eq!(ours[key].dims(), t.dims(), "{key}");
        assert_eq!(max_abs_diff(&ours[key], t), 0.0, "{key}");
    }
    let config = read_config(&dir);
    assert_eq!(config["longclip_family"], "fg_clip");
    assert_eq!(config["architectures"][0], "FGCLIPModel");
    assert_eq!(config["text_config"]["max_position_embeddings"], 77, "FG-CLIP's config keeps 77; its 248 are in code");
    // And embed takes both paths on the converted files.
    let texts = tmp.path().join("captions.json");
    std::fs::write(&texts, serde_json::to_string(&captions()).unwrap()).unwrap();
    let exp = frontier_expected();
    for model_path in [dir.clone(), tmp.path().join("fg.safetensors")] {
        for (path, key) in [("long", "fgclip.text_features_long"), ("short", "fgclip.text_features_short")] {
            let npy = tmp.path().join(format!("{path}.npy"));
            ok(&["embed", "--model", s(&model_path), "--texts", s(&texts), "--out", s(&npy), "--raw", "--text-path", path]);
            assert_rows_cosine(&format!("converted embed --text-path {path}"), &Tensor::read_npy(&npy).unwrap(), &exp[key], MIN_COS);
        }
    }
}

#[test]
fn a_recorded_family_that_the_tensors_cannot_be_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("fg-hf");
    ok(&["convert", "--model", s(&frontier("fg-clip-tiny")), "--out", s(&hf)]);
    for (value, needle) in [("\"goal\"", "records the GOAL family"), ("\"clip\"", "expected \"long_clip\", \"fg_clip\" or \"goal\"")] {
        let mut config = read_config(&hf);
        config["longclip_family"] = serde_json::from_str(value).unwrap();
        std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
        let err = fails(&["info", "--model", s(&hf)]);
        assert!(err.contains(needle) && err.contains("config.json"), "{value}: {err}");
    }
    let goal_hf = tmp.path().join("goal-hf");
    ok(&["convert", "--model", s(&frontier("goal-tiny/goal-tiny.pth")), "--out", s(&goal_hf)]);
    let mut config = read_config(&goal_hf);
    config["longclip_family"] = "fg_clip".into();
    std::fs::write(goal_hf.join("config.json"), config.to_string()).unwrap();
    let err = fails(&["info", "--model", s(&goal_hf)]);
    assert!(err.contains("records the FG-CLIP family"), "{err}");
}
